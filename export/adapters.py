"""`dynalora export adapters`: one base ONNX graph + one onnxruntime `.onnx_adapter` per run.

    dynalora export adapters --runs runs/sst2 runs/rt runs/rt-per-example --out exports/multi

The graph is the base model with every adapted layer written as

    y = base(x) + ((x A^T) * g(x)) B^T          A: (R, in), B: (out, R), g: (B, R) or 1

where A, B (and the task head's weights) are *graph inputs with initializer defaults*, the form
onnxruntime's native LoRA support overrides at run time (`RunOptions.add_active_adapter`).
R is fixed per layer: the largest rank any run gives that layer. Each run's A / B are padded with
zeros up to R (exact: a zero row of A and a zero column of B add nothing), and its scaling and final
gate are folded into B, so runs with different per-layer ranks, scalings, and even target modules
(a layer a run does not adapt gets all-zero A / B) share one graph.

Per-example input-adaptive runs: if any run is per-example, every layer also computes the per-example
gate of `DynamicLoRALayer.example_gate` in the graph (tensor ops only), with the layer's component order,
live rank k, v_ref, the run's gamma / min_frac and a 0/1 `per_example` switch as adapter parameters.
A layer-mode run sets the switch to 0, so the gate is 1 and its output is the plain LoRA update.

Runs must share the base model: the same model_type and the same hash of every base weight
(task heads and adapters excluded); otherwise the export is refused.
The graph's defaults are the first run's parameters, so `model.onnx` alone reproduces that run.
Every adapter is checked against its PyTorch run (max abs logit diff <= 1e-4) before anything is kept.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynalora.atomic import atomic_dir
from dynalora.core.outdir import OutLock
from dynalora.core.inject import HEAD_NAMES, adapter_layers
from dynalora.core.layer import DynamicLoRALayer, example_variance, per_example_gate
from dynalora.export.common import (
    PARITY_ATOL_FP32,
    base_manifest,
    encode,
    eval_examples,
    load_run_checked,
    max_abs,
    opset_of,
    quiet_onnx_export,
    refuse_existing,
    run_logits,
    save_single_file,
    session,
    torch_logits,
    write_export_manifest,
)
from dynalora.export.errors import ExportError

VERIFY_BATCH = 32
UNSELECTED = 1e9  # `order` of a padding component: never below any per-example rank


class _Feeds:
    """The LoRA tensors and attention mask of the forward being traced (set by `_AdapterGraph`)."""

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None


class _FeedLoRA(nn.Module):
    """A base layer plus a LoRA update whose tensors come from the graph inputs."""

    def __init__(self, base: nn.Module, key: str, feeds: _Feeds, per_example: bool) -> None:
        super().__init__()
        self.base, self.key, self.feeds, self.per_example = base, key, feeds, per_example

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.feeds.params, self.key
        h = F.linear(x, p[f"{k}.lora_A"])  # (B, T, R)
        if self.per_example:
            v = example_variance(x, self.feeds.mask)  # (B,)
            # the layer's own gate function, on this run's values fed as graph inputs (rank: (1,) live rank)
            gate = per_example_gate(v, p[f"{k}.v_ref"], p[f"{k}.rank"], p[f"{k}.order"], p["per_example.gamma"],
                                    p["per_example.min_frac"], x.dtype)  # (B, R)
            on = p["per_example.enabled"]  # (1,): 1 for a per-example run, 0 for a layer-mode run
            gate = on * gate + (1.0 - on)
            h = h * gate.view(gate.shape[0], *([1] * (h.dim() - 2)), gate.shape[-1])
        return self.base(x) + F.linear(h, p[f"{k}.lora_B"])


class _FeedLinear(nn.Module):
    """A task-head Linear whose weight / bias are graph inputs (each run has its own head)."""

    def __init__(self, key: str, feeds: _Feeds, has_bias: bool) -> None:
        super().__init__()
        self.key, self.feeds, self.has_bias = key, feeds, has_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.feeds.params
        return F.linear(x, p[f"{self.key}.weight"], p[f"{self.key}.bias"] if self.has_bias else None)


class _AdapterGraph(nn.Module):
    def __init__(self, model: nn.Module, id_names: Sequence[str], param_names: Sequence[str], feeds: _Feeds) -> None:
        super().__init__()
        self.model, self.id_names, self.param_names, self.feeds = model, list(id_names), list(param_names), feeds

    def forward(self, id_tensors: tuple[torch.Tensor, ...], param_tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids = dict(zip(self.id_names, id_tensors, strict=True))
        self.feeds.params = dict(zip(self.param_names, param_tensors, strict=True))
        self.feeds.mask = ids.get("attention_mask")
        return self.model(**ids).logits


# ---- per-run parameters ---------------------------------------------------------------------------
def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the names and bytes of every base weight (adapters and task heads excluded)."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if ".lora_" in name or name.split(".")[0] in HEAD_NAMES:
            continue
        digest.update(name.replace(".base.", ".").encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _head_linears(model: nn.Module) -> dict[str, nn.Linear]:
    out: dict[str, nn.Linear] = {}
    for head in HEAD_NAMES:
        if not hasattr(model, head):
            continue
        module = model.get_submodule(head)
        for name, sub in module.named_modules():
            full = f"{head}.{name}" if name else head
            if isinstance(sub, nn.Linear):
                out[full] = sub
            elif any(True for _ in sub.parameters(recurse=False)):
                raise ExportError(f"task head {full} ({type(sub).__name__}) is not a Linear: the adapters export "
                                  "only supports heads made of Linear layers")
    if not out:
        raise ExportError(f"{type(model).__name__} has no task head ({', '.join(HEAD_NAMES)}) to export")
    return out


def run_parameters(run: Any, ranks: dict[str, int], per_example: bool) -> dict[str, np.ndarray]:
    """One run's adapter parameters, padded to the shared per-layer ranks `ranks`."""
    layers = adapter_layers(run.model)
    out: dict[str, np.ndarray] = {}
    for name, r_max in ranks.items():
        layer = layers.get(name)
        module = run.model.get_submodule(name) if layer is None else layer.base
        in_f, out_f = (layer.in_features, layer.out_features) if layer is not None else _shape(module)
        a = np.zeros((r_max, in_f), dtype=np.float32)
        b = np.zeros((out_f, r_max), dtype=np.float32)
        order = np.full((r_max,), UNSELECTED, dtype=np.float32)
        rank = v_ref = 0.0
        if layer is not None:
            cap = layer.capacity
            a[:cap] = layer.lora_A.detach().float().numpy()
            b[:, :cap] = ((layer.lora_B * layer.gate) * layer.scaling).detach().float().numpy()
            order[:cap] = layer.order.float().numpy()
            rank, v_ref = float(layer.kept.sum()), float(layer.v_ref)
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = a, b
        if per_example:
            out[f"{name}.order"] = order
            out[f"{name}.rank"] = np.array([rank], dtype=np.float32)
            out[f"{name}.v_ref"] = np.array([v_ref], dtype=np.float32)
    if per_example:
        ctx = next(iter(layers.values())).context
        out["per_example.enabled"] = np.array([1.0 if ctx.per_example else 0.0], dtype=np.float32)
        out["per_example.gamma"] = np.array([ctx.example_gamma], dtype=np.float32)
        out["per_example.min_frac"] = np.array([ctx.example_min_frac], dtype=np.float32)
    for key, lin in _head_linears(run.model).items():
        out[f"{key}.weight"] = lin.weight.detach().float().numpy().copy()
        if lin.bias is not None:
            out[f"{key}.bias"] = lin.bias.detach().float().numpy().copy()
    return out


def _shape(module: nn.Module) -> tuple[int, int]:
    from dynalora.core.layer import base_shape

    in_f, out_f, _ = base_shape(module)
    return in_f, out_f


def _check_compatible(runs: Sequence[Any]) -> None:
    first = runs[0]
    fp0 = base_fingerprint(first.model)
    for run in runs[1:]:
        same_type = run.info.get("model_type") == first.info.get("model_type")
        if not same_type or base_fingerprint(run.model) != fp0:
            raise ExportError(
                f"runs {first.path} and {run.path} were trained on different base models "
                f"({first.info.get('model_type')} at {first.info.get('base_model')} vs "
                f"{run.info.get('model_type')} at {run.info.get('base_model')}: base weights differ); "
                "adapters can only share one graph when they share the base model: export them separately")
        t0, t1 = first.info["task"], run.info["task"]
        if (t0["problem"], t0["num_labels"]) != (t1["problem"], t1["num_labels"]):
            raise ExportError(
                f"runs {first.path} ({t0['problem']}, {t0['num_labels']} labels) and {run.path} ({t1['problem']}, "
                f"{t1['num_labels']} labels) have different task heads; one graph needs the same output size")


def _adapter_names(runs: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.path.name) or "adapter"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


# ---- the export --------------------------------------------------------------------------------------
def build_graph_module(first: Any, ranks: dict[str, int], per_example: bool) -> tuple[nn.Module, _Feeds]:
    """A deep copy of the first run's model with LoRA / head tensors read from graph inputs."""
    model = copy.deepcopy(first.model).eval()
    model._forward_pre_hooks.clear()
    model._forward_pre_hooks_with_kwargs.clear()
    feeds = _Feeds()
    for name in ranks:
        module = model.get_submodule(name)
        base = module.base if isinstance(module, DynamicLoRALayer) else module
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, _FeedLoRA(base, name, feeds, per_example))
    for key, lin in _head_linears(model).items():
        parent_name, _, leaf = key.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, _FeedLinear(key, feeds, lin.bias is not None))
    return model, feeds


def export_adapters(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    opset: int | None = None, overwrite: bool = False, target: str | None = None) -> dict[str, Any]:
    """Export runs sharing a base model as one graph + native ORT adapters; returns the manifest.

    target: also write the mobile package (export/mobile.py); its graphs keep the adapter inputs."""
    from dynalora.export.mobile import build_mobile, check_target, pad_token_id

    check_target(target)
    if not run_dirs:
        raise ExportError("--runs needs at least one run folder")
    out = refuse_existing(out, overwrite)
    runs = [load_run_checked(d) for d in run_dirs]
    for run in runs:
        if run.info["task"]["problem"] in ("multiple_choice", "generation"):
            raise ExportError(f"{run.path} is a causal-LM {run.info['task']['problem']} run: the default runtime's "
                              "`export adapters` builds classifier graphs; for causal-LM runs pass --runtime genai "
                              "(one decoder + an .onnx_adapter per run), or export one run with `dynalora export merged`")
    _check_compatible(runs)
    names = _adapter_names(runs)
    ranks: dict[str, int] = {}
    for run in runs:
        for lname, layer in adapter_layers(run.model).items():
            ranks[lname] = max(ranks.get(lname, 1), layer.capacity)
    per_example = any(run.mode == "per-example" for run in runs)
    params = [run_parameters(run, ranks, per_example) for run in runs]
    param_names = list(params[0])
    first = runs[0]
    tokenizer = first.tokenizer
    id_names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    max_length = max(int(r.config.max_length) for r in runs)

    model_copy, feeds = build_graph_module(first, ranks, per_example)
    graph_module = _AdapterGraph(model_copy, id_names, param_names, feeds)
    sample = encode(tokenizer, eval_examples(first, 4), max_length, id_names)
    if sample["input_ids"].shape[0] < 2 or sample["input_ids"].shape[1] < 2:  # dims of size 1 get specialised
        raise ExportError(f"{first.path}'s evaluation split is too small to trace a dynamic-shape graph")
    args = (tuple(torch.from_numpy(sample[n]) for n in id_names), tuple(torch.from_numpy(params[0][n]) for n in param_names))
    cfg = first.model.config
    max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    batch = torch.export.Dim("batch_size")
    seq = torch.export.Dim("sequence_length", max=int(max_positions)) if max_positions else torch.export.Dim("sequence_length")
    dynamic = (tuple({0: batch, 1: seq} for _ in id_names), tuple(None for _ in param_names))
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:  # one writer at a time
        _trace_to_onnx(graph_module, args, dynamic, id_names, param_names, params[0], opset, first, tmp / "model.onnx")
        adapter_files = _write_adapter_files(tmp, names, params)
        verification = _verify(tmp, runs, names, adapter_files, max_length)
        tokenizer.save_pretrained(tmp)
        first.model.config.save_pretrained(tmp)
        sess = session(tmp / "model.onnx")
        manifest = base_manifest(
            kind="adapters", run_info=first.info, model_type=str(first.info.get("model_type", "")),
            inputs=[i.name for i in sess.get_inputs()], outputs=[o.name for o in sess.get_outputs()],
            opset=opset_of(tmp / "model.onnx"), precision="fp32", max_length=max_length,
            source_runs=[str(r.path) for r in runs])
        manifest["adapters"] = adapter_files
        manifest["default_adapter"] = names[0]
        manifest["adapter_parameters"] = param_names
        manifest["adapter_ranks"] = ranks
        manifest["adapter_runs"] = {
            n: {"source": str(r.path.resolve()), "task": r.info["task"], "mode": r.mode, "metrics": r.info.get("metrics", {}),
                "ranks": {k: int(v.rank) for k, v in r.layers.items()}}
            for n, r in zip(names, runs, strict=True)}
        manifest["base_fingerprint"] = base_fingerprint(first.model)
        verification["max_abs_diff"] = max(v["max_abs_vs_torch"] for v in verification.values())
        verification["tolerance"] = PARITY_ATOL_FP32
        manifest["verification"] = verification
        if target is not None:
            manifest["mobile"] = build_mobile(tmp, target, sample, seq=max_length, pad_id=pad_token_id(tokenizer),
                                              precision="fp32")
        written = write_export_manifest(tmp, manifest)
    return written


def _trace_to_onnx(graph_module: nn.Module, args: tuple, dynamic: tuple, id_names: list[str], param_names: list[str],
                   defaults: dict[str, np.ndarray], opset: int | None, first: Any, dest: Path) -> None:
    """torch.export -> ONNX with the adapter tensors as graph inputs whose defaults are the first run's."""
    import onnx
    from onnx import numpy_helper

    raw = dest.parent / ".work" / "graph.onnx"
    raw.parent.mkdir()
    try:
        # torch.export first: torch.onnx.export's own call mangles nested dynamic_shapes (tuple -> list)
        with quiet_onnx_export():
            program = torch.export.export(graph_module, args, dynamic_shapes=dynamic, strict=False)
            torch.onnx.export(program, args, str(raw), input_names=id_names + param_names,
                              output_names=["logits"], opset_version=opset or 18, dynamo=True,
                              external_data=False, verbose=False)
    except Exception as exc:  # torch.onnx raises many unrelated types; name the failing op / module
        raise ExportError(f"the ONNX exporter cannot handle {first.info.get('model_type')} "
                          f"({_exporter_error(exc)})") from None
    model = onnx.load(str(raw))
    graph_inputs = {i.name for i in model.graph.input}
    missing = [n for n in param_names if n not in graph_inputs]
    if missing:
        raise ExportError(f"the exporter dropped the adapter inputs {missing[:3]}; cannot build adapters")
    _name_dynamic_dims(model, id_names)
    existing = {i.name for i in model.graph.initializer}
    for n in param_names:  # defaults = first run: overridable initializers, what ORT adapters replace
        if n not in existing:
            model.graph.initializer.append(numpy_helper.from_array(defaults[n], n))
    save_single_file(model, dest)
    shutil.rmtree(raw.parent)


def _write_adapter_files(tmp: Path, names: list[str], params: list[dict[str, np.ndarray]]) -> dict[str, str]:
    """One native onnxruntime `.onnx_adapter` file per run; returns {name: relative path}."""
    import onnxruntime as ort

    (tmp / "adapters").mkdir()
    adapter_files: dict[str, str] = {}
    for name, p in zip(names, params, strict=True):
        fmt = ort.AdapterFormat()
        fmt.set_adapter_version(1)
        fmt.set_model_version(1)
        fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in p.items()})
        rel = f"adapters/{name}.onnx_adapter"
        fmt.export_adapter(str(tmp / rel))
        adapter_files[name] = rel
    return adapter_files


def _name_dynamic_dims(model: Any, id_names: Sequence[str]) -> None:
    """torch.export names the symbolic dims s0, s1...; give them the names optimum's graphs use."""
    first = next(i for i in model.graph.input if i.name == id_names[0])
    dims = first.type.tensor_type.shape.dim
    rename = {dims[0].dim_param: "batch_size", dims[1].dim_param: "sequence_length"}
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def _verify(tmp: Path, runs: Sequence[Any], names: Sequence[str], files: dict[str, str], max_length: int) -> dict:
    import onnxruntime as ort

    sess = session(tmp / "model.onnx")
    id_names = [i.name for i in sess.get_inputs()]
    result: dict[str, Any] = {}
    for i, (name, run) in enumerate(zip(names, runs, strict=True)):
        examples = eval_examples(run, VERIFY_BATCH)
        feeds = encode(runs[0].tokenizer, examples, max_length, id_names)
        want = torch_logits(run.model, feeds)
        adapter = ort.LoraAdapter()
        adapter.Load(str(tmp / files[name]))
        options = ort.RunOptions()
        options.add_active_adapter(adapter)
        diff = max_abs(run_logits(sess, feeds, options), want)
        if not diff <= PARITY_ATOL_FP32:
            raise ExportError(f"adapter {name} ({run.path}) differs from its PyTorch run by {diff:.3g} "
                              f"(> {PARITY_ATOL_FP32:g}) on evaluation texts; nothing was written")
        entry: dict[str, Any] = {"max_abs_vs_torch": diff, "inputs": f"{len(examples)} evaluation texts"}
        if i == 0:
            entry["default_max_abs_vs_torch"] = max_abs(run_logits(sess, feeds), want)
        result[name] = entry
    return result


def _exporter_error(exc: BaseException) -> str:
    text = str(exc)
    if exc.__cause__ is not None:  # torch.onnx wraps the torch.export error that names the op
        text = f"{text}\n{exc.__cause__}"
    for pattern in (r"(aten::[\w.]+)", r"(torch\.ops\.[\w.]+)", r"Unsupported FX nodes: (.+)", r"module '?([\w.]+)'?"):
        match = re.search(pattern, text)
        if match:
            return f"{type(exc).__name__} at {match.group(1)[:200]}"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"
