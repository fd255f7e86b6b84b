"""What the loop feeds the model: a config's data, its length in steps, and its seeded global batches.

    data = load_data(cfg)                                  # TaskData for cfg.task / files, objective applied
    steps = total_steps(cfg, len(data.train))
    idx = global_batch(len(data.train), cfg.batch_size, cfg.seed, step)   # the same on every worker
    batch = encode_batch(tokenizer, data.spec, [data.train[i] for i in idx], cfg.max_length)

Each optimizer step consumes one global batch of `batch_size` examples, whatever the number of
workers: the loop splits it into `world_size x grad_accum` micro-batches, so any launcher sees the
same batches in the same order.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from dynalora.core.choice import encode_choices
from dynalora.core.config import TrainConfig
from dynalora.core.data import MULTIPLE_CHOICE, Example, TaskData, TaskSpec, for_objective, load_task
from dynalora.core.task import GENERATION
from dynalora.errors import ConfigError


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
    """Model inputs + labels for any task: option rows for multiple choice (core/choice.py), prompt + response
    rows for generation (core/generate.py), else `encode`."""
    if spec.problem == GENERATION:
        from dynalora.core.generate import encode_generation

        return encode_generation(tokenizer, spec, examples, max_length)
    if spec.problem == MULTIPLE_CHOICE:
        return encode_choices(tokenizer, spec, examples, max_length)
    return encode(tokenizer, examples, max_length, spec.problem)
