"""The training loop: one function for a single process, torchrun workers and Ray workers.

    dynalora train --model minilm --task rotten_tomatoes --out runs/rt        # single process
    torchrun --standalone --nproc_per_node=2 -m dynalora train ... --backend torchrun
    dynalora train --backend ray --workers 2 ...                               # Ray Train

`train(cfg, collective, hooks)` never imports torch.distributed: the launcher in
`dynalora.distributed` passes a `Collective` (all-reduce of the statistics buffer, gather of
allocation digests) and, through `hooks.wrap_model`, the DDP wrapper. Data is sharded by rank:
each optimizer step consumes one global batch of `batch_size` examples, split into
`world_size x grad_accum` equal micro-batches, so any launcher sees the same global batches.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora.atomic import append_line
from dynalora.core.batches import encode_batch, global_batch, load_data, total_steps
from dynalora.core.build import build_model, build_optimizer, resolve_device
from dynalora.core.checkpoint import checkpoint_tensors, resume_from, save_checkpoint
from dynalora.core.config import TrainConfig
from dynalora.core.controller import Collective, LocalCollective
from dynalora.errors import ConfigError
from dynalora.core.evaluate import evaluate, task_module
from dynalora.core.outdir import OutLock, final_path, swap_into_place
from dynalora.core.resume import finished_run, plan_attempt
from dynalora.core.run_folder import (
    RunResult, create_run_folder, finish_run, prepare_out_dir, truncate_logs,
)

# Helpers that lived here before the split; importable from here for one release.
from dynalora.core.batches import encode, epoch_order  # noqa: E402,F401
from dynalora.core.checkpoint import optimizer_tensors, restore, trainable_state  # noqa: E402,F401
from dynalora.core.run_folder import truncate_log  # noqa: E402,F401


@dataclass
class TrainHooks:
    """Launcher seams. Every hook runs on every worker."""

    wrap_model: Callable[[nn.Module], nn.Module] | None = None  # e.g. DDP
    on_step: Callable[[int], None] | None = None  # after each optimizer step (fault injection, progress)
    on_checkpoint: Callable[[int, Path | None], None] | None = None  # after a checkpoint (path on rank 0)
    on_log: Callable[[dict[str, Any]], None] | None = None
    on_train_end: Callable[[], None] | None = None  # after the last collective of the run
    launch_id: str | None = None  # recorded in the run folder's marker: a restart of this launch resumes it


def train(cfg: TrainConfig, collective: Collective | None = None, hooks: TrainHooks | None = None) -> RunResult:
    collective = collective or LocalCollective()
    hooks = hooks or TrainHooks()
    is_main = collective.rank == 0
    world = collective.world_size
    # --resume: the saved config defines the training; where and how it runs comes from the caller
    # (a moved run folder resumes where it is now, possibly under another launcher). The launchers
    # have planned the attempt already (the same idempotent call); this covers library callers.
    cfg = plan_attempt(cfg, hooks.launch_id, restarted=False)
    done = finished_run(cfg, announce=is_main)
    if done is not None:
        return done
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    micro = cfg.batch_size // (world * cfg.grad_accum)
    if micro * world * cfg.grad_accum != cfg.batch_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} must be divisible by workers x grad-accum = {world * cfg.grad_accum}"
        )
    work = prepare_out_dir(cfg, is_main)
    lock = OutLock(final_path(work) if cfg.resume else Path(cfg.out)) if is_main else None
    if lock is not None:
        lock.acquire()  # one writer per run folder for the whole run; the kernel releases it if we die
    try:
        return _train(cfg, work, collective, hooks)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, out: Path, collective: Collective, hooks: TrainHooks) -> RunResult:
    """The loop proper, writing to `out` (the run folder, or the staging folder of an --overwrite)."""
    is_main = collective.rank == 0
    world = collective.world_size
    micro = cfg.batch_size // (world * cfg.grad_accum)
    data = load_data(cfg)
    steps = total_steps(cfg, len(data.train))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, tokenizer, controller, model_path = build_model(cfg, data, steps, device)
    global_batch(len(data.train), cfg.batch_size, cfg.seed, 0)  # validates batch size vs data
    optimizer, scheduler, names = build_optimizer(model, cfg, steps)

    start, losses = 0, []
    if cfg.resume:
        start, losses = resume_from(out, model, optimizer, scheduler, controller, is_main=is_main)
        if is_main:  # drop log lines written after the checkpoint: they will be written again
            truncate_logs(out, start)
    else:
        if is_main:
            create_run_folder(out, cfg, hooks.launch_id)
        digests = collective.gather(controller.digest())
        if is_main:
            _log(out / "allocation.jsonl", {"step": 0, "ranks": controller.ranks(), "world_size": world, "worker_digests": digests})

    forward_module = task_module(model, data.spec)
    train_model = hooks.wrap_model(forward_module) if hooks.wrap_model else forward_module
    train_model.train()
    bar = _progress_bar(steps, start) if is_main and cfg.progress else None
    step_times: list[float] = []
    for step in range(start, steps):
        t0 = time.perf_counter()
        idx = global_batch(len(data.train), cfg.batch_size, cfg.seed, step)
        mine = [data.train[i] for i in idx[collective.rank * micro * cfg.grad_accum : (collective.rank + 1) * micro * cfg.grad_accum]]
        step_loss = _forward_backward(train_model, tokenizer, data.spec, mine, micro, cfg, device)
        controller.after_backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        event = controller.step_end(step + 1, optimizer, collective)
        step_times.append(time.perf_counter() - t0)
        losses.append(step_loss)
        done = step + 1
        if is_main:
            if event is not None:
                _log(out / "allocation.jsonl", {k: event[k] for k in ("step", "ranks", "world_size", "worker_digests", "scores", "budget")})
            _log_step(out, cfg, hooks, done, steps, step_loss, scheduler, controller, step_times[-1], lambda: evaluate(model, tokenizer, data, cfg))
        if bar is not None:
            bar.set_postfix(loss=f"{step_loss:.4f}", budget=sum(controller.ranks().values()))
            bar.update(1)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != steps:
            # consolidate the statistics window on rank 0 (sum of all workers, others zero) so the
            # checkpoint holds the global window: a resume with any world size continues it exactly
            controller.consolidate_statistics(collective)
            path = None
            if is_main:
                tensors = checkpoint_tensors(model, optimizer, names, controller)
                path = save_checkpoint(out, done, tensors, {"scheduler": scheduler.state_dict(), "losses": losses})
            collective.gather(str(done))  # barrier: the checkpoint exists before anyone moves on
            if hooks.on_checkpoint:
                hooks.on_checkpoint(done, path)
        if hooks.on_step:
            hooks.on_step(done)
    if bar is not None:
        bar.close()

    metrics: dict[str, float] = {}
    if is_main:
        metrics = evaluate(model, tokenizer, data, cfg)
        _log(out / "metrics.jsonl", {"step": steps, "eval": metrics, "final": True})
        finish_run(out, cfg, data, model, tokenizer, controller, model_path, metrics, steps, world)
        if final_path(out) != out:
            swap_into_place(out, final_path(out))  # the --overwrite is complete: only now is the old run replaced
    collective.gather("done")
    if hooks.on_train_end:
        hooks.on_train_end()
    return RunResult(out=final_path(out) if is_main else Path(cfg.out), metrics=metrics, ranks=controller.ranks(), steps=steps, losses=losses, step_times=step_times)


def _forward_backward(model: nn.Module, tokenizer: Any, spec: Any, examples: list[Any], micro: int, cfg: TrainConfig,
                      device: torch.device) -> float:
    """This worker's share of one global batch, in `grad_accum` micro-batches; returns the summed loss.

    Under DDP the gradient all-reduce runs once, on the last micro-batch (no_sync on the others).
    """
    step_loss = 0.0
    for m in range(cfg.grad_accum):
        batch = encode_batch(tokenizer, spec, examples[m * micro : (m + 1) * micro], cfg.max_length)
        sync = m == cfg.grad_accum - 1
        ctx = model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
        with ctx:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss / cfg.grad_accum
            loss.backward()
        step_loss += float(loss.detach())
    return step_loss


def _log(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record))


def _log_step(
    out: Path, cfg: TrainConfig, hooks: TrainHooks, done: int, steps: int, loss: float, scheduler: Any,
    controller: Any, step_s: float, evaluate_now: Callable[[], dict[str, float]],
) -> None:
    """Rank 0: a metrics.jsonl line every log_every steps (and an evaluation every eval_every)."""
    record: dict[str, Any] | None = None
    if done % cfg.log_every == 0 or done == steps:
        record = {"step": done, "loss": loss, "lr": scheduler.get_last_lr()[0], "budget": sum(controller.ranks().values()), "step_s": step_s}
    if cfg.eval_every and done % cfg.eval_every == 0 and done != steps:
        record = {**(record or {"step": done}), "eval": evaluate_now()}
    if record is not None:
        _log(out / "metrics.jsonl", record)
        if hooks.on_log:
            hooks.on_log(record)


def _progress_bar(steps: int, start: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
