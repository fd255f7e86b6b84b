"""Tests for dynalora.core.metrics against scikit-learn and scipy on random data.

Run: .venv/bin/python -m pytest tests/core/test_metrics.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynalora.core.metrics import compute_metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("num_labels", [2, 3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(num_labels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, size=200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_labels, size=200))
    got = compute_metrics("classification", preds, labels, num_labels)
    average = "binary" if num_labels == 2 else "macro"
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
    assert got["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, preds, average=average))
    assert got["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, preds))
    assert all(isinstance(v, float) for v in got.values())


def test_classification_accepts_logits() -> None:
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]])
    assert compute_metrics("classification", logits, [1, 0, 0], 2)["accuracy"] == pytest.approx(2 / 3)


def test_degenerate_classification() -> None:
    got = compute_metrics("classification", [0, 0, 0], [0, 1, 1], 2)
    assert got["f1"] == 0.0 and got["mcc"] == 0.0
    got = compute_metrics("classification", [2, 2], [2, 2], 3)  # a class absent from both sides is ignored
    assert got["f1"] == pytest.approx(sklearn_metrics.f1_score([2, 2], [2, 2], average="macro"))


@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, size=300), 1)  # rounding makes ties
    preds = np.round(labels + rng.normal(0, 1.0, size=300), 0)
    got = compute_metrics("regression", preds.reshape(-1, 1), labels, 1)
    assert got["pearson"] == pytest.approx(scipy_stats.pearsonr(preds, labels)[0])
    assert got["spearman"] == pytest.approx(scipy_stats.spearmanr(preds, labels)[0])
    assert got["mse"] == pytest.approx(sklearn_metrics.mean_squared_error(labels, preds))


def test_constant_regression_predictions_give_nan_correlation() -> None:
    got = compute_metrics("regression", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0], 1)
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])
    assert got["mse"] == pytest.approx(2 / 3)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        compute_metrics("classification", [0, 1], [0], 2)
    with pytest.raises(ValueError, match="zero examples"):
        compute_metrics("regression", [], [], 1)
    with pytest.raises(ValueError, match="problem"):
        compute_metrics("ranking", [0], [0], 2)
