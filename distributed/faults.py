"""Fault injection for recovery tests: kill one worker once, at a chosen optimizer step.

    DYNALORA_FAULT_STEP=25 DYNALORA_FAULT_MARKER=/tmp/x/fired [DYNALORA_FAULT_RANK=1] \
    [DYNALORA_FAULT_KIND=exit|sigkill|ckpt-write|corrupt-ckpt] \
        torchrun --standalone --nproc_per_node=2 --max-restarts 1 -m dynalora train ...

Kinds (the marker file makes each fire once, so the restarted attempt runs through):
- exit (default): after step N the worker exits with os._exit(1): no cleanup, no exception handler.
- sigkill: after step N the worker sends itself SIGKILL, as the OOM killer or `kill -9` would.
- ckpt-write: rank 0 is killed (SIGKILL) in the middle of writing the checkpoint of step N, after
  half of its tensor file is on disk. The restart must resume from the previous checkpoint.
- corrupt-ckpt: after the checkpoint of step N is complete, rank 0 truncates its tensor file (as a
  damaged disk would) and is killed. The restart must fall back to the newest intact checkpoint.
Without DYNALORA_FAULT_STEP this module does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

KINDS = ("exit", "sigkill", "ckpt-write", "corrupt-ckpt")


def _announce(marker: Path, text: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(text + "\n", encoding="utf-8")
    sys.stderr.write(f"dynalora: fault injection: {text}\n")
    sys.stderr.flush()


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fault_hook(rank: int, out: str | Path | None = None) -> Callable[[int], None] | None:
    """An on_step hook that crashes this worker at the configured step, or None when not configured."""
    step_env = os.environ.get("DYNALORA_FAULT_STEP")
    if not step_env:
        return None
    fault_step = int(step_env)
    kind = os.environ.get("DYNALORA_FAULT_KIND", "exit")
    if kind not in KINDS:
        raise RuntimeError(f"DYNALORA_FAULT_KIND must be one of {', '.join(KINDS)}, got {kind!r}")
    checkpoint_kind = kind in ("ckpt-write", "corrupt-ckpt")
    fault_rank = int(os.environ.get("DYNALORA_FAULT_RANK", "0" if checkpoint_kind else "1"))
    marker_env = os.environ.get("DYNALORA_FAULT_MARKER")
    if not marker_env:
        raise RuntimeError("DYNALORA_FAULT_STEP needs DYNALORA_FAULT_MARKER (a file path) so the fault fires once")
    marker = Path(marker_env)
    if rank != fault_rank:
        return None
    if checkpoint_kind and rank != 0:
        raise RuntimeError(f"DYNALORA_FAULT_KIND={kind} needs DYNALORA_FAULT_RANK=0 (rank 0 writes checkpoints)")

    if kind == "ckpt-write":
        import dynalora.core.checkpoint as checkpoint

        real_save = checkpoint.save_file
        tag = f"step-{fault_step:07d}"

        def save_file(tensors: dict, path: str, *args: object, **kwargs: object) -> None:
            if tag not in str(path) or marker.exists():
                real_save(tensors, path, *args, **kwargs)
                return
            real_save(tensors, path, *args, **kwargs)
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:  # half a file on disk, then the process dies
                fh.truncate(size // 2)
                os.fsync(fh.fileno())
            _announce(marker, f"rank {rank} killed while writing the checkpoint of step {fault_step}")
            _sigkill()

        checkpoint.save_file = save_file  # type: ignore[assignment]
        return None

    def on_step(step: int) -> None:
        if step != fault_step or marker.exists():
            return
        if kind == "corrupt-ckpt":
            if out is None:
                raise RuntimeError("DYNALORA_FAULT_KIND=corrupt-ckpt needs the run folder")
            state = Path(out) / "checkpoints" / f"step-{step:07d}" / "state.safetensors"
            if not state.is_file():
                raise RuntimeError(f"DYNALORA_FAULT_KIND=corrupt-ckpt: no checkpoint at step {step} ({state})")
            with open(state, "r+b") as fh:
                fh.truncate(os.path.getsize(state) // 3)
            _announce(marker, f"rank {rank} corrupted the checkpoint of step {step} and was killed")
            _sigkill()
        if kind == "sigkill":
            _announce(marker, f"rank {rank} killed (SIGKILL) after step {step}")
            _sigkill()
        _announce(marker, f"rank {rank} exits after step {step}")
        os._exit(1)

    return on_step
