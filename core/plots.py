"""allocation.png: a heatmap of rank per adapted layer over training (from allocation.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from dynalora.atomic import atomic_path


def short_name(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query' -> 'L3.query'."""
    parts = name.split(".")
    nums = [p for p in parts if p.isdigit()]
    return f"L{nums[0]}.{parts[-1]}" if nums else parts[-1]


def allocation_heatmap(jsonl: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [json.loads(line) for line in Path(jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    names = list(rows[0]["ranks"])
    grid = np.array([[r["ranks"][n] for r in rows] for n in names], dtype=float)  # (layers, events)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(steps) + 3), max(3, 0.3 * len(names) + 1.5)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), [short_name(n) for n in names], fontsize=7)
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7, rotation=90)
    ax.set_xlabel("optimizer step")
    ax.set_title("rank per adapted layer")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, int(grid[i, j]), ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="rank")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
