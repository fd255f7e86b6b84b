"""Rank allocation: pure, deterministic functions from layer scores to integer ranks.

`allocate_ranks` solves

    r = argmin ||r - lambda * s||  subject to  sum(r) = total,  min_rank <= r_l <= min(max_rank, cap_l)

where cap_l is layer l's width min(in_features, out_features) (a rank beyond it adds nothing), i.e.
ranks proportional to the scores `s`, water-filled against the bounds, then rounded by
largest remainder. Ties are broken by the higher score, then by the lower layer index, so the
result depends only on the inputs: every worker that holds the same (all-reduced) scores makes
the same allocation.

`plan_layer` turns one layer's new target rank into which components to keep, prune, revive or
grow, again deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dynalora.errors import ConfigError


def layer_bounds(n_layers: int, min_rank: int, max_rank: int, caps: Sequence[int] | None = None
                 ) -> tuple[list[int], list[int]]:
    """Per-layer (lower, upper) rank bounds: upper = min(max_rank, cap_l), lower = min(min_rank, upper).

    `caps` are per-layer limits (a layer's width, min(in_features, out_features), or its capacity):
    a layer narrower than `min_rank` is bounded by its width on both sides.
    """
    if caps is not None and len(caps) != n_layers:
        raise ValueError(f"{len(caps)} caps for {n_layers} layers")
    hi = [min(max_rank, int(c)) for c in caps] if caps is not None else [max_rank] * n_layers
    lo = [min(min_rank, h) for h in hi]
    return lo, hi


def check_budget(n_layers: int, total: int, min_rank: int, max_rank: int, caps: Sequence[int] | None = None) -> None:
    if n_layers < 1:
        raise ConfigError("no adapted layers: nothing to allocate rank to")
    if min_rank > max_rank:
        raise ConfigError(f"impossible budget: min rank {min_rank} > max rank {max_rank}")
    lo, hi = layer_bounds(n_layers, min_rank, max_rank, caps)
    if not sum(lo) <= total <= sum(hi):
        capped = caps is not None and sum(hi) < n_layers * max_rank
        bounds = (f"per-layer bounds [{min_rank}, {max_rank}], capped by layer width to {sum(hi)} in all"
                  if capped else f"per-layer bounds [{min_rank}, {max_rank}]")
        raise ConfigError(
            f"impossible budget: {total} ranks over {n_layers} layers with {bounds} "
            f"(need {sum(lo)}..{sum(hi)}); change --rank, --min-rank or --max-rank"
        )


def largest_average_rank(widths: Sequence[int], max_rank_for: Callable[[int], int]) -> int:
    """The largest average rank r whose budget r x L fits under the per-layer caps min(max_rank_for(r), width_l).

    `max_rank_for(r)` is the per-layer maximum that average rank r implies (e.g. 2 r by default, or a
    fixed --max-rank). 0 when not even rank 1 fits.
    """
    n = len(widths)
    for r in range(max(widths, default=0), 0, -1):
        hi = max_rank_for(r)
        if r <= hi and r * n <= sum(min(hi, w) for w in widths):
            return r
    return 0


def continuous_targets(scores: Sequence[float], total: float, lo: float | Sequence[float],
                       hi: float | Sequence[float]) -> list[float]:
    """Water-filling: t_l = clip(lam * s_l, lo_l, hi_l) with sum(t) = total (uniform if all scores are 0).

    `lo` / `hi` are one bound for every layer or one per layer.
    """
    n = len(scores)
    los = [float(x) for x in lo] if isinstance(lo, Sequence) else [float(lo)] * n
    his = [float(x) for x in hi] if isinstance(hi, Sequence) else [float(hi)] * n
    s = [max(float(x), 0.0) if math.isfinite(x) else 0.0 for x in scores]
    if sum(s) <= 0.0:
        s = [1.0] * n
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        mass = sum(s[i] for i in free)
        remaining = total - sum(fixed.values())
        if not free:
            break
        if mass <= 0.0:  # only zero scores left: share the rest uniformly (still within bounds)
            for i in free:
                s[i] = 1.0
            continue
        lam = remaining / mass
        over = [i for i in free if lam * s[i] > his[i]]
        under = [i for i in free if lam * s[i] < los[i]]
        if not over and not under:
            for i in free:
                fixed[i] = lam * s[i]
            break
        # clamp the side that violates most; re-solve for the rest
        for i in over:
            fixed[i] = his[i]
        if not over:
            for i in under:
                fixed[i] = los[i]
    return [fixed[i] for i in range(n)]


def allocate_ranks(
    scores: Sequence[float],
    total: int,
    min_rank: int,
    max_rank: int,
    current: Sequence[int] | None = None,
    stickiness: float = 0.25,
    caps: Sequence[int] | None = None,
) -> list[int]:
    """Integer ranks proportional to `scores`, within bounds, summing exactly to `total`.

    `caps` (optional, one per layer) bound each layer further: layer l gets at most
    min(max_rank, caps[l]), e.g. its width min(in_features, out_features), since a rank beyond the
    width adds no capacity.

    With `current` (the ranks in place), rounding prefers the current rank: a layer's remainder
    gets a bonus of `stickiness` when rounding up restores its current rank. This removes +-1
    flip-flops between reallocations when a target sits near a half-integer, and costs nothing
    when the scores really move.
    """
    n = len(scores)
    check_budget(n, total, min_rank, max_rank, caps)
    lo, hi = layer_bounds(n, min_rank, max_rank, caps)
    t = continuous_targets(scores, float(total), lo, hi)
    r = [min(max(math.floor(x + 1e-9), lo[i]), hi[i]) for i, x in enumerate(t)]
    left = total - sum(r)

    def bonus(i: int) -> float:
        return stickiness if current is not None and current[i] == r[i] + 1 else 0.0

    # largest remainder first; then higher score; then lower index (deterministic tie-break)
    key = sorted(range(n), key=lambda i: (-(t[i] - r[i] + bonus(i)), -float(scores[i]), i))
    while left > 0:
        progressed = False
        for i in key:
            if left == 0:
                break
            if r[i] < hi[i]:
                r[i] += 1
                left -= 1
                progressed = True
        if not progressed:  # pragma: no cover - excluded by check_budget
            raise AssertionError("allocation cannot reach its budget")
    while left < 0:  # rounding up from min_rank can overshoot; take back from the smallest remainders
        for i in reversed(key):
            if left == 0:
                break
            if r[i] > lo[i]:
                r[i] -= 1
                left += 1
    return r


@dataclass(frozen=True)
class LayerPlan:
    """Index lists (component slots) for one layer's reallocation."""

    prune: tuple[int, ...]  # kept -> fading out
    revive: tuple[int, ...]  # fading out -> kept again (its gate fades back in)
    grow: tuple[int, ...]  # free slot -> fresh component (zero B column)


def plan_layer(
    kept: Sequence[bool], gate: Sequence[float], component_scores: Sequence[float], target: int
) -> LayerPlan:
    """Choose the components to prune / revive / grow so that the kept count becomes `target`.

    Prune the lowest-scoring kept components (ties: higher slot first). Grow by reviving fading
    components (highest gate first, then lower slot), then by taking free slots (lower slot first).
    """
    cap = len(kept)
    if not 0 <= target <= cap:
        raise ValueError(f"target rank {target} outside [0, {cap}]")
    k = sum(bool(x) for x in kept)
    if target < k:
        live = [i for i in range(cap) if kept[i]]
        live.sort(key=lambda i: (float(component_scores[i]), -i))
        return LayerPlan(prune=tuple(sorted(live[: k - target])), revive=(), grow=())
    need = target - k
    fading = [i for i in range(cap) if not kept[i] and gate[i] > 0]
    fading.sort(key=lambda i: (-float(gate[i]), i))
    revive = fading[:need]
    need -= len(revive)
    free = [i for i in range(cap) if not kept[i] and gate[i] <= 0][:need]
    if len(free) < need:  # pragma: no cover - cap >= target guarantees enough slots
        raise AssertionError("not enough component slots")
    return LayerPlan(prune=(), revive=tuple(sorted(revive)), grow=tuple(free))
