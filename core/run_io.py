"""Reading and writing run folders: the PEFT adapter and `load_run` (checkpoints: core/checkpoint.py).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dynalora.atomic import atomic_dir, write_json
from dynalora.core.config import TrainConfig
from dynalora.errors import CheckpointError
from dynalora.core.inject import HEAD_NAMES, adapter_layers, inject_adapters
from dynalora.core.layer import DynamicLoRALayer
from dynalora.core.safe_read import read_json as _read_json
from dynalora.core.safe_read import read_safetensors as _read_safetensors

# checkpoints moved to core/checkpoint.py; these names stay importable from here for one release
from dynalora.core.checkpoint import (  # noqa: E402,F401
    CKPT_RE, LatestCheckpoint, list_checkpoints, load_checkpoint, load_latest_checkpoint, save_checkpoint,
)

PEFT_PREFIX = "base_model.model."


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
        "task_type": "CAUSAL_LM" if extra.get("problem") in ("multiple_choice", "generation") else "SEQ_CLS",
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
        "ranks": {n: ranks.get(n, 0) for n in layers},  # the saved components (= kept ones once fades end)
        "v_ref": {n: float(l.v_ref) for n, l in layers.items()},
        **extra,
    }
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", config)
        write_json(tmp / "dynalora.json", dyn)


@dataclass
class AdapterFiles:
    """An adapter folder as written by `save_adapter`, read without touching any model."""

    folder: Path
    config: dict[str, Any]  # adapter_config.json (PEFT)
    dyn: dict[str, Any]  # dynalora.json: ranks, scaling, v_ref, input-adaptive mode
    tensors: dict[str, torch.Tensor]  # adapter_model.safetensors, PEFT key names

    @property
    def ranks(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.dyn["ranks"].items()}

    def lora(self, module: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(A (r, in), B (out, r)) as saved (gate folded into B); None where missing."""
        return self.tensors.get(f"{PEFT_PREFIX}{module}.lora_A.weight"), self.tensors.get(f"{PEFT_PREFIX}{module}.lora_B.weight")

    def head(self, head: str) -> dict[str, torch.Tensor]:
        """{parameter name: tensor} of a saved task head (PEFT modules_to_save)."""
        prefix = f"{PEFT_PREFIX}{head}."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def read_adapter_files(folder: Path) -> AdapterFiles:
    """The one reader of adapter folders (load_run and fusion both use it); damage is a CheckpointError."""
    folder = Path(folder)
    return AdapterFiles(folder, _read_json(folder / "adapter_config.json"), _read_json(folder / "dynalora.json"),
                        _read_safetensors(folder / "adapter_model.safetensors"))


def load_adapter_into(model: nn.Module, folder: Path) -> dict[str, DynamicLoRALayer]:
    """Inject layers with the saved per-layer ranks into a fresh base model and load the weights."""
    files = read_adapter_files(folder)
    folder, dyn = files.folder, files.dyn
    all_ranks = files.ranks
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
            a, b = files.lora(name)
            if a is None or b is None or a.shape != layer.lora_A.shape or b.shape != layer.lora_B.shape:
                raise CheckpointError(f"adapter {folder} is missing or has wrong-shaped weights for {name}")
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            layer.v_ref.fill_(float(dyn.get("v_ref", {}).get(name, 0.0)))
        for head in _heads(model):
            saved = files.head(head)
            for pname, p in model.get_submodule(head).named_parameters():
                if pname not in saved or saved[pname].shape != p.shape:
                    raise CheckpointError(f"adapter {folder} is missing head weight {head}.{pname}")
                p.copy_(saved[pname])
    mode = dyn.get("input_adaptive", "layer")
    ctx.per_example = mode == "per-example"
    ctx.example_gamma = float(dyn.get("example_gamma", 1.0))
    ctx.example_min_frac = float(dyn.get("example_min_frac", 0.25))
    for layer in layers.values():
        layer.static = not ctx.per_example
    return layers


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
    from dynalora.core.models import load_saved_tokenizer, load_task_model, load_tokenizer

    path = Path(path)
    if not is_run_dir(path):
        raise CheckpointError(f"{path} is not a finished dynalora run (no run.json / adapter/adapter_config.json)")
    info = _read_json(path / "run.json")
    config = TrainConfig.from_yaml(path / "config.yaml")
    task = info["task"]
    tok_dir = path / "tokenizer"
    tokenizer = load_saved_tokenizer(tok_dir) if tok_dir.is_dir() else load_tokenizer(info["base_model"])
    # head_restored: load_adapter_into puts the trained head back, so no "TRAIN this model" notice
    model = load_task_model(info["base_model"], task["num_labels"], task["problem"], seed=config.seed,
                            head_restored=True)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    layers = load_adapter_into(model, path / "adapter")
    model.eval()
    return LoadedRun(path=path, config=config, info=info, model=model, tokenizer=tokenizer, layers=layers)
