"""Importance scores: pure functions from (all-reduced) window statistics to layer scores.

Two signals, both measured on the live training run:

1. **Sensitivity** (AdaLoRA's first-order saliency, per rank component):
       c_{l,i} = E_steps[ sum_j |A_ij dL/dA_ij| + sum_o |B_oi dL/dB_oi| ]
   the first-order estimate of the loss change if component i of layer l were removed. A layer's
   sensitivity is its *density*, the mean over its kept components, i.e. the value of one rank
   unit there (a sum would reward layers for already holding rank).

2. **Input complexity** (EVA's explained-variance view, in one number): the participation ratio
       PR_l = tr(C)^2 / ||C||_F^2 = (sum_j lambda_j)^2 / sum_j lambda_j^2
   of the covariance C of the layer's inputs: ~1 if one direction explains the variance, ~d if d
   directions share it evenly. It is computed on a Gaussian sketch S = P^T C P (P: in x k,
   N(0, 1/k)); E||S||_F^2 = (1 + 1/k) tr(C^2) + tr(C)^2 / k gives the de-biased estimate
       PR = (1 + 1/k) / (1/PR_S - 1/k).

Layer score (shares sum to 1):
       score_l = (1 - beta) * sens_l / sum sens + beta * PR_l / sum PR      (beta = input_weight)
Both signals are smoothed across reallocations with an EMA.
"""

from __future__ import annotations

import torch


def component_sensitivity(sens_sum: torch.Tensor, steps: float) -> torch.Tensor:
    """Mean per-step saliency of each component slot, (R,)."""
    return sens_sum / max(float(steps), 1.0)


def participation_ratio(n: float, s1: torch.Tensor, s2: torch.Tensor, in_features: int) -> float:
    """De-biased participation ratio of the input covariance from sketched sums.

    n: observed tokens; s1: sum of z (k,); s2: sum of z z^T (k, k), with z = x P.
    """
    if n < 2:
        return float("nan")
    k = s1.shape[0]
    mu = s1.double() / n
    cov = s2.double() / n - torch.outer(mu, mu)
    tr = float(torch.trace(cov))
    fro2 = float((cov * cov).sum())
    if tr <= 0 or fro2 <= 0:
        return 1.0
    pr_sketch = tr * tr / fro2
    inv = 1.0 / pr_sketch - 1.0 / k
    pr = (1.0 + 1.0 / k) / inv if inv > 0 else float(in_features)
    return float(min(max(pr, 1.0), float(in_features)))


def layer_density(component_scores: torch.Tensor, kept: torch.Tensor) -> float:
    k = int(kept.sum())
    if k == 0:
        return 0.0
    return float(component_scores[kept].sum()) / k


def mix_scores(sensitivity: list[float], complexity: list[float], input_weight: float) -> list[float]:
    """Convex combination of the two signals' shares (each normalised to sum to 1)."""

    def shares(v: list[float]) -> list[float]:
        v = [x if x == x and x > 0 else 0.0 for x in v]  # NaN/neg -> 0
        tot = sum(v)
        return [x / tot for x in v] if tot > 0 else [1.0 / len(v)] * len(v)

    s, c = shares(sensitivity), shares(complexity)
    return [(1.0 - input_weight) * a + input_weight * b for a, b in zip(s, c, strict=True)]


def ema(old: float | torch.Tensor, new: float | torch.Tensor, decay: float, first: bool):  # noqa: ANN201
    """Exponential moving average; the first observation is taken as is."""
    return new if first else decay * old + (1.0 - decay) * new
