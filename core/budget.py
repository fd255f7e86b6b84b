"""Where the live rank budget went: per module type and per depth (pure functions over {layer name: rank}).

A layer's *type* is its name without the block prefix (`bert.encoder.layer.3.attention.output.dense` ->
`attention.output.dense`, `model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`); its *depth* is the
block index (3). Layers outside the numbered blocks (e.g. BERT's pooler) are their own type, depth None.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping

_BLOCK = re.compile(r"^(?:.*\.)?(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")


def layer_type(name: str) -> tuple[str, int | None]:
    """(type, depth) of an adapted layer's full name."""
    m = _BLOCK.match(name)
    return (m.group(2), int(m.group(1))) if m else (name, None)


def split(ranks: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Mean live rank per module type and per depth (depth keys as strings, bottom first)."""
    by_type: dict[str, list[int]] = defaultdict(list)
    by_depth: dict[str, list[int]] = defaultdict(list)
    for name, r in ranks.items():
        kind, depth = layer_type(name)
        by_type[kind].append(r)
        by_depth[kind if depth is None else str(depth)].append(r)
    order = sorted(by_depth, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return {"by_type": {k: statistics.fmean(v) for k, v in by_type.items()},
            "by_depth": {k: statistics.fmean(by_depth[k]) for k in order}}


def summary_lines(ranks: Mapping[str, int], average: int | None = None) -> list[str]:
    """What `dynalora train` prints at the end of a run: the live budget and how it was split."""
    total, n = sum(ranks.values()), len(ranks)
    s = split(ranks)
    target = f"; target {average} x {n} = {average * n}" if average is not None else ""
    off = sum(1 for r in ranks.values() if r == 0)
    lines = [f"live budget: {total} rank units over {n} layers (average {total / max(n, 1):.2f}{target})"
             + (f", {off} switched off (rank 0)" if off else "")]
    lines.append("by module: " + "  ".join(f"{k}={v:.2f}" for k, v in s["by_type"].items()))
    lines.append("by depth:  " + "  ".join(f"{k}={v:.2f}" for k, v in s["by_depth"].items()))
    return lines
