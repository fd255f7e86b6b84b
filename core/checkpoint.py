"""Checkpoints: the folders on disk, and the training state they hold.

    save_checkpoint(run, step, tensors, meta)     RUN/checkpoints/step-NNNNNNN/{state.safetensors, meta.json}
    load_latest_checkpoint(run)                   the newest intact one (newer damaged ones are named, skipped)
    checkpoint_tensors(model, opt, names, ctl)    what a checkpoint holds: trainable tensors, adapter buffers,
                                                  optimizer state, rank controller, torch RNG
    resume_from(run, model, opt, sched, ctl)      restore all of it; returns (step, losses)

Checkpoints are written atomically (dynalora/atomic.py) and two are kept, so a crash mid-write leaves the
previous one, and a damaged newest one falls back to the one before. Safetensors + JSON only.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dynalora.atomic import atomic_dir, write_json
from dynalora.errors import CheckpointError
from dynalora.core.inject import adapter_layers
from dynalora.core.safe_read import read_json, read_safetensors

CKPT_RE = re.compile(r"^step-(\d{7})$")


# ---- checkpoint folders ------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"step-{step:07d}"
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        write_json(tmp / "meta.json", {**meta, "step": step})
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = read_json(Path(path) / "meta.json")
    tensors = read_safetensors(Path(path) / "state.safetensors")
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


# ---- training state ------------------------------------------------------------------------------
def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, layer in adapter_layers(model).items():
        for b in ("kept", "gate", "order", "v_ref"):
            out[f"{name}.{b}"] = getattr(layer, b).detach().clone()
    return out


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"optim.{names[id(p)]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def restore(model: nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = dict(model.named_parameters())
    layers = adapter_layers(model)
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith(("optim.", "controller.", "rng.")):
                continue
            head, _, leaf = key.rpartition(".")
            if key in params:
                if params[key].shape != value.shape:
                    raise CheckpointError(f"checkpoint {path} does not match this model ({key} has shape {tuple(value.shape)})")
                params[key].copy_(value)
            elif head in layers:
                getattr(layers[head], leaf).copy_(value)
            else:
                raise CheckpointError(f"checkpoint {path} holds an unknown tensor {key}")
    by_name = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for key, value in tensors.items():
        if key.startswith("optim."):
            pname, _, k = key[len("optim.") :].rpartition(".")
            if pname not in by_name:
                raise CheckpointError(f"checkpoint {path} optimizer state names an unknown parameter {pname}")
            opt.state[by_name[pname]][k] = value.clone()


def checkpoint_tensors(model: nn.Module, opt: torch.optim.Optimizer, names: dict[int, str], controller: Any) -> dict[str, torch.Tensor]:
    """Everything a resumed run needs, as one flat tensor dict (saved as safetensors)."""
    tensors = trainable_state(model) | optimizer_tensors(opt, names)
    tensors |= {f"controller.{k}": v for k, v in controller.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors


def resume_from(
    out: Path, model: nn.Module, opt: torch.optim.Optimizer, scheduler: Any, controller: Any, *, is_main: bool
) -> tuple[int, list[float]]:
    """Restore model, optimizer, schedule, controller and RNG from the newest intact checkpoint of `out`.

    Returns (step to continue from, the losses logged so far). Rank 0 says in one line which damaged
    checkpoints it skipped; with none intact it is a CheckpointError.
    """
    found = load_latest_checkpoint(out)
    if found.path is None:
        why = f" ({found.skipped[0][1]})" if found.skipped else ""
        raise CheckpointError(f"--resume: {out} has no intact checkpoint to continue from{why}: start it again with --overwrite")
    for path, reason in found.skipped if is_main else []:
        print(f"dynalora: checkpoint {path.name} is unreadable ({reason}); resuming from {found.path.name}",
              file=sys.stderr, flush=True)
    tensors, meta = found.tensors, found.meta
    restore(model, opt, tensors, found.path)
    controller.load_state_dict({k[len("controller.") :]: v for k, v in tensors.items() if k.startswith("controller.")})
    if not is_main and controller.stats is not None:
        controller.stats.zero_()  # rank 0 restored the consolidated window statistics (core/train.py)
    scheduler.load_state_dict(meta["scheduler"])
    for group, lr in zip(opt.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr  # the optimizer only sees the schedule's lr after the next step() otherwise
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), list(meta.get("losses", []))
