"""Allocation and scoring are pure functions: budget conserved, bounds respected, deterministic."""

from __future__ import annotations

import random

import pytest
import torch

from dynalora.core.allocation import allocate_ranks, check_budget, continuous_targets, largest_average_rank, plan_layer
from dynalora.errors import ConfigError
from dynalora.core.importance import mix_scores, participation_ratio


@pytest.mark.parametrize("seed", range(30))
def test_budget_bounds_and_determinism(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 20)
    lo = rng.randint(0, 3)
    hi = rng.randint(max(lo, 1), 16)
    total = rng.randint(n * lo, n * hi)
    scores = [rng.random() ** 3 for _ in range(n)]
    r = allocate_ranks(scores, total, lo, hi)
    assert sum(r) == total
    assert all(lo <= x <= hi for x in r)
    assert allocate_ranks(list(scores), total, lo, hi) == r


def test_proportional_when_unconstrained() -> None:
    assert allocate_ranks([1, 1, 2], 8, 0, 8) == [2, 2, 4]
    assert allocate_ranks([3, 1], 8, 1, 16) == [6, 2]


def test_water_filling_respects_cap() -> None:
    # the dominant layer is capped; the rest shares what is left proportionally
    assert allocate_ranks([100, 1, 1], 12, 1, 6) == [6, 3, 3]
    t = continuous_targets([100, 1, 1], 12, 1, 6)
    assert t == pytest.approx([6, 3, 3])


def test_ties_break_by_lower_index() -> None:
    assert allocate_ranks([1, 1, 1], 4, 0, 4) == [2, 1, 1]
    assert allocate_ranks([0, 0, 0], 5, 1, 4) == [2, 2, 1]


def test_impossible_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="impossible budget"):
        allocate_ranks([1, 1], 20, 1, 8)
    with pytest.raises(ConfigError, match="impossible budget"):
        allocate_ranks([1, 1], 1, 1, 8)


def test_plan_prunes_lowest_scores_and_grows_free_slots() -> None:
    kept = [True, True, True, False, False, False]
    gate = [1.0, 1.0, 1.0, 0.0, 0.4, 0.0]
    scores = [0.5, 0.1, 0.9, 0, 0, 0]
    assert plan_layer(kept, gate, scores, 1).prune == (0, 1)
    grow = plan_layer(kept, gate, scores, 5)
    assert grow.revive == (4,)  # a fading component is revived before a free slot is used
    assert grow.grow == (3,)
    assert plan_layer(kept, gate, scores, 3) == plan_layer(kept, gate, scores, 3)


def test_participation_ratio_matches_the_spectrum() -> None:
    """The sketched, de-biased estimate tracks (sum l)^2 / sum l^2 of the true covariance."""
    torch.manual_seed(0)
    d, k, n = 96, 64, 20000
    for spectrum in (torch.ones(d), 0.7 ** torch.arange(d, dtype=torch.float32)):
        true_pr = float(spectrum.sum() ** 2 / (spectrum**2).sum())
        x = torch.randn(n, d) * spectrum.sqrt()
        p = torch.randn(d, k) / k**0.5
        z = x @ p
        est = participation_ratio(n, z.sum(0).double(), (z.T @ z).double(), d)
        assert est == pytest.approx(true_pr, rel=0.35), (true_pr, est)


def test_mix_scores_is_convex_combination_of_shares() -> None:
    assert mix_scores([1, 3], [1, 1], 0.0) == pytest.approx([0.25, 0.75])
    assert mix_scores([1, 3], [1, 1], 1.0) == pytest.approx([0.5, 0.5])
    assert mix_scores([1, 3], [3, 1], 0.5) == pytest.approx([0.5, 0.5])
    assert sum(mix_scores([0.2, float("nan"), 5], [1, 2, 3], 0.3)) == pytest.approx(1.0)


def test_current_ranks_break_near_ties() -> None:
    # targets 2.5 / 2.5: without history the lower index wins; with history the current holder keeps it
    assert allocate_ranks([1, 1], 5, 0, 5) == [3, 2]
    assert allocate_ranks([1, 1], 5, 0, 5, current=[2, 3]) == [2, 3]
    # a real move is not blocked: a clear score change still moves rank
    assert allocate_ranks([1, 3], 8, 0, 8, current=[4, 4]) == [2, 6]


@pytest.mark.parametrize("seed", range(20))
def test_per_layer_caps_are_respected(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    lo, hi = rng.randint(0, 2), rng.randint(3, 16)
    caps = [rng.randint(1, 20) for _ in range(n)]
    bounds = [min(hi, c) for c in caps]
    total = rng.randint(sum(min(lo, b) for b in bounds), sum(bounds))
    scores = [rng.random() ** 3 for _ in range(n)]
    r = allocate_ranks(scores, total, lo, hi, caps=caps)
    assert sum(r) == total
    assert all(min(lo, b) <= x <= b for x, b in zip(r, bounds, strict=True))
    assert allocate_ranks(scores, total, lo, hi, caps=caps) == r


def test_capped_layer_gives_its_share_to_the_others() -> None:
    # layer 0 would get 8 of 12 but is 4 wide: it keeps 4, the others share the rest in proportion
    assert allocate_ranks([2, 1, 1], 12, 1, 16, caps=[4, 32, 32]) == [4, 4, 4]
    assert continuous_targets([2, 1, 1], 12, 1, [4, 16, 16]) == pytest.approx([4, 4, 4])
    # a layer narrower than min_rank is bounded by its width on both sides
    assert allocate_ranks([1, 1], 6, 2, 8, caps=[1, 8]) == [1, 5]


def test_budget_beyond_the_caps_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="capped by layer width to 36 in all"):
        check_budget(2, 40, 1, 40, caps=[4, 32])
    with pytest.raises(ConfigError, match="impossible budget"):
        allocate_ranks([1, 1], 40, 1, 40, caps=[4, 32])


def test_largest_average_rank() -> None:
    assert largest_average_rank([32] * 4, lambda r: 2 * r) == 32
    assert largest_average_rank([6, 32], lambda r: 2 * r) == 19  # 19 x 2 = 38 = 6 + 32
    assert largest_average_rank([6, 32], lambda r: r) == 6  # static: every layer holds exactly r
    assert largest_average_rank([32, 32], lambda r: 8) == 8  # a fixed --max-rank 8
    assert largest_average_rank([], lambda r: r) == 0


def test_initial_ranks_keep_the_budget_under_caps() -> None:
    from dynalora.core.inject import initial_ranks

    assert initial_ranks(8, [32, 32, 32]) == [8, 8, 8]
    assert initial_ranks(8, [6, 16]) == [6, 10]
    assert initial_ranks(8, [4, 4]) == [4, 4]  # cannot hold 16: capped, and the controller refuses it
