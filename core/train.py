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

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalora import __version__
from dynalora.core.atomic import append_line, write_json, write_text
from dynalora.core.config import TrainConfig
from dynalora.core.controller import Collective, LocalCollective, RankController
from dynalora.core.choice import ChoiceScorer, encode_choices
from dynalora.core.data import MULTIPLE_CHOICE, Example, TaskData, TaskSpec, for_objective, load_task
from dynalora.core.errors import CheckpointError, ConfigError
from dynalora.core.inject import adapter_layers, inject_adapters
from dynalora.core.metrics import compute_metrics
from dynalora.core.models import load_task_model, load_tokenizer, resolve_model_path
from dynalora.core.outdir import (
    OutLock, check_out_path, check_replaceable, check_unlocked, final_path, is_empty_dir, staging_path,
    swap_into_place, write_marker,
)
from dynalora.core.resume import finished_info, resumed_config
from dynalora.core.run_io import load_latest_checkpoint, save_adapter, save_checkpoint


@dataclass
class TrainHooks:
    """Launcher seams. Every hook runs on every worker."""

    wrap_model: Callable[[nn.Module], nn.Module] | None = None  # e.g. DDP
    on_step: Callable[[int], None] | None = None  # after each optimizer step (fault injection, progress)
    on_checkpoint: Callable[[int, Path | None], None] | None = None  # after a checkpoint (path on rank 0)
    on_log: Callable[[dict[str, Any]], None] | None = None
    on_train_end: Callable[[], None] | None = None  # after the last collective of the run
    launch_id: str | None = None  # recorded in the run folder's marker: a restart of this launch resumes it


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, float]
    ranks: dict[str, int]
    steps: int
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)


# ---- preparation (validates everything before anything is written) --------------------------
def prepare_out_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """The folder this run writes, after every check (nothing is written here).

    A new run writes `--out` itself. `--overwrite` of an existing run builds the new run beside it
    (outdir.staging_path) and swaps it in when complete, so an interrupted overwrite leaves the
    previous run intact. Only rank 0 checks: the launchers validated on every rank before the
    process group existed, and rank 0 may be creating the folder while the others get here.
    """
    out = Path(cfg.out)
    if cfg.resume:
        if not (out / "config.yaml").is_file():
            raise CheckpointError(f"--resume: {out} is not a run folder (no config.yaml)")
        return out
    if not is_main:
        return out
    check_out_path(out)
    if out.exists() and not is_empty_dir(out):
        if not cfg.overwrite:
            raise ConfigError(f"output folder {out} exists; pass --overwrite to replace it or --resume to continue it")
        check_replaceable(out, "run")
        check_unlocked(out)
        return staging_path(out)
    check_unlocked(out)
    return out


def finished_result(out: Path) -> RunResult | None:
    """The result of a finished run (resume has nothing to do), else None."""
    info = finished_info(out)
    if info is None:
        return None
    return RunResult(out=final_path(out), metrics=info["metrics"], ranks=info["final_ranks"], steps=int(info["steps"]))


def load_data(cfg: TrainConfig) -> TaskData:
    eval_size: int | float | None = cfg.eval_size
    if eval_size is not None and eval_size >= 1:
        eval_size = int(eval_size)
    data = load_task(
        cfg.task,
        data_dir=cfg.data_dir,
        train_file=cfg.train_file,
        eval_file=cfg.eval_file,
        seed=cfg.seed,
        eval_size=eval_size,
        max_train=cfg.max_train,
        max_eval=cfg.max_eval,
    )
    return for_objective(data, cfg.objective)


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))


def resolve_device(name: str) -> torch.device:
    """'auto' -> this worker's CUDA device when one is present (LOCAL_RANK under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def build_model(
    cfg: TrainConfig, data: TaskData, steps: int, device: torch.device | None = None
) -> tuple[nn.Module, Any, RankController, str]:
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    model = load_task_model(model_path, data.spec.num_labels, data.spec.problem, seed=cfg.seed)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)  # adapter init is seeded independently of the model load
    dynamic = not cfg.dynamic.is_static
    layers, ctx = inject_adapters(
        model,
        targets=cfg.lora.target_modules,
        capacity=cfg.lora.resolved_max_rank(dynamic),
        rank=cfg.lora.rank,
        scaling=cfg.lora.alpha / cfg.lora.rank,
        dropout=cfg.lora.dropout,
    )
    if device is not None:
        model.to(device)  # before the controller: its statistics buffer lives on the layers' device
    controller = RankController(layers, ctx, cfg.lora, cfg.dynamic, steps, seed=cfg.seed)
    return model, tokenizer, controller, model_path


# ---- batching ---------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    rng = random.Random(seed * 7919 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    return order


def global_batch(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the examples of optimizer step `step` (0-based); epochs are reshuffled, seeded."""
    per_epoch = n // batch_size  # drop the ragged tail so every step has a full global batch
    if per_epoch == 0:
        raise ConfigError(f"--batch-size {batch_size} is larger than the training set ({n} examples)")
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[k * batch_size : (k + 1) * batch_size]


def encode(tokenizer: Any, examples: list[Example], max_length: int, problem: str) -> dict[str, torch.Tensor]:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    dtype = torch.float32 if problem == "regression" else torch.long
    enc["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
    return dict(enc)


def encode_batch(tokenizer: Any, spec: TaskSpec, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Model inputs + labels for any task: option rows for multiple choice (core/choice.py), else `encode`."""
    if spec.problem == MULTIPLE_CHOICE:
        return encode_choices(tokenizer, spec, examples, max_length)
    return encode(tokenizer, examples, max_length, spec.problem)


def task_module(model: nn.Module, spec: TaskSpec) -> nn.Module:
    """The module whose forward(**encode_batch(...)) gives .logits and .loss: the model, or its option scorer."""
    return ChoiceScorer(model) if spec.problem == MULTIPLE_CHOICE else model


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig, batch_size: int = 64) -> dict[str, float]:
    was_training = model.training
    model.eval()
    preds, labels = [], []
    forward = task_module(model, data.spec)
    if data.spec.problem == MULTIPLE_CHOICE:
        batch_size = max(1, batch_size // max(1, data.spec.num_choices))  # rows = examples x options
    for i in range(0, len(data.eval), batch_size):
        chunk = data.eval[i : i + batch_size]
        batch = encode_batch(tokenizer, data.spec, chunk, cfg.max_length)
        y = batch.pop("labels")
        device = next(model.parameters()).device
        logits = forward(**{k: v.to(device) for k, v in batch.items()}).logits.cpu()
        preds.append(logits.squeeze(-1) if data.spec.problem == "regression" else logits.argmax(-1))
        labels.append(y)
    model.train(was_training)
    p = torch.cat(preds).float().numpy()
    t = torch.cat(labels).float().numpy()
    if data.spec.problem != "regression":
        p, t = p.astype(np.int64), t.astype(np.int64)
    problem = "classification" if data.spec.problem == MULTIPLE_CHOICE else data.spec.problem  # metrics of the picked option
    return compute_metrics(problem, p, t, data.spec.num_labels)


# ---- state for checkpoints ----------------------------------------------------------------------
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


# ---- the loop -----------------------------------------------------------------------------------
def train(cfg: TrainConfig, collective: Collective | None = None, hooks: TrainHooks | None = None) -> RunResult:
    collective = collective or LocalCollective()
    hooks = hooks or TrainHooks()
    is_main = collective.rank == 0
    world = collective.world_size
    if cfg.resume:
        # the saved config defines the training; where and how it runs comes from the caller
        # (a moved run folder resumes where it is now, possibly under another launcher)
        cfg = resumed_config(cfg, getattr(cfg, "explicit_keys", None))
        done = finished_result(Path(cfg.out))
        if done is not None:
            if is_main:
                print(f"dynalora: {done.out} is finished ({done.steps} steps); nothing to resume", flush=True)
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

    params = [p for p in model.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * steps)) if cfg.warmup_ratio > 0 else 0

    def lr_lambda(s: int) -> float:
        if warm and s < warm:
            return (s + 1) / warm
        return max(0.0, (steps - s) / max(1, steps - warm))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    start = 0
    losses: list[float] = []
    if cfg.resume:
        found = load_latest_checkpoint(out)
        if found.path is None:
            why = f" ({found.skipped[0][1]})" if found.skipped else ""
            raise CheckpointError(
                f"--resume: {out} has no intact checkpoint to continue from{why}: start it again with --overwrite"
            )
        for path, reason in found.skipped if is_main else []:
            print(f"dynalora: checkpoint {path.name} is unreadable ({reason}); resuming from {found.path.name}",
                  file=sys.stderr, flush=True)
        tensors, meta = found.tensors, found.meta
        restore(model, optimizer, tensors, found.path)
        controller.load_state_dict({k[len("controller.") :]: v for k, v in tensors.items() if k.startswith("controller.")})
        if not is_main and controller.stats is not None:
            controller.stats.zero_()  # rank 0 restored the consolidated window statistics (see below)
        scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr  # the optimizer only sees the schedule's lr after the next step() otherwise
        torch.set_rng_state(tensors["rng.torch"])
        start = int(meta["step"])
        losses = list(meta.get("losses", []))
        if is_main:  # drop log lines written after the checkpoint: they will be written again
            for log in ("allocation.jsonl", "metrics.jsonl"):
                truncate_log(out / log, start)

    if is_main and not cfg.resume:
        if out.exists():  # a stale staging folder of an interrupted --overwrite (we hold the run's lock)
            shutil.rmtree(out)
        out.mkdir(parents=True)
        replaces = {"replaces": Path(cfg.out).name} if out != Path(cfg.out) else {}
        write_marker(out, "run", launch=hooks.launch_id, **replaces)
        write_text(out / "config.yaml", cfg.to_yaml())
        append_line(out / "allocation.jsonl", json.dumps({"step": 0, "ranks": controller.ranks(), "world_size": world, "worker_digests": collective.gather(controller.digest())}))
    elif not cfg.resume:
        collective.gather(controller.digest())

    forward_module = task_module(model, data.spec)
    train_model = hooks.wrap_model(forward_module) if hooks.wrap_model else forward_module
    train_model.train()
    bar = None
    if is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
    step_times: list[float] = []
    metrics: dict[str, float] = {}
    for step in range(start, steps):
        t0 = time.perf_counter()
        idx = global_batch(len(data.train), cfg.batch_size, cfg.seed, step)
        mine = idx[collective.rank * micro * cfg.grad_accum : (collective.rank + 1) * micro * cfg.grad_accum]
        step_loss = 0.0
        for m in range(cfg.grad_accum):
            batch = encode_batch(tokenizer, data.spec, [data.train[i] for i in mine[m * micro : (m + 1) * micro]], cfg.max_length)
            sync = m == cfg.grad_accum - 1
            ctx = train_model.no_sync() if (not sync and hasattr(train_model, "no_sync")) else _nullcontext()
            with ctx:
                loss = train_model(**{k: v.to(device) for k, v in batch.items()}).loss / cfg.grad_accum
                loss.backward()
            step_loss += float(loss.detach())
        controller.after_backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        event = controller.step_end(step + 1, optimizer, collective)
        step_times.append(time.perf_counter() - t0)
        losses.append(step_loss)
        if event is not None and is_main:
            append_line(out / "allocation.jsonl", json.dumps({k: event[k] for k in ("step", "ranks", "world_size", "worker_digests", "scores", "budget")}))
        done = step + 1
        record: dict[str, Any] | None = None
        if done % cfg.log_every == 0 or done == steps:
            record = {"step": done, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "budget": sum(controller.ranks().values()), "step_s": step_times[-1]}
        if cfg.eval_every and done % cfg.eval_every == 0 and done != steps and is_main:
            record = {**(record or {"step": done}), "eval": evaluate(model, tokenizer, data, cfg)}
        if record is not None and is_main:
            append_line(out / "metrics.jsonl", json.dumps(record))
            if hooks.on_log:
                hooks.on_log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{step_loss:.4f}", budget=sum(controller.ranks().values()))
            bar.update(1)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != steps:
            path = None
            # consolidate the statistics window on rank 0 (sum of all workers, others zero) so the
            # checkpoint holds the global window: a resume with any world size continues it exactly
            controller.consolidate_statistics(collective)
            if is_main:
                tensors = trainable_state(model) | optimizer_tensors(optimizer, names)
                tensors |= {f"controller.{k}": v for k, v in controller.state_dict().items()}
                tensors["rng.torch"] = torch.get_rng_state()
                path = save_checkpoint(out, done, tensors, {"scheduler": scheduler.state_dict(), "losses": losses})
            collective.gather(str(done))  # barrier: the checkpoint exists before anyone moves on
            if hooks.on_checkpoint:
                hooks.on_checkpoint(done, path)
        if hooks.on_step:
            hooks.on_step(done)
    if bar is not None:
        bar.close()

    if is_main:
        metrics = evaluate(model, tokenizer, data, cfg)
        append_line(out / "metrics.jsonl", json.dumps({"step": steps, "eval": metrics, "final": True}))
        finish_run(out, cfg, data, model, tokenizer, controller, model_path, metrics, steps, world)
        final = final_path(out)
        if final != out:
            swap_into_place(out, final)  # the --overwrite is complete: only now is the old run replaced
    collective.gather("done")
    if hooks.on_train_end:
        hooks.on_train_end()
    return RunResult(out=final_path(out) if is_main else Path(cfg.out), metrics=metrics, ranks=controller.ranks(), steps=steps, losses=losses, step_times=step_times)


def truncate_log(path: Path, step: int) -> None:
    """Keep only the log lines at or before `step` (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [l for l in lines if l.strip() and int(json.loads(l).get("step", 0)) <= step]
    if len(keep) != len(lines):
        write_text(path, "".join(l + "\n" for l in keep))


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def finish_run(
    out: Path, cfg: TrainConfig, data: TaskData, model: nn.Module, tokenizer: Any, controller: RankController,
    model_path: str, metrics: dict[str, float], steps: int, world: int,
) -> None:
    extra = {
        "input_adaptive": cfg.dynamic.input_adaptive,
        "example_gamma": cfg.dynamic.example_gamma,
        "example_min_frac": cfg.dynamic.example_min_frac,
        "reallocate": cfg.dynamic.reallocate,
        "problem": data.spec.problem,
    }
    save_adapter(model, out / "adapter", base_model=model_path, extra=extra)
    tok_tmp = out / ".tokenizer.tmp"
    shutil.rmtree(tok_tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tok_tmp))
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    os.replace(tok_tmp, out / "tokenizer")
    spec = data.spec
    write_json(
        out / "run.json",
        {
            "dynalora_version": __version__,
            "base_model": model_path,
            "model_type": getattr(model.config, "model_type", ""),
            "task": {"name": spec.name, "problem": spec.problem, "label_names": list(spec.label_names), "num_labels": spec.num_labels, "has_pair": spec.has_pair,
                     **({"prompt": list(spec.prompt)} if spec.problem == MULTIPLE_CHOICE else {})},
            "data": data.source,
            "n_train": len(data.train),
            "n_eval": len(data.eval),
            "steps": steps,
            "world_size": world,
            "final_ranks": controller.ranks(),
            "metrics": metrics,
            "torch": torch.__version__,
        },
    )
    try:
        from dynalora.core.plots import allocation_heatmap

        allocation_heatmap(out / "allocation.jsonl", out / "allocation.png")
    except ImportError:  # matplotlib missing: the run is still complete
        pass
