"""What every data-parallel worker runs, whoever launched it (torchrun or Ray Train).

    result = run_worker(cfg, TorchCollective(), on_checkpoint=report_to_ray)

The process group is already initialised. This adds the launcher seams of `dynalora.core.train`:

- wrap_model: DistributedDataParallel with `broadcast_buffers=False`. The adapter buffers
  (kept / gate / order / v_ref) are only changed by the RankController from all-reduced
  statistics, identically on every worker (checked by digest at each reallocation), so
  re-broadcasting rank 0's buffers before every forward would cost a collective and change nothing.
- on_step: fault injection (faults.py), if configured.
- on_log: rank 0 prints one progress line per log record, so progress reaches job logs.

Rank 0 also writes RUN/distributed.json: backend, world size, and the time spent in the
importance all-reduce (the one collective of the rank controller).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dynalora.atomic import write_json
from dynalora.core.config import TrainConfig
from dynalora.core.run_folder import RunResult
from dynalora.core.train import TrainHooks, train
from dynalora.distributed.collective import TorchCollective
from dynalora.distributed.faults import fault_hook

# torch >= 2.13 renames broadcast_buffers to forward_sync_buffers (init-time sync stays on: harmless,
# the buffers are identical at construction).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def progress_printer(total: int | None) -> Callable[[dict[str, Any]], None]:
    def on_log(record: dict[str, Any]) -> None:
        parts = [f"step {record['step']}" + (f"/{total}" if total else "")]
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4f}")
        if "budget" in record:
            parts.append(f"budget {record['budget']}")
        if "step_s" in record:
            parts.append(f"{record['step_s']:.3f} s/step")
        if "eval" in record:
            parts.append("eval " + " ".join(f"{k}={v:.4f}" for k, v in record["eval"].items()))
        # sys.stdout.write, not print: Ray Train patches print() into its logger *and* stdout (twice)
        sys.stdout.write("dynalora: " + ", ".join(parts) + "\n")
        sys.stdout.flush()

    return on_log


def run_worker(
    cfg: TrainConfig,
    collective: TorchCollective,
    *,
    launch_id: str | None = None,
    on_checkpoint: Callable[[int, Path | None], None] | None = None,
    print_progress: bool = True,
) -> RunResult:
    """Run the training loop on this worker; returns the loop's RunResult (metrics on rank 0 only)."""
    watchdog = collective.watchdog
    fault = fault_hook(collective.rank, cfg.out)
    step_stage = "training step (forward, backward and gradient all-reduce)"

    def wrap(model: nn.Module) -> nn.Module:
        if collective.world_size == 1:
            return model
        if watchdog is not None:
            with watchdog.stage("DDP construction (parameter broadcast)"):
                wrapped = DistributedDataParallel(model, **_NO_BUFFER_SYNC)
            watchdog.arm(step_stage)  # a heartbeat from here on: re-armed after every step
            return wrapped
        return DistributedDataParallel(model, **_NO_BUFFER_SYNC)

    def on_step(step: int) -> None:
        if watchdog is not None and collective.world_size > 1:
            watchdog.arm(step_stage)
        if fault is not None:
            fault(step)

    def on_train_end() -> None:
        if watchdog is not None:
            watchdog.disarm(step_stage)

    hooks = TrainHooks(
        wrap_model=wrap,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        on_log=progress_printer(cfg.steps) if print_progress and collective.rank == 0 else None,
        on_train_end=on_train_end,
        launch_id=launch_id,
    )
    t0 = time.perf_counter()
    result = train(cfg, collective, hooks)
    if collective.rank == 0:
        write_json(
            Path(result.out) / "distributed.json",
            {
                "backend": cfg.backend,
                "world_size": collective.world_size,
                "allreduce_seconds": collective.reduce_seconds,
                "allreduce_calls": collective.reduce_calls,
                "train_seconds": sum(result.step_times),
                "steps_this_attempt": len(result.step_times),
                "wall_seconds": time.perf_counter() - t0,
            },
        )
    collective.gather("written")  # distributed.json exists before any worker returns
    return result
