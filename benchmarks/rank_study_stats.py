"""Statistics of the rank study: seed-paired differences and their 95% confidence intervals (pure functions).

A difference "dynamic minus static" is taken per (task, seed): both runs share the data, the split, the
evaluation examples and the seed (the same data order and head initialisation), so pairing removes the
variance the two methods share. Per task, the interval is Student's t over the seed-paired differences.
Over tasks, the unit is the task: the interval is Student's t over the per-task mean differences (tasks are
the population a user cares about; seeds within a task are not independent draws of it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats as _st


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): Student's t 95% interval; (mean, nan, nan) with fewer than two values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, math.nan, math.nan
    half = float(_st.t.ppf(0.975, len(vals) - 1)) * statistics.stdev(vals) / math.sqrt(len(vals))
    return m, m - half, m + half


def paired_diffs(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """a[seed] - b[seed] for the seeds both have."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def over_tasks(per_task: dict[str, dict[int, float]], min_seeds: int = 2) -> dict[str, object]:
    """Mean over tasks of each task's mean paired difference, with a t interval over tasks.

    Tasks with fewer than `min_seeds` paired seeds are left out (and listed).
    """
    used = {t: d for t, d in per_task.items() if len(d) >= min_seeds}
    means = [statistics.fmean(d.values()) for d in used.values()]
    m, lo, hi = mean_ci95(means)
    return {"mean": m, "ci95": [lo, hi], "n_tasks": len(used), "tasks": sorted(used),
            "left_out": sorted(set(per_task) - set(used)), **power_of(means)}


def power_of(task_means: Sequence[float], effect: float = 1.0, power: float = 0.8) -> dict[str, object]:
    """What the over-task test could see, from the spread of the per-task means it was given: the true difference
    it finds with 80% power (`detectable_80`), and how many tasks it would need to find `effect` points (1)."""
    vals = [float(v) for v in task_means]
    if len(vals) < 2:
        return {"sd_over_tasks": math.nan, "detectable_80": math.nan, "tasks_for_1_point": None}
    sd = statistics.stdev(vals)
    return {"sd_over_tasks": sd, "detectable_80": detectable_effect(sd, len(vals), power),
            "tasks_for_1_point": units_needed(sd, effect, power)}


def verdict(mean: float, lo: float, hi: float, target: float = 1.0) -> str:
    """A sentence computed from the numbers, for the report."""
    if math.isnan(mean):
        return "not measured"
    if math.isnan(lo):
        return f"{mean:+.2f} points (one task or seed: no interval)"
    where = ("the interval excludes 0" if lo > 0 or hi < 0 else "the interval includes 0")
    met = "met" if mean >= target and lo > 0 else "not met"
    return f"{mean:+.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}]: {where}; target >= +{target:g} with CI > 0: {met}"


def power_two_sided(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t test over n units (tasks) with spread `sd` to find a true mean `effect`.

    Exact, from the noncentral t distribution: P(|T| > t_crit) with noncentrality effect * sqrt(n) / sd."""
    if n < 2 or sd <= 0:
        return math.nan
    df = n - 1
    crit = float(_st.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) * math.sqrt(n) / sd  # the power is symmetric in the sign of the effect
    far = float(_st.nct.cdf(-crit, df, nc))  # rejecting on the wrong side; scipy gives NaN where it underflows
    return float(_st.nct.sf(crit, df, nc)) + (0.0 if math.isnan(far) else far)


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference the over-task test finds with probability `power` (n units, spread sd)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0  # no spread over tasks: any true difference shows
    from scipy.optimize import brentq

    hi = sd
    while power_two_sided(hi, sd, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda e: power_two_sided(e, sd, n, alpha) - power, 0.0, hi, xtol=1e-6))


def units_needed(sd: float, effect: float = 1.0, power: float = 0.8, alpha: float = 0.05, cap: int = 10_000) -> int | None:
    """How many units (tasks) the over-task test needs to find a true `effect` with probability `power`;
    None past `cap`."""
    if sd <= 0 or math.isnan(sd):
        return 2
    for n in range(2, cap + 1):
        if power_two_sided(effect, sd, n, alpha) >= power:
            return n
    return None
