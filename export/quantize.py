"""Post-training quantisation of an exported ONNX graph: int8 (dynamic) and fp16.

int8 (`quantize_int8`): onnxruntime `quantize_dynamic` with choices that differ from its defaults:
  * op types: only MatMul (and the fused Attention's projection) are quantised. The defaults also quantise
    Gather (the embedding tables), which buys no speed on CPU (a lookup, not a product) and costs accuracy.
  * per-channel weights (one scale per output column): the projections of small encoders have columns
    with very different ranges; one scale per tensor loses the small ones.
  * reduce_range=False: the int8 kernels here (x86 VNNI / AVX2 via MLAS u8s8) do not saturate, so the
    7-bit workaround only costs precision.
  * the task head (classifier / score / lm_head) stays fp32: it is tiny for classifiers (no speed to gain)
    and for LMs the logits' ranking is what perplexity and top-1 agreement depend on.
`quantize_int8_plain` is onnxruntime's defaults, kept for the benchmark's comparison.

int8 for causal LMs (`quantize_int8_blockwise`): 8-bit weights in blocks of 32 along the input dimension
(MatMulNBits, asymmetric) with accuracy_level=4, i.e. int8 compute whose activations are also quantised per
block of 32. Measured on SmolLM2-135M (benchmarks/edge.py): `quantize_dynamic` (one activation scale per
tensor) loses +89% perplexity / 46% top-1 agreement, because Llama-style activations have outlier channels
that a per-tensor scale cannot hold; 4-bit blocks lose +26%; 8-bit blocks keep +1.2% / 95.6% and decode
~1.5x faster than the fp32 graph. lm_head stays fp32 (the logits' ranking is what is being measured).

fp16 (`convert_fp16`): `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`
(inputs/outputs stay fp32). Meant for GPU execution providers; checked with a looser tolerance
(edge_runtime.tolerances.EXPORT_PARITY_ATOL_FP16 on logits) because fp16 has ~3 significant digits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dynalora.edge_runtime.tolerances import EXPORT_PARITY_ATOL_FP16
from dynalora.export.errors import ExportError

HEAD_PATTERN = re.compile(r"(classifier|score|lm_head|pooler)", re.IGNORECASE)
INT8_OPS = ["MatMul", "Attention"]


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
                  keep_head_fp32: bool = True) -> dict[str, object]:
    """Our int8 choice (see the module docstring). Returns what was done, for manifest.verification."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = head_nodes(src) if keep_head_fp32 else []
    try:
        quantize_dynamic(Path(src), Path(dst), op_types_to_quantize=INT8_OPS, per_channel=per_channel,
                         reduce_range=False, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # onnxruntime raises bare exceptions for graphs it cannot quantise
        raise ExportError(f"int8 quantisation is not supported for this model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    _require_quantized(dst)
    return {"method": "quantize_dynamic", "weight_type": "QInt8", "op_types": INT8_OPS, "per_channel": per_channel,
            "reduce_range": False, "fp32_nodes": excluded}


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
