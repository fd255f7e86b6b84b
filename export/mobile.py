"""`dynalora export ... --target android|ios|generic`: what a mobile engineer prepares before touching a device.

    dynalora export merged --run runs/rt --out exports/rt --quantize int8 --target android

writes, beside model.onnx, a `mobile/` folder built with onnxruntime's own tools (`onnxruntime.tools`, in the
wheel we already install):

    mobile/model.ort                 the ORT-format model ORT Mobile loads (convert_onnx_models_to_ort)
    mobile/required_operators.config the reduced-operator config for a minimal ORT build (--include_ops_by_config)
    mobile/model.fixed.onnx / .ort   android / ios: batch and sequence fixed (NNAPI needs fixed shapes; CoreML
                                     runs much more of a fixed graph), then rewritten so NNAPI / CoreML take more
                                     of it (export/mobile_rewrite.py)
    mobile/mobile_report.json / .md  NNAPI / CoreML (and QNN for QDQ graphs) coverage of each graph
                                     (export/mobile_report.py, onnxruntime's usability checker)

Optimisation levels. `model.ort` is for the CPU EP, the EP every phone has: every onnxruntime optimisation
(level "all", the ORT-format "Fixed" style) baked in for the ARM platform (no x86-only NCHWc layouts; QDQ kept
as int8 for ARM kernels). `model.fixed.ort` is for NNAPI / CoreML: level "basic" only (constant folding, no
fusions), so it keeps the standard operators those EPs take; the rewrites leave NNAPI nothing to hand back to
the CPU on the MiniLM classifier. onnxruntime's alternative for compiling EPs, the "Runtime" style (BASIC
graph plus saved CPU fusions replayed at load time), is not used: onnxruntime 1.32 cannot replay the saved
records of a QDQ graph ("SetOpSinceVersionForProducedNodes: Not enough produced nodes in the runtime
optimization record"), and without the replay its int8 graph runs ~6x slower on the CPU.

Every graph of the package is run here on the CPU EP and checked against model.onnx on the export's own
verification inputs before the folder is kept; the manifest records the differences and lists every file with
its checksum. An operator onnxruntime has no kernel for (so ORT Mobile cannot run it either) is refused in one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.edge_runtime.tolerances import MOBILE_PARITY_ATOL
from dynalora.export.errors import ExportError

TARGETS = ("android", "ios", "generic")
LEVEL_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
FIXED_TARGETS = ("android", "ios")
MOBILE_DIR = "mobile"
FIXED_BATCH = 1  # one request at a time: what a phone app runs; documented in the README and the manifest


def add_target_flag(parser: Any) -> None:
    parser.add_argument("--target", choices=TARGETS, default=None,
                        help="also write a mobile package (mobile/: .ort model, reduced-op config, fixed-shape "
                             "variant for android / ios, NNAPI / CoreML / QNN coverage report)")


def check_target(target: str | None) -> None:
    if target is not None and target not in TARGETS:
        raise ExportError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads input_ids to the fixed sequence length (the tokenizer's pad token, else 0)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _session(path: Path) -> Any:
    """common.session (CPU EP, errors only in the log), with onnxruntime's failure as a one-line ExportError."""
    from dynalora.export.common import session

    try:
        return session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for graphs it cannot build
        raise ExportError(f"onnxruntime (and so ORT Mobile) cannot run {path.name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _convert(model: Path, out: Path, level: str) -> Path:
    """convert_onnx_models_to_ort on one .onnx (alone in its folder) at optimisation `level` ("all" | "basic"),
    Fixed style, ARM; returns the .ort path, named after the model (the tool adds the level to the name)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    import onnxruntime as ort

    chatter = logging.getLogger("ort_format_model.utils")  # "Created config in ..." at INFO, per conversion
    saved_level, saved_env = chatter.level, os.environ.get(LEVEL_ENV)
    chatter.setLevel(logging.WARNING)
    os.environ[LEVEL_ENV] = level  # the tool reads its level from this variable only
    # the tool's sessions use onnxruntime's default log level: an `export adapters` graph (LoRA tensors as
    # overridable initializers, by design) would print one "appears in graph inputs" warning per tensor
    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the tool prints a line per model
            convert_onnx_models_to_ort(model, output_dir=out, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform="arm")
    except Exception as exc:  # the tool re-raises onnxruntime's errors as they come
        raise ExportError(f"onnxruntime cannot convert this graph to the ORT format ORT Mobile loads: "
                          f"{_first_line(exc)}") from None
    finally:
        chatter.setLevel(saved_level)
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        if saved_env is None:
            os.environ.pop(LEVEL_ENV, None)
        else:
            os.environ[LEVEL_ENV] = saved_env
    suffix = "" if level == "all" else f".{level}"
    produced = out / f"{model.stem}{suffix}.ort"
    final = out / f"{model.stem}.ort"
    produced.rename(final)
    return final


def merge_op_configs(configs: list[Path], dst: Path) -> None:
    """One reduced-operator config (`domain;opset;op,op,...` lines) holding every operator of `configs`: a
    minimal ORT build must run each graph of the package. Comment headers list model file names only."""
    ops: dict[tuple[str, str], set[str]] = {}
    models: list[str] = []
    for path in configs:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# - "):
                models.append(Path(line[4:].strip()).name.replace(".basic.ort", ".ort"))  # the name it ships as
            elif line and not line.startswith("#"):
                domain, opset, names = line.split(";", 2)
                ops.setdefault((domain, opset), set()).update(n for n in names.split(",") if n)
        path.unlink()
    lines = ["# Generated from model/s:", *[f"# - {m}" for m in dict.fromkeys(models)]]
    lines += [f"{d};{o};{','.join(sorted(names))}" for (d, o), names in sorted(ops.items(), key=lambda k: (k[0][0], int(k[0][1])))]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")


def fixed_feeds(feeds: Mapping[str, np.ndarray], batch: int, seq: int, pad_id: int) -> dict[str, np.ndarray]:
    """The first `batch` rows of `feeds`, padded (input_ids with pad_id, masks / type ids with 0) or cut to `seq`."""
    out = {}
    for name, value in feeds.items():
        rows = value[:batch]
        if rows.shape[1] >= seq:
            out[name] = np.ascontiguousarray(rows[:, :seq])
        else:
            fill = pad_id if name == "input_ids" else 0
            pad = np.full((rows.shape[0], seq - rows.shape[1]), fill, dtype=rows.dtype)
            out[name] = np.concatenate([rows, pad], axis=1)
    return out


def fold_constants(src: Path, dst: Path) -> None:
    """onnxruntime's BASIC optimisations (constant folding of the now-constant shape arithmetic, redundant node
    elimination), saved as ONNX. MatMulAddFusion is left out: with batch 1 it turns each 3-D MatMul + Add into
    Reshape / Gemm / Reshape with initializers named `gemm_input_shape...`, and onnxruntime 1.32 cannot load the
    graph it saved (it runs the fusion again and collides on those names)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"])


def make_fixed(src: Path, dst: Path, batch: int, seq: int, target: str = "android") -> dict[str, int]:
    """Fix every 2-D [batch, sequence] graph input to (batch, seq), constant-fold (BASIC), apply the mobile
    rewrites for `target`'s EP; refuses a graph with another dynamic input (it would stay dynamic)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    from dynalora.export.mobile_rewrite import FOR_TARGET, rewrite_for_mobile

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue  # an overridable initializer (LoRA weights of `export adapters`): already fixed
        dims = inp.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        if len(dims) != 2:
            raise ExportError(f"cannot fix the shape of input {inp.name!r} (rank {len(dims)}); fixed-shape "
                              "mobile variants are built for [batch, sequence] inputs")
        make_input_shape_fixed(model.graph, inp.name, [batch, seq])
    fix_output_shapes(model)
    with tempfile.TemporaryDirectory(prefix="dynalora-fixed-", dir=dst.parent) as tmp:
        raw = Path(tmp) / "fixed.onnx"
        onnx.save_model(model, str(raw))
        folded = Path(tmp) / "folded.onnx"
        fold_constants(raw, folded)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(folded)))
    counts = rewrite_for_mobile(model, FOR_TARGET[target])
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst))
    return counts


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    return d if d == d else float("inf")


def _outputs(sess: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _check(label: str, got: list[np.ndarray], want: list[np.ndarray], atol: float) -> float:
    diff = max(_diff(g, w) for g, w in zip(got, want, strict=True))
    if not diff <= atol:
        raise ExportError(f"the mobile {label} graph differs from model.onnx by {diff:.3g} (> {atol:g}) on the "
                          "verification inputs; nothing was written")
    return diff


def build_mobile(folder: Path, target: str, feeds: Mapping[str, np.ndarray], *, seq: int, pad_id: int,
                 precision: str, batch: int = FIXED_BATCH) -> dict[str, Any]:
    """Write folder/mobile/ for `target` next to folder/model.onnx; returns the manifest's "mobile" entry.

    feeds: the export's verification inputs (int64 arrays by input name); seq: the fixed sequence length
    (the run's max_length); pad_id: the tokenizer's pad token id (fills input_ids when padding to seq).
    """
    import onnxruntime

    from dynalora.export.mobile_report import analyze, markdown

    check_target(target)
    model = folder / "model.onnx"
    out = folder / MOBILE_DIR
    out.mkdir()
    atol = MOBILE_PARITY_ATOL[precision]
    reference = _session(model)
    want = _outputs(reference, feeds)
    fixed = target in FIXED_TARGETS
    rewrites: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="dynalora-mobile-", dir=folder) as tmp:
        stage = Path(tmp)
        (stage / "cpu").mkdir()
        os.link(model, stage / "cpu" / "model.onnx")  # same file system: no copy of the weights
        _convert(stage / "cpu" / "model.onnx", out, "all")
        configs = [out / "model.required_operators.config"]
        if fixed:
            rewrites = make_fixed(model, out / "model.fixed.onnx", batch, seq, target)
            _convert(out / "model.fixed.onnx", stage / "ep", "basic")
            shutil.move(stage / "ep" / "model.fixed.ort", out / "model.fixed.ort")
            configs.append(stage / "ep" / "model.fixed.required_operators.basic.config")
        merge_op_configs(configs, out / "required_operators.config")
    verification: dict[str, Any] = {"inputs": f"{len(next(iter(feeds.values())))} verification rows", "atol": atol}
    verification["ort_vs_onnx_max_abs"] = _check("ORT-format", _outputs(_session(out / "model.ort"), feeds),
                                                 want, atol)
    entry: dict[str, Any] = {
        "target": target,
        "onnxruntime": onnxruntime.__version__,
        "optimization": {"model.ort": "all (Fixed style): the CPU EP graph"}
        | ({"model.fixed.ort": "basic (Fixed style): standard operators for NNAPI / CoreML"} if fixed else {}),
        "target_platform": "arm",
        "ort_model": f"{MOBILE_DIR}/model.ort",
        "reduced_ops_config": f"{MOBILE_DIR}/required_operators.config",
        "report": f"{MOBILE_DIR}/mobile_report.json",
    }
    graphs = {"model.onnx": model}
    if fixed:
        small = fixed_feeds(feeds, batch, seq, pad_id)
        small_want = _outputs(reference, small)
        verification["fixed_onnx_vs_onnx_max_abs"] = _check("fixed-shape", _outputs(_session(
            out / "model.fixed.onnx"), small), small_want, atol)
        verification["fixed_ort_vs_onnx_max_abs"] = _check("fixed-shape ORT-format", _outputs(_session(
            out / "model.fixed.ort"), small), small_want, atol)
        entry["fixed"] = {"onnx": f"{MOBILE_DIR}/model.fixed.onnx", "ort": f"{MOBILE_DIR}/model.fixed.ort",
                          "batch": batch, "sequence": seq,
                          "padding": "inputs are padded (input_ids with the pad token, masks with 0) or cut to "
                                     "`sequence` tokens; batches are run `batch` rows at a time",
                          "rewrites": rewrites}
        graphs["mobile/model.fixed.onnx"] = out / "model.fixed.onnx"
    analysed = analyze(graphs)
    report = {"target": target, "graphs": {label: {"file": label, **info} for label, info in analysed.items()},
              "rewrites": rewrites, "verification": verification}
    from dynalora.atomic import atomic_path, write_json

    write_json(out / "mobile_report.json", report)
    with atomic_path(out / "mobile_report.md") as tmp_md:
        Path(tmp_md).write_text(markdown(report), encoding="utf-8")
    entry["verification"] = verification
    entry["coverage"] = {label: {ep: {k: info["eps"][ep].get(k) for k in ("node_share", "compute_share",
                                                                          "partitions", "suitability")}
                                 for ep in info["eps"] if info["eps"][ep].get("applicable", True)}
                         for label, info in analysed.items()}
    entry["sizes_bytes"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return entry
