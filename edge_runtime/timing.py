"""Timing and latency statistics: the one definition every report uses (bench, exporters, benchmarks).

    from dynalora.edge_runtime.timing import latency_stats, time_calls
    stats = latency_stats(time_calls(lambda: session.run(None, feeds), warmup=3, repeats=20))
    stats["p50"], stats["p90"], stats["raw"]

Percentiles are numpy's default (linear interpolation between the two nearest samples), so p50 is the
median. numpy only: no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PERCENTILES = (10, 50, 90, 95, 99)


def latency_stats(samples: Sequence[float]) -> dict[str, Any]:
    """mean, std, min, max, p10 / p50 / p90 / p95 / p99 of `samples`, in their unit, plus the raw samples."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("latency_stats needs at least one sample")
    pct = {f"p{q}": float(np.percentile(a, q)) for q in PERCENTILES}
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()), **pct,
            "raw": [float(x) for x in a]}


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None,
               ) -> list[float]:
    """`warmup` untimed calls, then the wall time of `repeats` calls in milliseconds (`sync` ends each one)."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples
