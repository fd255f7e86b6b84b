"""Evaluation of a model on a task's held-out split, with the task's metrics.

    metrics = evaluate(model, tokenizer, data, cfg)      # {"accuracy": ..., "f1": ...} / {"pearson": ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dynalora.core.batches import encode_batch
from dynalora.core.choice import ChoiceScorer
from dynalora.core.config import TrainConfig
from dynalora.core.data import MULTIPLE_CHOICE, TaskData, TaskSpec
from dynalora.core.metrics import compute_metrics


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
