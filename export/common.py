"""Shared pieces of every export: input checks, evaluation inputs, ORT sessions, timing, manifest, quiet tracing,
and the output flags and summary every `dynalora export` subcommand shares.

Nothing here writes outside the temporary folder an exporter builds in; `write_export_manifest` is the
last call before the folder is renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynalora import __version__
from dynalora.edge_runtime.feeds import missing, ort_feeds
from dynalora.edge_runtime.timing import latency_stats, time_calls
from dynalora.edge_runtime.tolerances import EXPORT_PARITY_ATOL_FP32 as PARITY_ATOL_FP32  # noqa: F401 - the exporters' name
from dynalora.export.errors import ExportError


def add_output_flags(parser: Any, opset_default: str = "the exporter's") -> None:
    """--out, --opset and --overwrite: the flags every `dynalora export` subcommand has."""
    parser.add_argument("--out", required=True, help="export folder to create")
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default: {opset_default})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def report(out: str | os.PathLike[str], manifest: dict[str, Any], what: str | None = None) -> int:
    """The summary an export subcommand prints: what was exported where, then the verification (JSON)."""
    import json

    what = what or f"{manifest['kind']} ({manifest['precision']})"
    print(f"exported {what} to {out}")
    print(json.dumps(manifest.get("verification", {}), indent=2, sort_keys=True))
    if manifest.get("mobile"):
        print(mobile_summary(manifest["mobile"]))
    return 0


def mobile_summary(mobile: dict[str, Any]) -> str:
    """Two or three lines on the mobile package: its files and how much of the device graph each EP takes."""
    lines = [f"mobile package ({mobile['target']}): {mobile['ort_model']}, {mobile['reduced_ops_config']}, "
             f"report {mobile['report']}"]
    graph = "model.onnx"
    if "fixed" in mobile:
        fixed = mobile["fixed"]
        graph = "mobile/model.fixed.onnx"
        lines.append(f"fixed shape {fixed['batch']} x {fixed['sequence']} tokens: {fixed['ort']}")
    parts = []
    for ep, c in mobile.get("coverage", {}).get(graph, {}).items():
        compute = "" if c.get("compute_share") is None else f", {100 * c['compute_share']:.0f}% of compute"
        parts.append(f"{ep} {100 * c['node_share']:.0f}% of nodes{compute}, {c['partitions']} partition(s), "
                     f"{c['suitability']}")
    if parts:
        lines.append(f"coverage of {graph}: " + "; ".join(parts))
    return "\n".join(lines)


def refuse_existing(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing output folder before any work is done (atomic_dir re-checks at the end).

    `--overwrite` replaces only a folder an earlier export wrote (its `.dynalora` marker says so).
    """
    from dynalora.errors import ConfigError
    from dynalora.core.outdir import check_out_path, check_replaceable, is_empty_dir

    out = Path(out)
    try:
        check_out_path(out)
        if out.exists() and not is_empty_dir(out):
            if not overwrite:
                raise ExportError(f"output folder {out} exists; pass --overwrite to replace it")
            check_replaceable(out, "export")
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    return out


def load_run_checked(path: str | os.PathLike[str]) -> Any:
    """`load_run` with export-specific checks: a run folder, with its tokenizer."""
    from dynalora.errors import DynaloraError
    from dynalora.core.run_io import is_run_dir, load_run

    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"--run {path} does not exist; pass a run folder written by `dynalora train`")
    if not is_run_dir(path):
        raise ExportError(f"{path} is not a dynalora run folder (no run.json / adapter/adapter_config.json); "
                          "pass the --out folder of a finished `dynalora train`")
    tok = path / "tokenizer"
    if not tok.is_dir() or not any(tok.glob("tokenizer*")) and not any(tok.glob("vocab*")):
        raise ExportError(f"{path} has no tokenizer/ folder (or it is empty): an export must ship the tokenizer "
                          "the run was trained with; copy it back from the training machine")
    try:
        return load_run(path)
    except DynaloraError as exc:
        raise ExportError(f"cannot load run {path}: {exc}") from None


def _run_data(run: Any, what: str) -> Any:
    from dynalora.errors import DynaloraError
    from dynalora.core.batches import load_data

    try:
        return load_data(run.config)
    except (DynaloraError, OSError) as exc:
        raise ExportError(f"cannot load the {what} of {run.path} ({exc}); "
                          "make the run's data files available again") from None


def eval_examples(run: Any, limit: int | None = None) -> list[Any]:
    """The run's evaluation split (the same seeded split training reported its metrics on)."""
    examples = list(_run_data(run, "evaluation split to verify the export").eval)
    if not examples:
        raise ExportError(f"{run.path} has an empty evaluation split: nothing to verify the export against")
    return examples[:limit] if limit else examples


def train_examples(run: Any, n: int, seed: int = 0) -> list[Any]:
    """`n` examples of the run's training split, a seeded random sample (all of them if it has fewer): the
    calibration texts of a static quantisation, drawn from the data the model was fitted to, never from
    the evaluation split its accuracy is then measured on."""
    import random

    examples = list(_run_data(run, "training split to calibrate the quantisation").train)
    if not examples:
        raise ExportError(f"{run.path} has an empty training split: no texts to calibrate the quantisation on")
    return random.Random(seed).sample(examples, n) if n < len(examples) else examples


def encode(tokenizer: Any, examples: Sequence[Any], max_length: int, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenize examples to int64 numpy feeds holding exactly `input_names`."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    feeds = ort_feeds(input_names, enc)
    unfilled = missing(input_names, feeds)
    if unfilled:
        raise ExportError(f"the exported graph takes an input {unfilled[0]!r} this exporter cannot fill")
    return feeds


def torch_logits(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.logits.float().numpy()


def session(path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None,
            opt_level: Any = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if opt_level is not None:
        options.graph_optimization_level = opt_level
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


def _graph_feeds(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feeds[i.name] for i in sess.get_inputs()}


def run_logits(sess: Any, feeds: dict[str, np.ndarray], run_options: Any = None) -> np.ndarray:
    return np.asarray(sess.run(None, _graph_feeds(sess, feeds), run_options)[0], dtype=np.float32)


def median_ms(sess: Any, feeds: dict[str, np.ndarray], repeats: int = 20, warmup: int = 3) -> float:
    """Median latency in ms of `sess.run` on `feeds` (a quick in-export comparison, not the benchmark)."""
    feeds = _graph_feeds(sess, feeds)
    return latency_stats(time_calls(lambda: sess.run(None, feeds), warmup, repeats))["p50"]


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return diff if diff == diff else float("inf")  # NaN counts as a failure


def eval_logits(sess: Any, tokenizer: Any, examples: Sequence[Any], max_length: int, run_options: Any = None,
                batch: int = 64) -> np.ndarray:
    """The graph's logits on `examples`, encoded and run `batch` at a time (padded to each batch's longest)."""
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([run_logits(sess, encode(tokenizer, examples[i : i + batch], max_length, names), run_options)
                           for i in range(0, len(examples), batch)])


def accuracy_of(logits: np.ndarray, examples: Sequence[Any]) -> float:
    """Share of `examples` whose label is the argmax of its row of `logits`."""
    return float((logits.argmax(-1) == np.array([e.label for e in examples])).mean())


def accuracy(sess: Any, tokenizer: Any, examples: Sequence[Any], max_length: int, run_options: Any = None,
             batch: int = 64) -> float:
    """Classification accuracy of the graph on `examples` (argmax of the logits vs the labels)."""
    return accuracy_of(eval_logits(sess, tokenizer, examples, max_length, run_options, batch), examples)


def base_manifest(*, kind: str, run_info: dict[str, Any] | None, model_type: str, inputs: Sequence[str],
                  outputs: Sequence[str], opset: int, precision: str, max_length: int | None,
                  source_runs: Sequence[str]) -> dict[str, Any]:
    if run_info is not None:
        task = run_info["task"]
        task_entry = {"name": task["name"], "problem": task["problem"], "label_names": list(task["label_names"])}
    else:
        task_entry = {"name": "causal-lm", "problem": "causal-lm", "label_names": []}
    return {
        "format": "dynalora-export",
        "format_version": 1,
        "kind": kind,
        "task": task_entry,
        "model_type": model_type,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "opset": opset,
        "precision": precision,
        "max_length": max_length,
        "dynalora_version": __version__,
        "source_runs": [str(Path(r).resolve()) for r in source_runs],
        "model_file": "model.onnx",
    }


def write_export_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Mark the folder as an export, checksum every file and write manifest.json (edge_runtime's writer)."""
    from dynalora.core.outdir import write_marker
    from dynalora.edge_runtime.manifest import write_manifest

    write_marker(folder, "export")
    manifest = dict(manifest)  # the model's size on disk, for every kind and precision (what a device must hold)
    manifest.setdefault("model_bytes", (folder / manifest.get("model_file", "model.onnx")).stat().st_size)
    return write_manifest(folder, manifest)


def opset_of(path: str | os.PathLike[str]) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def save_single_file(model: Any, path: Path) -> None:
    """Save an ONNX model as one file when it fits protobuf's 2 GB limit, else with model.onnx.data."""
    import onnx

    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data" if large else None)


class _DropTorchDtypeNotice(logging.Filter):
    """transformers 4.57 logs "`torch_dtype` is deprecated! Use `dtype` instead!" when optimum's exporter loads
    the saved model with the old keyword (optimum-onnx 0.1.0's call, not ours to change)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`torch_dtype` is deprecated")


class _DropTorchvisionNotice(logging.Filter):
    """torch.onnx lists "torchvision is not installed. Skipping torchvision::nms" (and 3 more ops) at the first
    dynamo export of a process: the registry skips ops no text model has."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Around an ONNX export call only: drop the tracer's TracerWarnings (Hugging Face models branch on shapes;
    every export is verified against PyTorch afterwards, which is what would catch a trace that does not
    generalise), torch.export's LeafSpec deprecation note and torch.onnx's torchvision-registration lines.
    Every other warning still shows."""
    import torch

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _DropTorchvisionNotice()
    registration.addFilter(notice)
    config_log = logging.getLogger("transformers.configuration_utils")
    dtype_notice = _DropTorchDtypeNotice()
    config_log.addFilter(dtype_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # torch.export's own pytree code trips torch's deprecation of LeafSpec checks (not ours to fix)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            yield
    finally:
        registration.removeFilter(notice)
        config_log.removeFilter(dtype_notice)
