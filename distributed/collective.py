"""`TorchCollective`: the training loop's `Collective` over torch.distributed.

The loop (dynalora.core.train) needs two things from its launcher:

    reduce(flat)   in-place SUM all-reduce of the one float64 statistics buffer, once per reallocation
    gather(text)   every worker's string in rank order (allocation digests; also used as a barrier)

Both torchrun workers and Ray Train workers use this class; the process group is initialised
either by `init_process_group()` (torchrun: env:// rendezvous) or by Ray Train's TorchTrainer.
`reduce` is timed so the benchmark can report the all-reduce share of step time.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from dynalora.core.errors import ConfigError


def process_group_backend() -> str:
    """gloo: the core loop keeps the model and the statistics buffer on the CPU.

    nccl only reduces CUDA tensors, so it is used only when asked for explicitly
    (DYNALORA_DIST_BACKEND=nccl) by a loop that places its tensors on the GPU.
    """
    return os.environ.get("DYNALORA_DIST_BACKEND", "gloo")


def init_process_group(timeout_s: float | None = None) -> None:
    """Join the env:// process group set up by torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    timeout_s: how long a collective may wait before it fails (and torchrun --max-restarts restarts the
    group); default DYNALORA_DIST_TIMEOUT_S, else 600 s.
    """
    if dist.is_initialized():
        return
    if timeout_s is None:
        raw = os.environ.get("DYNALORA_DIST_TIMEOUT_S", "600")
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ConfigError(f"DYNALORA_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
        if timeout_s <= 0:
            raise ConfigError(f"DYNALORA_DIST_TIMEOUT_S must be > 0, got {raw!r}")
    backend = process_group_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


class TorchCollective:
    """Collective over the default torch.distributed process group (already initialised)."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("TorchCollective needs an initialised torch.distributed process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.reduce_seconds = 0.0  # cumulative wall time inside all_reduce
        self.reduce_calls = 0

    def reduce(self, flat: torch.Tensor) -> None:
        t0 = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.reduce_seconds += time.perf_counter() - t0
        self.reduce_calls += 1

    def gather(self, text: str) -> list[str]:
        out: list[str | None] = [None] * self.world_size
        dist.all_gather_object(out, text)
        return [str(t) for t in out]
