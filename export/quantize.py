"""Post-training quantisation of an exported ONNX graph: int8 (dynamic), int8 (static QDQ) and fp16.

int8 (`quantize_int8`): onnxruntime `quantize_dynamic` with choices that differ from its defaults:
  * op types: MatMul (and the fused Attention's projection) through `quantize_dynamic`; the vocabulary
    embedding table through our own per-row int8 (`quantize_embeddings`), not through `quantize_dynamic`'s
    Gather, which stores the table with one scale for the whole table and costs accuracy (see there).
    export_merged keeps the int8 table only where accuracy allows (edge_runtime.tolerances
    EMBEDDING_ACCURACY_LIMIT_POINTS); `quantize_int8(..., embeddings=False)` is the earlier MatMul-only choice.
  * per-channel weights (one scale per output column): the projections of small encoders have columns
    with very different ranges; one scale per tensor loses the small ones.
  * reduce_range=False: the int8 kernels here (x86 VNNI / AVX2 via MLAS u8s8) do not saturate, so the
    7-bit workaround only costs precision.
  * the task head (classifier / score / lm_head) stays fp32: it is tiny for classifiers (no speed to gain)
    and for LMs the logits' ranking is what perplexity and top-1 agreement depend on.
`quantize_int8_plain` is onnxruntime's defaults, kept for the benchmark's comparison.
Measured on the MiniLM rotten_tomatoes run (fp32: 91.0 MB, accuracy 81.00% on its 2000 evaluation texts):
MatMul-only int8 58.9 MB, -0.35 points; with the per-row int8 embedding table 23.8 MB, -0.55 points (the table
on its own, in the fp32 graph, changes no prediction: max logit change 0.03).

int8 for causal LMs (`quantize_int8_blockwise`): 8-bit weights in blocks of 32 along the input dimension
(MatMulNBits, asymmetric) with accuracy_level=4, i.e. int8 compute whose activations are also quantised per
block of 32. Measured on SmolLM2-135M (benchmarks/edge.py): `quantize_dynamic` (one activation scale per
tensor) loses +89% perplexity / 46% top-1 agreement, because Llama-style activations have outlier channels
that a per-tensor scale cannot hold; 4-bit blocks lose +26%; 8-bit blocks keep +1.2% / 95.6% and decode
~1.5x faster than the fp32 graph. lm_head stays fp32 (the logits' ranking is what is being measured).

qdq-int8 (`quantize_qdq_int8`): onnxruntime `quantize_static` in QDQ format (QuantizeLinear / DequantizeLinear
pairs, what QNN and other NPU execution providers consume), calibrated by the caller on the run's own training
texts. Choices, each measured on the same MiniLM run (accuracy change against fp32 / share of the 2000
evaluation predictions equal to fp32's):
  * MatMul and Gemm inputs and outputs (each MatMul a QDQ node unit, what QNN's HTP backend runs): -0.85 /
    94.25%. Leaving the outputs float is more accurate on the CPU EP (-0.25 / 97.95%) but leaves no MatMul an
    NPU backend would take, which defeats the format's purpose (quantize_outputs=False keeps that choice for
    callers of the Python API). Quantising every op
    (LayerNorm, Softmax, Add, GELU ... : the full-int8 graph an NPU would run end to end): -10.35 / 78.3%,
    so int8 activations everywhere are not an option for this encoder.
  * activations uint8 asymmetric (QUInt8), weights int8 symmetric per channel (axis 1 of the MatMul weight,
    one scale per output column). int8 activations were as accurate (-0.75 vs -0.85 with quantised outputs)
    and 50% slower on this CPU (u8s8 is MLAS's fast path).
  * MinMax calibration: Percentile (99.999) -0.45 and Entropy -0.20 points against MinMax's -0.20 on the same
    fixed-shape calibration batches, but both keep every calibration tensor in memory (4.7 GB peak for 256
    texts against 1.2 GB) and need one padded shape for all batches; MinMax takes the padded-to-longest
    batches the evaluation and the runtime run.
  * the task head stays fp32, as for int8; the vocabulary embedding table per-row int8 as for int8 (the QDQ
    graph with it 24.3 MB vs 59.3 MB without it).
  * `quant_pre_process` first (shape inference + constant folding, as onnxruntime recommends): the same
    predictions with or without it on MiniLM, and with it quantisation took 9 s instead of 16 s and the
    2000-text evaluation 20 s instead of 33 s (one run each on a busy 2-core machine: indicative only).

fp16 (`convert_fp16`): `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`
(inputs/outputs stay fp32). Meant for GPU execution providers; checked with a looser tolerance
(edge_runtime.tolerances.EXPORT_PARITY_ATOL_FP16 on logits) because fp16 has ~3 significant digits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynalora.edge_runtime.tolerances import EXPORT_PARITY_ATOL_FP16
from dynalora.export.errors import ExportError

HEAD_PATTERN = re.compile(r"(classifier|score|lm_head|pooler)", re.IGNORECASE)
INT8_OPS = ["MatMul", "Attention"]
QDQ_OPS = ["MatMul", "Gemm"]
QDQ_CALIBRATION = "MinMax"
QDQ_ACTIVATION_TYPE = "QUInt8"
DEFAULT_CALIBRATION_SAMPLES = 256  # training texts a qdq-int8 export calibrates on (`--calibration-samples`)
VOCAB_INPUT = "input_ids"  # the graph input whose Gather reads the vocabulary embedding table


class _DropPreprocessingHint(logging.Filter):
    """onnxruntime's quantizers log "Please consider to run pre-processing before quantization" (root logger,
    WARNING) for any graph without its pre-processing metadata. The dynamic int8 path quantises only MatMuls
    with constant weights, which needs no shape inference; the QDQ path runs the pre-processing itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Around onnxruntime's quantize_dynamic / quantize_static only: drop the pre-processing hint, keep the rest."""
    hint = _DropPreprocessingHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def head_nodes(model_path: str | os.PathLike[str]) -> list[str]:
    """Names of the MatMul / Gemm nodes of the task head (they stay fp32)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if HEAD_PATTERN.search(node.name) or any(HEAD_PATTERN.search(i) for i in node.input if i in inits):
            out.append(node.name)
    return out


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, per_channel: bool = True,
                  keep_head_fp32: bool = True, embeddings: bool = True) -> dict[str, object]:
    """Our int8 choice (see the module docstring). Returns what was done, for manifest.verification.

    embeddings=False is the earlier MatMul-only choice (the vocabulary embedding table stays fp32);
    export_merged builds both and keeps the int8 table only where accuracy allows."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = head_nodes(src) if keep_head_fp32 else []
    try:
        with quiet_quantizer():
            quantize_dynamic(Path(src), Path(dst), op_types_to_quantize=INT8_OPS, per_channel=per_channel,
                             reduce_range=False, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # onnxruntime raises bare exceptions for graphs it cannot quantise
        raise ExportError(f"int8 quantisation is not supported for this model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    _require_quantized(dst)
    info: dict[str, object] = {"method": "quantize_dynamic", "weight_type": "QInt8",
                               "op_types": INT8_OPS + (["Gather"] if embeddings else []), "per_channel": per_channel,
                               "reduce_range": False, "fp32_nodes": excluded}
    if embeddings:
        info["embeddings"] = quantize_embeddings(dst, dst)
    return info


def embedding_tables(model: Any) -> dict[str, list[Any]]:
    """{table name: the Gather nodes reading it} for the vocabulary embedding tables of an onnx ModelProto:
    float 2-D initializers looked up by the graph input `input_ids` and read by nothing but Gather(axis 0).

    Position / token-type tables (looked up by positions / token_type_ids) stay fp32: in MiniLM they are
    < 1 MB together, and the position table holds the model's largest embedding values. A vocabulary table
    that something else also reads (a tied LM head) is left alone: an int8 copy next to the fp32 one would
    make the model larger, not smaller."""
    import onnx

    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in floats:
                readers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in model.graph.output}
    out = {}
    for name, uses in readers.items():
        gathers = all(n.op_type == "Gather" and k == 0 and _axis(n) == 0 for n, k in uses)
        if gathers and name not in outputs and any(n.input[1] == VOCAB_INPUT for n, _ in uses):
            out[name] = [n for n, _ in uses]
    return out


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def quantize_embeddings(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, object]:
    """Store each vocabulary embedding table as int8 with one symmetric scale per row, and dequantise only
    the rows looked up: Gather(int8 table, ids) -> Cast -> Mul(Gather(scales[V, 1], ids)).

    Why per row rather than onnxruntime's own Gather quantisation: `quantize_dynamic` with "Gather" in its
    op types stores the table as uint8 with ONE scale for the whole table. On the MiniLM rotten_tomatoes
    run (2000 evaluation texts) that graph loses 0.60 points of accuracy against fp32 where the MatMul-only
    int8 graph loses 0.35: the table alone costs 0.25 points. Its relative RMS error on the table is 3.2%;
    one scale per row brings it to 0.73% (one per column: 1.1%), because most rows are far smaller than
    the few that hold the table's extreme values. Only standard ops (Gather, Cast, Mul), so every execution
    provider runs it; the table shrinks 4x (MiniLM: 46.9 MB -> 11.7 MB + 0.1 MB of scales).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from dynalora.export.common import save_single_file

    model = onnx.load(str(src))
    tables = embedding_tables(model)
    if not tables:
        raise ExportError(f"int8 embedding quantisation found no vocabulary embedding table (a float initializer "
                          f"that only a Gather by {VOCAB_INPUT} reads) in this model")
    inits = {i.name: i for i in model.graph.initializer}
    record = []
    for name, gathers in tables.items():
        table = numpy_helper.to_array(inits[name]).astype(np.float32)
        peak = np.abs(table).max(axis=1, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)  # an all-zero row (padding) keeps 1
        q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                        numpy_helper.from_array(scale, name + "_row_scale")])
        for gather in gathers:
            out, ids = gather.output[0], gather.input[1]
            base = gather.name or out
            position = list(model.graph.node).index(gather)
            model.graph.node.remove(gather)
            replacement = [
                helper.make_node("Gather", [name + "_int8", ids], [out + "_int8"], name=base, axis=0),
                helper.make_node("Gather", [name + "_row_scale", ids], [out + "_scale"], name=base + "_scale",
                                 axis=0),
                helper.make_node("Cast", [out + "_int8"], [out + "_int8_float"], name=base + "_cast",
                                 to=onnx.TensorProto.FLOAT),
                helper.make_node("Mul", [out + "_int8_float", out + "_scale"], [out], name=base + "_dequantize"),
            ]
            for k, node in enumerate(replacement):
                model.graph.node.insert(position + k, node)
        error = float(np.sqrt(np.mean((q * scale - table) ** 2)) / (float(table.std()) or 1.0))
        record.append({"table": name, "shape": list(table.shape), "dtype": "int8", "granularity": "per-row",
                       "symmetric": True, "relative_rms_error": round(error, 5),
                       "gathers": [g.name for g in gathers]})
    save_single_file(model, Path(dst))
    return {"tables": record}


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol (`get_next` -> one feed dict, None at the end) over a list."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


def quantize_qdq_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], calibration: list[dict[str, Any]], *,
                      method: str = QDQ_CALIBRATION, activation_type: str = QDQ_ACTIVATION_TYPE,
                      per_channel: bool = True, keep_head_fp32: bool = True, embeddings: bool = True,
                      preprocess: bool = True, quantize_outputs: bool = True) -> dict[str, object]:
    """Static int8 in QDQ format (QuantizeLinear / DequantizeLinear around each quantised op), the form QNN and
    other NPU execution providers take; see the module docstring for the measurements behind the defaults.

    calibration: the feed dicts the calibrator runs (the caller encodes the run's own training texts). MinMax
    takes batches of any shape; the histogram methods (Percentile, Entropy) need one shape for all of them.
    quantize_outputs: also put QuantizeLinear / DequantizeLinear on the MatMuls' outputs, so each MatMul is a
    whole QDQ node unit (DequantizeLinear -> MatMul -> QuantizeLinear), the form QNN's HTP backend takes; the
    default, because an NPU is what a QDQ export is for. False keeps the outputs float: 0.6 points more accurate
    on the CPU EP (module docstring) but no MatMul is a node unit, so an NPU backend takes none of them.
    Returns what was done, for manifest.verification."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    dst = Path(dst)
    model_in, prepared = Path(src), None
    if preprocess:
        model_in, prepared = _pre_process(Path(src), dst.with_name(dst.stem + ".pre.onnx"))
    excluded = head_nodes(model_in) if keep_head_fp32 else []
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if not quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(QDQ_OPS)
    try:
        with quiet_quantizer():
            quantize_static(model_in, dst, _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=QDQ_OPS, per_channel=per_channel, reduce_range=False,
                            activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=getattr(CalibrationMethod, method),
                            extra_options=extra)
    except Exception as exc:  # onnxruntime raises bare exceptions for graphs it cannot quantise
        raise ExportError(f"qdq-int8 quantisation is not supported for this model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    finally:
        if model_in != Path(src):
            model_in.unlink(missing_ok=True)
    import onnx

    ops = {n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise ExportError("qdq-int8 quantisation is not supported for this model: no MatMul / Gemm node could be "
                          "quantised; export it with fp32")
    info: dict[str, object] = {
        "method": "quantize_static", "format": "QDQ", "calibration_method": method,
        "calibration_batches": len(calibration), "activation_type": activation_type, "activation_symmetric": False,
        "weight_type": "QInt8", "weight_symmetric": True, "per_channel": per_channel, "reduce_range": False,
        "op_types": QDQ_OPS + (["Gather"] if embeddings else []), "quantized_outputs": quantize_outputs,
        "preprocess": prepared, "fp32_nodes": excluded}
    if embeddings:
        info["embeddings"] = quantize_embeddings(dst, dst)
    return info


def _pre_process(src: Path, dst: Path) -> tuple[Path, str | None]:
    """onnxruntime's `quant_pre_process` (shape inference + constant folding, so every tensor the calibrator
    sees has a type and shape). Symbolic shape inference fails on optimum's BERT graph unless auto_merge
    is on; where it still fails, onnx's own shape inference alone is used, and failing that the graph as is.
    It runs inside dst's folder: a failed symbolic inference saves its partial model into the working directory."""
    import contextlib

    from onnxruntime.quantization.shape_inference import quant_pre_process

    for label, kwargs in (("quant_pre_process(auto_merge)", {"auto_merge": True}),
                          ("quant_pre_process(skip_symbolic_shape)", {"skip_symbolic_shape": True})):
        try:
            with contextlib.chdir(dst.parent):
                quant_pre_process(str(Path(src).resolve()), str(dst.resolve()), **kwargs)
        except Exception:  # onnxruntime raises bare exceptions; the next option is tried
            continue
        return dst, label
    return src, None


def quantize_int8_blockwise(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, block_size: int = 32,
                            keep_head_fp32: bool = True) -> dict[str, object]:
    """int8 weights per block of `block_size` + int8 block-wise activations (MatMulNBits); for causal LMs."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    excluded = head_nodes(src) if keep_head_fp32 else []
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=4, bits=8)
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=excluded, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as exc:  # onnxruntime raises bare exceptions for graphs it cannot quantise
        raise ExportError(f"int8 quantisation is not supported for this model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    ops = {n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node}
    if "MatMulNBits" not in ops:
        raise ExportError("int8 quantisation is not supported for this model: no MatMul with constant weights")
    return {"method": "MatMulNBits", "bits": 8, "block_size": block_size, "accuracy_level": 4, "symmetric": False,
            "fp32_nodes": excluded}


def quantize_int8_plain(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """onnxruntime's `quantize_dynamic` defaults (the benchmark's baseline)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(Path(src), Path(dst), weight_type=QuantType.QInt8)


def _require_quantized(path: str | os.PathLike[str]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if not ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QGemm"}:
        raise ExportError("int8 quantisation is not supported for this model: no MatMul / Attention node could be "
                          "quantised (the graph has none with constant weights); export it with fp32")


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, object]:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - ships with onnxruntime
        raise ExportError(f"fp16 conversion needs onnxruntime.transformers.float16 ({exc})") from None
    model = onnx.load(str(src))
    model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    from dynalora.export.common import save_single_file

    save_single_file(model16, Path(dst))
    return {"method": "convert_float_to_float16", "keep_io_types": True, "atol": EXPORT_PARITY_ATOL_FP16}
