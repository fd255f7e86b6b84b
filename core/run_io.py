"""Reading and writing run folders: the PEFT adapter, checkpoints, and `load_run`.

    RUN/
      config.yaml            resolved TrainConfig
      run.json               task, labels, base model, final metrics, versions
      metrics.jsonl          training / evaluation lines
      allocation.jsonl       one line per reallocation: step, ranks, world_size, worker_digests
      allocation.png         heatmap of rank per layer over training
      adapter/               PEFT format (adapter_config.json with rank_pattern / alpha_pattern,
                             adapter_model.safetensors) + dynalora.json (mode, per-example state)
      tokenizer/
      checkpoints/step-NNNNNNN/{state.safetensors, meta.json}

Everything is safetensors / JSON / YAML: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dynalora.core.atomic import atomic_dir, write_json
from dynalora.core.config import TrainConfig
from dynalora.core.errors import CheckpointError
from dynalora.core.inject import HEAD_NAMES, adapter_layers, inject_adapters
from dynalora.core.layer import DynamicLoRALayer

PEFT_PREFIX = "base_model.model."
CKPT_RE = re.compile(r"^step-(\d{7})$")


# ---- adapter (PEFT format) -------------------------------------------------------------------
def adapter_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Compacted PEFT tensors and the rank pattern {module: rank} (rank-0 layers are left out)."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, layer in adapter_layers(model).items():
        a, b = layer.compact()
        if a.shape[0] == 0:
            continue
        ranks[name] = a.shape[0]
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    for head in _heads(model):
        for pname, p in model.get_submodule(head).named_parameters():
            tensors[f"{PEFT_PREFIX}{head}.{pname}"] = p.detach().clone().contiguous()
    return tensors, ranks


def _heads(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_children() if n in HEAD_NAMES]


def save_adapter(model: nn.Module, folder: Path, *, base_model: str, extra: dict[str, Any]) -> None:
    """Write `folder` (atomically) in PEFT's LoRA format plus dynalora.json."""
    tensors, ranks = adapter_state(model)
    layers = adapter_layers(model)
    any_layer = next(iter(layers.values()))
    scaling = any_layer.scaling
    r0 = max(ranks.values()) if ranks else 1
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if extra.get("problem") == "multiple_choice" else "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": r0,
        "lora_alpha": scaling * r0,
        "rank_pattern": ranks,
        "alpha_pattern": {n: scaling * r for n, r in ranks.items()},  # PEFT scaling = alpha / r
        "target_modules": sorted(ranks),
        "modules_to_save": _heads(model),
        "fan_in_fan_out": any(l.fan_in_fan_out for l in layers.values()),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    dyn = {
        "format_version": 1,
        "scaling": scaling,
        "ranks": {n: l.rank for n, l in layers.items()},
        "v_ref": {n: float(l.v_ref) for n, l in layers.items()},
        **extra,
    }
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", config)
        write_json(tmp / "dynalora.json", dyn)


def load_adapter_into(model: nn.Module, folder: Path) -> dict[str, DynamicLoRALayer]:
    """Inject layers with the saved per-layer ranks into a fresh base model and load the weights."""
    folder = Path(folder)
    cfg = _read_json(folder / "adapter_config.json")
    dyn = _read_json(folder / "dynalora.json")
    tensors = _read_safetensors(folder / "adapter_model.safetensors")
    all_ranks: dict[str, int] = {k: int(v) for k, v in dyn["ranks"].items()}
    targets = list(all_ranks)
    try:
        layers, ctx = inject_adapters(
            model,
            targets=targets,
            capacity={n: max(r, 1) for n, r in all_ranks.items()},
            rank=all_ranks,
            scaling=float(dyn["scaling"]),
        )
    except Exception as exc:  # the base model does not have the modules this adapter was trained on
        raise CheckpointError(f"adapter in {folder} does not fit this base model: {exc}") from None
    with torch.no_grad():
        for name, layer in layers.items():
            r = all_ranks[name]
            if r == 0:
                layer.gate.zero_()
                layer.kept.zero_()
                continue
            a = tensors.get(f"{PEFT_PREFIX}{name}.lora_A.weight")
            b = tensors.get(f"{PEFT_PREFIX}{name}.lora_B.weight")
            if a is None or b is None or a.shape != layer.lora_A.shape or b.shape != layer.lora_B.shape:
                raise CheckpointError(f"adapter {folder} is missing or has wrong-shaped weights for {name}")
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            layer.v_ref.fill_(float(dyn.get("v_ref", {}).get(name, 0.0)))
        for head in _heads(model):
            for pname, p in model.get_submodule(head).named_parameters():
                key = f"{PEFT_PREFIX}{head}.{pname}"
                if key not in tensors or tensors[key].shape != p.shape:
                    raise CheckpointError(f"adapter {folder} is missing head weight {head}.{pname}")
                p.copy_(tensors[key])
    mode = dyn.get("input_adaptive", "layer")
    ctx.per_example = mode == "per-example"
    ctx.example_gamma = float(dyn.get("example_gamma", 1.0))
    ctx.example_min_frac = float(dyn.get("example_min_frac", 0.25))
    for layer in layers.values():
        layer.static = not ctx.per_example
    return layers


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc.__class__.__name__}): delete it or use another run") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:80]})") from None


# ---- checkpoints -----------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"step-{step:07d}"
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        write_json(tmp / "meta.json", {**meta, "step": step})
    for old in list_checkpoints(run_dir)[:-keep]:
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = _read_json(Path(path) / "meta.json")
    tensors = _read_safetensors(Path(path) / "state.safetensors")
    return tensors, meta


@dataclass
class LatestCheckpoint:
    path: Path | None  # the newest checkpoint that reads back intact (None: none does)
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    skipped: list[tuple[Path, str]]  # newer checkpoints that are corrupt, with the reason


def load_latest_checkpoint(run_dir: Path) -> LatestCheckpoint:
    """The newest checkpoint that loads, skipping (and naming) newer ones that are corrupt.

    Checkpoints are written atomically, so a crash mid-write leaves no partial checkpoint; a
    corrupt one means the storage damaged it afterwards. Falling back to the previous one
    (save_checkpoint keeps two) costs some steps instead of the whole run.
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            tensors, meta = load_checkpoint(path)
            int(meta["step"])
            meta["scheduler"]
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            skipped.append((path, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
            continue
        return LatestCheckpoint(path, tensors, meta, skipped)
    return LatestCheckpoint(None, {}, {}, skipped)


# ---- load_run --------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    path: Path
    config: TrainConfig
    info: dict[str, Any]  # run.json
    model: nn.Module  # base model with the trained adapters, eval mode
    tokenizer: Any
    layers: dict[str, DynamicLoRALayer]

    @property
    def label_names(self) -> list[str]:
        return list(self.info["task"]["label_names"])

    @property
    def mode(self) -> str:
        return self.config.dynamic.input_adaptive


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "run.json").is_file() and (path / "adapter" / "adapter_config.json").is_file()


def load_run(path: str | Path) -> LoadedRun:
    """Restore a finished run: base model + adapters exactly as trained (all modes)."""
    from dynalora.core.models import load_task_model, load_tokenizer

    path = Path(path)
    if not is_run_dir(path):
        raise CheckpointError(f"{path} is not a finished dynalora run (no run.json / adapter/adapter_config.json)")
    info = _read_json(path / "run.json")
    config = TrainConfig.from_yaml(path / "config.yaml")
    task = info["task"]
    tok_dir = path / "tokenizer"
    if tok_dir.is_dir():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"tokenizer in {tok_dir} cannot be loaded: {str(exc).splitlines()[0]}") from None
        if tokenizer.pad_token is None:  # same rule as models.load_tokenizer
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
    else:
        tokenizer = load_tokenizer(info["base_model"])
    model = load_task_model(info["base_model"], task["num_labels"], task["problem"], seed=config.seed)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    layers = load_adapter_into(model, path / "adapter")
    model.eval()
    return LoadedRun(path=path, config=config, info=info, model=model, tokenizer=tokenizer, layers=layers)
