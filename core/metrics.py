"""Evaluation metrics in plain numpy (no scikit-learn at run time).

Classification: accuracy, f1 (F1 of class 1 for binary tasks, macro F1 otherwise) and mcc
(Matthews correlation, multiclass form of Gorodkin 2004). Regression: pearson, spearman (ranks with
ties averaged) and mse. Definitions match scikit-learn / scipy; tests/core/test_metrics.py checks that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compute_metrics(
    problem: str,
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    num_labels: int,
) -> dict[str, float]:
    """Metrics for `predictions` (class ids or logits (N, K); values for regression) against `labels`."""
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if problem == "classification":
        if preds.ndim == 2:  # logits (N, K)
            preds = preds.argmax(axis=-1)
        return _classification(preds.astype(np.int64), gold.astype(np.int64), num_labels)
    if problem == "regression":
        preds = preds.reshape(len(preds), -1)[:, 0] if preds.ndim == 2 else preds
        return _regression(preds.astype(np.float64), gold.astype(np.float64))
    raise ValueError(f"problem must be 'classification' or 'regression', got {problem!r}")


def _check(preds: np.ndarray, gold: np.ndarray) -> None:
    if preds.shape != gold.shape or preds.ndim != 1:
        raise ValueError(f"predictions {preds.shape} and labels {gold.shape} must be 1-D and the same length")
    if len(gold) == 0:
        raise ValueError("cannot compute metrics on zero examples")


def _classification(preds: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, float]:
    _check(preds, gold)
    k = max(num_labels, int(preds.max()) + 1, int(gold.max()) + 1)
    confusion = np.zeros((k, k), dtype=np.float64)  # rows: true class, columns: predicted class
    np.add.at(confusion, (gold, preds), 1.0)
    tp = np.diag(confusion)
    true_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_per_class = np.where(true_count + pred_count > 0, 2 * tp / (true_count + pred_count), 0.0)
    if num_labels == 2:
        f1 = float(f1_per_class[1])
    else:  # macro over the classes present in labels or predictions (scikit-learn's default)
        present = (true_count + pred_count) > 0
        f1 = float(f1_per_class[present].mean())
    n = float(len(gold))
    correct = float(tp.sum())
    cov_true_pred = correct * n - float(true_count @ pred_count)
    denom = (n * n - float(pred_count @ pred_count)) * (n * n - float(true_count @ true_count))
    mcc = cov_true_pred / float(np.sqrt(denom)) if denom > 0 else 0.0
    return {"accuracy": correct / n, "f1": f1, "mcc": mcc}


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and run lengths.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    lengths = np.diff(np.r_[starts, len(values)])
    average = starts + (lengths + 1) / 2.0  # mean of ranks starts+1 .. starts+length
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, lengths)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (as scipy)."""
    dx, dy = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((dx @ dx) * (dy @ dy)))
    return float(dx @ dy) / denom if denom > 0 else float("nan")


def _regression(preds: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    _check(preds, gold)
    return {
        "pearson": _pearson(preds, gold),
        "spearman": _pearson(_rank(preds), _rank(gold)),
        "mse": float(np.mean((preds - gold) ** 2)),
    }
