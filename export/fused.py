"""`dynalora export fused`: a fusion folder (router + top-p + stacked adapters + all heads) as ONE ONNX graph.

    dynalora export fused --fuse fuse/ --out exports/fused [--opset 18] [--overwrite]
    dynalora bench exports/fused --threads 2 --seq 64
    dynalora.edge_runtime.load("exports/fused").predict(["the match went to extra time"])["labels"]  # "bbc_news:sport"

Graph: inputs input_ids, attention_mask (+ token_type_ids for BERT), dynamic batch and sequence axes;
outputs `logits` (B, sum C: the router's top-1 task's head, every other task's columns at -1e4, so the
edge runtime's argmax / softmax / label names "task:label" just work), `all_logits` (every task's head),
`router_probs` (B, K) and `fusion_weights` (B, K). Top-p is a constant of the graph (the fusion's p).

Before the folder is kept, onnxruntime is checked against PyTorch on a batch that mixes evaluation texts
of every task (so examples of one batch route differently), on a single example, and on a second sequence
length: every output within 1e-4. The folder is built in a temporary sibling and renamed only after that.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.atomic import atomic_dir
from dynalora.core.outdir import OutLock
from dynalora.errors import DynaloraError
from dynalora.export.common import (
    PARITY_ATOL_FP32,
    add_output_flags,
    base_manifest,
    encode,
    max_abs,
    opset_of,
    quiet_onnx_export,
    refuse_existing,
    report,
    session,
    write_export_manifest,
)
from dynalora.export.errors import ExportError

OUTPUTS = ("logits", "all_logits", "router_probs", "fusion_weights")  # in dynalora.fusion.model.FusedGraph's order

# torch, the fused model and the exporter are imported inside the functions: `dynalora --help` stays fast.

VERIFY_PER_TASK = 8


def input_names(tokenizer: Any) -> list[str]:
    """The graph's inputs, in FusedGraph.forward's order (token_type_ids only if the tokenizer makes them)."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])


def export_graph(fused: Any, tokenizer: Any, sample: dict[str, np.ndarray], path: Path,
                 opset: int | None = None) -> list[str]:
    """torch.export + dynamo ONNX export of `fused` with dynamic batch / sequence; returns the input names."""
    import onnx
    import torch

    from dynalora.fusion.model import FusedGraph
    from dynalora.export.adapters import _exporter_error, _name_dynamic_dims
    from dynalora.export.common import save_single_file

    ids = input_names(tokenizer)
    if sample["input_ids"].shape[0] < 2 or sample["input_ids"].shape[1] < 2:  # size-1 dims get specialised
        raise ExportError("the tracing sample needs at least 2 examples of at least 2 tokens")
    args = tuple(torch.from_numpy(sample[n]) for n in ids)
    cfg = fused.model.config
    max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    batch = torch.export.Dim("batch_size")
    seq = torch.export.Dim("sequence_length", max=int(max_positions)) if max_positions else torch.export.Dim("sequence_length")
    dynamic = {n: {0: batch, 1: seq} for n in ids}
    graph = FusedGraph(fused).eval()
    raw = path.parent / (path.stem + ".raw.onnx")
    try:
        with torch.no_grad(), quiet_onnx_export():
            program = torch.export.export(graph, args, dynamic_shapes=dynamic, strict=False)
            torch.onnx.export(program, args, str(raw), input_names=ids, output_names=list(OUTPUTS),
                              opset_version=opset or 18, dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # torch.onnx raises many unrelated types; name the failing op / module
        raise ExportError(f"the ONNX exporter cannot handle this fused {cfg.model_type} model ({_exporter_error(exc)})") from None
    model = onnx.load(str(raw))
    _name_dynamic_dims(model, ids)
    save_single_file(model, path)
    raw.unlink()
    return ids


def mixed_examples(fusion: Any, per_task: int = VERIFY_PER_TASK) -> list[Any]:
    """Evaluation texts of every task, interleaved (task 0, task 1, ..., task 0, ...)."""
    from dynalora.fusion.train import task_data

    try:
        per = [task_data(s).eval[:per_task] for s in fusion.specs]
    except DynaloraError as exc:
        raise ExportError(f"cannot load evaluation texts to verify the export ({exc})") from None
    out = []
    for i in range(max(len(p) for p in per)):
        out.extend(p[i] for p in per if i < len(p))
    return out


def verify(sess: Any, fused: Any, batches: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Max abs difference of every output, onnxruntime vs PyTorch, per verification batch."""
    import torch

    from dynalora.fusion.model import FusedGraph

    result: dict[str, Any] = {}
    worst = 0.0
    for label, feeds in batches.items():
        with torch.no_grad():
            want = FusedGraph(fused)(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        got = sess.run(list(OUTPUTS), feeds)
        diffs = {name: max_abs(np.asarray(g), w.numpy()) for name, g, w in zip(OUTPUTS, got, want, strict=True)}
        top1 = bool(np.array_equal(np.asarray(got[2]).argmax(-1), want[2].numpy().argmax(-1)))
        result[label] = {"batch": int(feeds["input_ids"].shape[0]), "seq": int(feeds["input_ids"].shape[1]),
                         "max_abs": diffs, "same_top1_task": top1,
                         "tasks_routed": sorted({int(t) for t in want[2].numpy().argmax(-1)})}
        worst = max(worst, *diffs.values(), 0.0 if top1 else float("inf"))
    result["max_abs_diff"] = worst
    result["tolerance"] = PARITY_ATOL_FP32
    return result


def export_fused(fuse_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, opset: int | None = None,
                 overwrite: bool = False, target: str | None = None) -> Path:
    """Export a fusion folder as one verified ONNX graph; returns the export folder.

    target: also write the mobile package (export/mobile.py)."""
    from dynalora.fusion.train import load_fusion
    from dynalora.export.mobile import build_mobile, check_target, pad_token_id

    check_target(target)
    out = refuse_existing(out, overwrite)
    try:
        fusion = load_fusion(fuse_dir)
    except DynaloraError as exc:
        raise ExportError(f"cannot load fusion {fuse_dir}: {exc}") from None
    if fusion.model.causal:
        raise ExportError(f"{fuse_dir} fuses causal-LM adapters: export it with `dynalora export fused --fuse "
                          f"{fuse_dir}` (export/genai_fused.py: router graph + fused decoder), not export_fused()")
    fused, tok, ml = fusion.model, fusion.tokenizer, fusion.max_length
    ids = input_names(tok)
    mixed = mixed_examples(fusion)
    batches = {"mixed_tasks": encode(tok, mixed, ml, ids), "single": encode(tok, mixed[:1], ml, ids),
               "short_seq": encode(tok, mixed[: len(fusion.specs)], min(ml, 8), ids)}
    names = [s.name for s in fusion.specs]
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:  # one writer at a time
        export_graph(fused, tok, batches["mixed_tasks"], tmp / "model.onnx", opset)
        sess = session(tmp / "model.onnx")
        verification = verify(sess, fused, batches)
        verification["inputs"] = f"{len(mixed)} evaluation texts interleaved from {len(names)} tasks, 1 text, seq 8"
        if not verification["max_abs_diff"] <= PARITY_ATOL_FP32:
            raise ExportError(f"the fused ONNX graph differs from PyTorch by {verification['max_abs_diff']:.3g} "
                              f"(> {PARITY_ATOL_FP32:g}) or routes differently; nothing was written")
        tok.save_pretrained(tmp)
        fused.model.config.save_pretrained(tmp)
        labels = [f"{s.name}:{label}" for s in fusion.specs for label in s.label_names]
        manifest = base_manifest(
            kind="fused", run_info={"task": {"name": "fused:" + ",".join(names), "problem": "classification",
                                             "label_names": labels}},
            model_type=str(fusion.config.get("model_type", "")), inputs=[i.name for i in sess.get_inputs()],
            outputs=[o.name for o in sess.get_outputs()], opset=opset_of(tmp / "model.onnx"), precision="fp32",
            max_length=ml, source_runs=[t["source"] for t in fusion.config["tasks"]])
        manifest["fusion"] = {
            "source": str(Path(fuse_dir).resolve()), "top_p": fused.top_p,
            "tasks": [{"name": s.name, "label_names": s.label_names, "columns": list(fused.label_slices[k])}
                      for k, s in enumerate(fusion.specs)],
            "router": {k: fusion.config["router"].get(k) for k in ("features", "parameters", "hidden", "eval_accuracy")},
        }
        manifest["verification"] = verification
        if target is not None:
            manifest["mobile"] = build_mobile(tmp, target, batches["mixed_tasks"], seq=ml, pad_id=pad_token_id(tok),
                                              precision="fp32")
        write_export_manifest(tmp, manifest)
    return out


def add_fused_parser(export_subparsers: Any) -> None:
    """`dynalora export fused` (added to the `export` subcommands by export/cli.py)."""
    from dynalora.export.mobile import add_target_flag

    p = export_subparsers.add_parser("fused", help="one ONNX graph: router + top-p + stacked task adapters + heads")
    p.add_argument("--fuse", required=True, help="fusion folder written by `dynalora fuse train`")
    p.add_argument("--quantize", choices=("int8", "int4"), default=None,
                   help="causal-LM fusions: block-wise weight-only quantisation of the decoder (adapters stay fp32)")
    from dynalora.export.cli import add_block_size_flag

    add_block_size_flag(p)
    add_output_flags(p, opset_default="18")
    add_target_flag(p)
    p.set_defaults(func=_cmd_fused)


def _is_causal_fusion(fuse_dir: str) -> bool:
    """Whether a fusion folder fuses causal-LM runs (read from fusion.json, without loading any model)."""
    import json

    try:
        config = json.loads((Path(fuse_dir) / "fusion.json").read_text(encoding="utf-8"))
        first = json.loads((Path(fuse_dir) / config["tasks"][0]["folder"] / "run.json").read_text(encoding="utf-8"))
        return first["task"]["problem"] in ("generation", "multiple_choice")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False  # export_fused reports the unreadable folder


def _cmd_fused(args: argparse.Namespace) -> int:
    import json

    from dynalora.errors import ConfigError

    if _is_causal_fusion(args.fuse):  # router graph + fused onnxruntime-genai decoder (export/genai_fused.py)
        from dynalora.export.genai_fused import export_genai_fused

        for flag, value in (("--target", args.target), ("--opset", args.opset)):
            if value is not None:
                raise ConfigError(f"{flag} does not apply to a causal-LM fusion (the genai builder decides the graph)")
        manifest = export_genai_fused(args.fuse, args.out, quantize=args.quantize, overwrite=args.overwrite,
                                      block_size=args.block_size)
        return report(args.out, manifest, what=f"routed decoder ({len(manifest['fusion']['tasks'])} tasks, "
                                               f"{manifest['precision']})")
    if args.quantize is not None or args.block_size is not None:
        raise ConfigError("--quantize / --block-size on `export fused` apply to causal-LM fusions (classifier fusions "
                          "export fp32)")
    out = export_fused(args.fuse, args.out, opset=args.opset, overwrite=args.overwrite, target=args.target)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return report(out, manifest, what=f"fused graph ({len(manifest['fusion']['tasks'])} tasks)")
