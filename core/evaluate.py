"""Evaluation of a model on a task's held-out split, with the task's metrics.

    metrics = evaluate(model, tokenizer, data, cfg)      # {"accuracy": ..., "f1": ...} / {"pearson": ...}
                                                         # generation: {"exact_match", "rougeL", "bleu", "n"}

Generation tasks are decoded greedily (core/generate.py, `cfg.max_new_tokens`, `cfg.stop`) and scored
against each example's references (core/gen_metrics.py). `evaluate_generation` takes any causal LM: a base
model without adapters, a run's model, or (with `before`) a fusion.
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
from dynalora.core.task import GENERATION
from dynalora.core.metrics import compute_metrics


def task_module(model: nn.Module, spec: TaskSpec) -> nn.Module:
    """The module whose forward(**encode_batch(...)) gives .loss (and .logits): the model, its option scorer,
    or its response-token loss (generation)."""
    if spec.problem == GENERATION:
        from dynalora.core.generate import GenerationLoss

        return GenerationLoss(model)
    return ChoiceScorer(model) if spec.problem == MULTIPLE_CHOICE else model


@torch.no_grad()
def evaluate_generation(model: nn.Module, tokenizer: Any, data: TaskData, max_new_tokens: int,
                        stop: list[str] | None = None, batch_size: int = 16, before: Any = None,
                        return_texts: bool = False) -> dict[str, Any]:
    """Greedy answers to the evaluation prompts, scored: exact_match, rougeL, bleu, n (+ "texts" if asked)."""
    from dynalora.core.gen_metrics import generation_metrics
    from dynalora.core.generate import generate_texts

    texts = generate_texts(model, tokenizer, data.spec, data.eval, max_new_tokens, stop, batch_size, before)
    metrics: dict[str, Any] = generation_metrics(texts, [e.targets for e in data.eval])
    if return_texts:
        metrics["texts"] = texts
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig, batch_size: int = 64) -> dict[str, float]:
    if data.spec.problem == GENERATION:
        return evaluate_generation(model, tokenizer, data, cfg.max_new_tokens, cfg.stop)
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
