"""`TorchCollective`: the training loop's `Collective` over torch.distributed.

The loop (dynalora.core.train) needs two things from its launcher:

    reduce(flat)   in-place SUM all-reduce of the one float64 statistics buffer, once per reallocation
    gather(text)   every worker's string in rank order (allocation digests; also used as a barrier)

Both torchrun workers and Ray Train workers use this class; the process group is initialised
either by `init_process_group()` (torchrun: env:// rendezvous) or by Ray Train's TorchTrainer.
`reduce` is timed so the benchmark can report the all-reduce share of step time. With a
`Watchdog` (watchdog.py), process-group set-up, teardown and every collective run under its
deadline: a peer that died or stalled ends this worker instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from dynalora.distributed.watchdog import Watchdog, dist_timeout_s


def process_group_backend() -> str:
    """gloo: the core loop keeps the model and the statistics buffer on the CPU.

    nccl only reduces CUDA tensors, so it is used only when asked for explicitly
    (DYNALORA_DIST_BACKEND=nccl) by a loop that places its tensors on the GPU.
    """
    return os.environ.get("DYNALORA_DIST_BACKEND", "gloo")


@contextlib.contextmanager
def _bounded(watchdog: Watchdog | None, stage: str) -> Iterator[None]:
    if watchdog is None:
        yield
    else:
        with watchdog.stage(stage):
            yield


def init_process_group(timeout_s: float | None = None, watchdog: Watchdog | None = None) -> None:
    """Join the env:// process group set up by torchrun (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    timeout_s: how long a collective may wait before it fails (and torchrun --max-restarts restarts the
    group); default DYNALORA_DIST_TIMEOUT_S, else 600 s. The watchdog bounds the whole set-up,
    including gloo's connection of the new group, which that timeout does not always bound.
    """
    if dist.is_initialized():
        return
    if timeout_s is None:
        timeout_s = dist_timeout_s()
    backend = process_group_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=timeout_s)
    with _bounded(watchdog, "process-group init (rendezvous and gloo connection)"):
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's agent keeps ONE TCPStore for all restarts of a job and its workers use it
        # without a per-attempt prefix, so a restarted worker can read the gloo address its peer
        # published in the attempt that just died. Connecting to a dead address fails ("Connection
        # refused"), or both peers take the passive side of gloo's pair set-up and wait for each
        # other forever (observed: both in gloo Pair::waitUntilConnected, no socket between them).
        # A namespace per attempt keeps every attempt's keys apart.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"dynalora/attempt-{attempt}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
        # a first collective proves every pair of workers is connected before training starts
        dist.barrier()


def destroy_process_group(watchdog: Watchdog | None = None) -> None:
    if dist.is_initialized():
        with _bounded(watchdog, "process-group teardown"):
            dist.destroy_process_group()


class TorchCollective:
    """Collective over the default torch.distributed process group (already initialised)."""

    def __init__(self, watchdog: Watchdog | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("TorchCollective needs an initialised torch.distributed process group")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.watchdog = watchdog
        self.reduce_seconds = 0.0  # cumulative wall time inside all_reduce
        self.reduce_calls = 0

    def reduce(self, flat: torch.Tensor) -> None:
        t0 = time.perf_counter()
        with _bounded(self.watchdog, "all-reduce of the importance statistics"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.reduce_seconds += time.perf_counter() - t0
        self.reduce_calls += 1

    def gather(self, text: str) -> list[str]:
        out: list[str | None] = [None] * self.world_size
        with _bounded(self.watchdog, f"gather / barrier ({text[:40]})"):
            dist.all_gather_object(out, text)
        return [str(t) for t in out]
