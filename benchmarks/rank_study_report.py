"""Report of the rank study, rebuilt from the run cache alone: Markdown, JSON (with a `summary`) and a PNG.

Only evaluation-split runs at each method's selected learning rate (from the validation sweep of the same
cell, see `best_lrs`) enter the tables; differences are seed-paired (rank_study_stats.py).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from rank_study_stats import mean_ci95, over_tasks, paired_diffs, power_of

BASELINE = "static"
ALL_PROJECTIONS = ["query", "key", "value", "dense"]  # rank_study.TARGETS["all"]: every linear projection
QUERY_VALUE = ["query", "value"]  # rank_study.TARGETS["qv"]: the CLI's default targets
# the pooled views: summary key -> (targets, heading); None: the cells of any targets
POOLS: dict[str, tuple[list[str] | None, str]] = {
    "pooled_small_budgets": (ALL_PROJECTIONS, "every projection"),
    "pooled_small_budgets_query_value": (QUERY_VALUE, "query/value"),
    "pooled_head_rate": (None, "the head-rate diagnostic, every cell it ran in (either targets)")}
DOUBLING = "static 2r - static r (what doubling the rank buys)"
# (row label, method, against)
COMPARISONS = (
    ("dynamic r - static r", "dynamic", "static"),
    ("dynamic r - static 2r", "dynamic", "static-2r"),
    ("dynamic r - PEFT LoRA r", "dynamic", "peft-lora"),
    ("dynamic r - PEFT AdaLoRA r", "dynamic", "peft-adalora"),
    (DOUBLING, "static-2r", "static"),
    ("PEFT AdaLoRA r - static r", "peft-adalora", "static"),
    # with the task head at 10x the rate for both (the static-head10 diagnostic): what allocation adds on top
    ("dynamic r - static r, both with the head at 10x the rate", "dynamic-head10", "static-head10"),
    ("dyn-sens-r0 r - static r, both with the head at 10x the rate", "dyn-sens-r0-head10", "static-head10"),
)
ABLATIONS = ("dyn-mix", "dyn-sens", "dyn-sens-r0", "dyn-sens-prune",  # one mechanism each, against static r
             "static-head10")  # a diagnostic: static LoRA, head at 10x the rate
# each ablation variant against: (summary key, comparison label); the labels are the report's row names
ABLATION_AGAINST = (("static_r", "{m} - static r (ablation)"), ("static_2r", "{m} r - static 2r (ablation)"),
                    ("peft_adalora", "{m} r - PEFT AdaLoRA r (ablation)"))

def describe(cfg: dict[str, Any]) -> str:
    """What a run's rank dynamics were, read from its own resolved configuration (not from today's defaults)."""
    if cfg["kind"] != "ours":
        return {"peft-lora": "PEFT LoRA", "peft-adalora": "PEFT AdaLoRA (SVD form, init 1.5x, pruned)"}.get(cfg["kind"], cfg["kind"])
    d, lo = cfg["dynamic"], cfg["lora"]
    head = f", task head at {cfg['head_lr_mult']:g}x the learning rate" if "head_lr_mult" in cfg else ""
    if not d["reallocate"] and d["input_adaptive"] == "off":
        return f"static rank {lo['rank']}{head}"
    w = d["input_weight"] if d["input_adaptive"] != "off" else 0.0
    what = (f"sensitivity + input complexity ({100 * (1 - w):.0f}/{100 * w:.0f})" if w > 0 else "sensitivity only")
    out = f"reallocation from {what}, min rank {lo['min_rank']}, max {lo['max_rank'] or 2 * lo['rank']}"
    if d["input_adaptive"] == "per-example":
        out += ", per-example rank"
    if d.get("budget_start", 1.0) > 1.0:
        out += f", budget starts at {d['budget_start']:g}x and is pruned to the target (cubic)"
    return out + head


def score(record: dict[str, Any]) -> float:
    """The task's metric in points: accuracy x 100 (classification) or Pearson r x 100 (regression)."""
    m = record["result"]["metrics"]
    return 100.0 * float(m["accuracy"] if "accuracy" in m else m["pearson"])


def best_lrs(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per method: the learning rate with the best mean validation score over the sweep tasks (ties: smaller).

    Methods with `lr_from` (ablation variants) are not swept; the caller maps them.
    """
    by: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        c = r["config"]
        if c["split"] == "val":
            by[c["method"]][c["lr"]].append(score(r))
    return {m: max(lrs, key=lambda lr: (statistics.fmean(lrs[lr]), -lr)) for m, lrs in by.items()}


def load_cache(cache: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]


def rank_split(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean final rank per module type and per depth over a method's runs (tasks x seeds), via core/budget.py."""
    from dynalora.core.budget import split

    by_type: dict[str, list[float]] = defaultdict(list)
    by_layer: dict[str, list[float]] = defaultdict(list)
    for r in records:
        s = split(r["result"].get("ranks") or {})
        for t, v in s["by_type"].items():
            by_type[t].append(v)
        for d, v in s["by_depth"].items():
            by_layer[d].append(v)
    return {"by_module_type": {t: round(statistics.fmean(v), 2) for t, v in by_type.items()},
            "by_layer": {d: round(statistics.fmean(v), 2) for d, v in by_layer.items()}}


def cell_tables(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the report says about one cell (budget x targets x regime)."""
    lrs = best_lrs(records)
    lr_from = {r["config"]["method"]: r["config"].get("lr_from") for r in records}
    chosen = {m: lrs.get(src or m) for m, src in lr_from.items()}
    evals = [r for r in records if r["config"]["split"] == "eval" and chosen.get(r["config"]["method"]) == r["config"]["lr"]]
    scores: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # method -> task -> seed
    params: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in evals:
        c = r["config"]
        scores[c["method"]][c["task"]][c["seed"]] = score(r)
        params[c["method"]].append((c["task"], r["result"]["live_params"]))
    tasks = sorted({t for m in scores.values() for t in m})
    per_task = {m: {t: {"mean": statistics.fmean(d.values()), "sd": statistics.stdev(d.values()) if len(d) > 1 else 0.0,
                        "n": len(d), "seeds": d} for t, d in tm.items()} for m, tm in scores.items()}
    comps = {}
    rows = list(COMPARISONS) + [(label.format(m=m), m, against) for (_, label), against in
                                zip(ABLATION_AGAINST, ("static", "static-2r", "peft-adalora"), strict=True)
                                for m in ABLATIONS if m in scores]
    for label, a, b in rows:
        if a not in scores or b not in scores:
            continue
        d = {t: paired_diffs(scores[a][t], scores[b][t]) for t in tasks if t in scores[a] and t in scores[b]}
        comps[label] = {"method": a, "against": b,
                        "per_task": {t: dict(zip(("mean", "low", "high"), mean_ci95(list(v.values())), strict=True)) | {"n": len(v)}
                                     for t, v in d.items() if v},
                        "over_tasks": over_tasks({t: v for t, v in d.items() if v})}
    sweep = [{"method": r["config"]["method"], "task": r["config"]["task"], "lr": r["config"]["lr"], "val": score(r)}
             for r in records if r["config"]["split"] == "val"]
    mechanism = {r["config"]["method"]: describe(r["config"]) for r in evals}
    tried = {m: sorted({s["lr"] for s in sweep if s["method"] == m}) for m in lrs}
    # a chosen rate at the edge of the rates tried may not be the method's best (rank_study.py extends such sweeps)
    lr_at_edge = {m: lr for m, lr in lrs.items() if len(tried[m]) > 1 and lr in (tried[m][0], tried[m][-1])}
    common = [t for t in tasks if all(t in tm for tm in per_task.values())]  # means compare like with like
    return {"lrs": chosen, "sweep": sweep, "lr_at_edge": lr_at_edge, "mechanism": mechanism, "tasks": tasks, "per_task": per_task, "comparisons": comps,
            "rate_checks": rate_checks(records, chosen, scores),
            "live_params": {m: round(statistics.fmean([p for t, p in v if t in common] or [p for _, p in v]))
                            for m, v in params.items()},
            "common_tasks": common,
            "mean_over_tasks": {m: statistics.fmean(tm[t]["mean"] for t in common) if common else float("nan")
                                for m, tm in per_task.items()},
            "rank_split": {m: rank_split([r for r in evals if r["config"]["method"] == m])
                           for m in scores if any(r["result"].get("ranks") for r in evals if r["config"]["method"] == m)},
            # False when no run of the method ended with two layers at different ranks: e.g. min rank = average
            # rank leaves the allocator nothing to move, and its difference from static is init noise
            "allocation_moved": {m: any(len(set((r["result"].get("ranks") or {}).values())) > 1
                                        for r in evals if r["config"]["method"] == m)
                                 for m in scores if any(r["result"].get("ranks") for r in evals
                                                        if r["config"]["method"] == m)},
            "seeds": sorted({s for tm in scores.values() for d in tm.values() for s in d})}


def rate_checks(records: list[dict[str, Any]], chosen: dict[str, float | None],
                scores: dict[str, dict[str, dict[int, float]]]) -> list[dict[str, Any]]:
    """Evaluation runs of a method at a rate other than the one its sweep chose: a check of that choice, kept
    apart (no comparison above uses them). Each gives its per-task means and, seed-paired against the default
    dynamic method at its chosen rate, the difference over tasks."""
    other: dict[tuple[str, float], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        c = r["config"]
        if c["split"] == "eval" and chosen.get(c["method"]) not in (None, c["lr"]):
            other[(c["method"], c["lr"])][c["task"]][c["seed"]] = score(r)
    checks = []
    for (m, lr), by_task in sorted(other.items()):
        entry = {"method": m, "lr": lr, "chosen_lr": chosen[m],
                 "per_task": {t: statistics.fmean(d.values()) for t, d in sorted(by_task.items())},
                 "mean_over_tasks": statistics.fmean(statistics.fmean(d.values()) for d in by_task.values())}
        if m != "dynamic" and "dynamic" in scores:
            entry["dynamic_minus_this"] = over_tasks({t: paired_diffs(scores["dynamic"][t], d)
                                                      for t, d in by_task.items() if t in scores["dynamic"]})
        checks.append(entry)
    return checks


def summarize(cells: dict[str, dict[str, Any]], meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The machine-readable summary the issue asks for: per budget, dynamic minus static over tasks."""
    per_budget: dict[str, Any] = {}
    for key, cell in sorted(cells.items()):
        b = str(meta[key]["budget"])
        c = cell["comparisons"]
        entry = {"cell": key, "targets": meta[key]["targets"], "regime": meta[key]["regime"],
                 "dynamic_allocation_moved": cell.get("allocation_moved", {}).get("dynamic")}
        for name, label in (("mean_diff_points", "dynamic r - static r"), ("dynamic_r_vs_static_2r_points", "dynamic r - static 2r"),
                            ("dynamic_vs_peft_adalora_points", "dynamic r - PEFT AdaLoRA r")):
            o = c.get(label, {}).get("over_tasks", {})
            entry[name] = o.get("mean")
            entry[name.replace("points", "ci95") if name != "mean_diff_points" else "ci95"] = o.get("ci95")
            if name == "mean_diff_points":  # could this cell see a 1-point difference?
                entry["power"] = {k: o.get(k) for k in ("sd_over_tasks", "detectable_80", "tasks_for_1_point")}
        entry["ablations"] = {m: {f"vs_{name}_{k}": c.get(label.format(m=m), {}).get("over_tasks", {}).get(field)
                                  for name, label in ABLATION_AGAINST for k, field in (("points", "mean"), ("ci95", "ci95"))}
                              | {"live_params": cell["live_params"].get(m)}
                              for m in ABLATIONS if f"{m} - static r (ablation)" in c}
        entry["live_params"] = {m: cell["live_params"].get(m) for m in ("static", "static-2r", "dynamic", "peft-adalora", "peft-lora")}
        # what doubling the rank bought: below 0, "dynamic r >= static 2r" says more about static 2r's training
        entry["static_2r_minus_static_points"] = c.get(DOUBLING, {}).get("over_tasks", {}).get("mean")
        entry["lrs"] = {m: cell["lrs"].get(m) for m in ("static", "static-2r", "dynamic")}
        entry["static_2r_rate_checks"] = [{"lr": r["lr"], "mean_over_tasks": r["mean_over_tasks"],
                                           "dynamic_minus_this": (r.get("dynamic_minus_this") or {}).get("mean"),
                                           "ci95": (r.get("dynamic_minus_this") or {}).get("ci95")}
                                          for r in cell.get("rate_checks", []) if r["method"] == "static-2r"]
        per_budget.setdefault(b, {"cells": []})["cells"].append(entry)
    for b, v in per_budget.items():  # the headline of a budget: its first cell (all targets, epochs first)
        head = sorted(v["cells"], key=lambda e: (e["targets"] != ALL_PROJECTIONS, e["regime"] != {"epochs": 3.0}))[0]
        v.update({k: head[k] for k in head if k not in ("targets", "regime")})
    tasks = sorted({t for c in cells.values() for t in c["tasks"]})
    seeds = sorted({s for c in cells.values() for s in c["seeds"]})
    return {"tasks": tasks, "seeds": seeds, "budgets": sorted(int(b) for b in per_budget), "per_budget": per_budget}


POOLED_MAX_BUDGET = 4  # the main target is about average rank <= 4
POOLED_PAIRS = (("dynamic", "static"), ("dynamic", "static-2r"), ("dyn-sens", "static"), ("dyn-sens-r0", "static"),
                ("dyn-sens-r0", "static-2r"), ("dyn-sens-prune", "static"), ("dyn-sens-r0", "dynamic"),
                ("dynamic", "peft-adalora"), ("dyn-sens-r0", "peft-adalora"), ("dynamic", "peft-lora"),
                ("dyn-sens-r0", "peft-lora"), ("peft-adalora", "static"))
# the head-rate diagnostic: the head at 10x the rate against the usual head, against AdaLoRA (whose rate is 10x
# LoRA's), and the allocation variants against it
HEAD_RATE_PAIRS = (("static-head10", "static"), ("static-head10", "peft-adalora"), ("dyn-sens-r0", "static-head10"),
                   ("dynamic-head10", "static-head10"), ("dyn-sens-r0-head10", "static-head10"))


def pooled_small_budgets(cells: dict[str, dict[str, Any]], meta: dict[str, dict[str, Any]],
                         targets: list[str] | None = ALL_PROJECTIONS) -> dict[str, Any]:
    """The cells on `targets` (None: any) at average rank <= 4, taken together: per task, the mean over those cells
    of the task's mean seed-paired difference; then Student's t over tasks (the unit stays the task, as in each cell).
    With targets None the pairs are the head-rate diagnostic's (HEAD_RATE_PAIRS), else POOLED_PAIRS.

    A comparison pools the cells where both methods were run (at least two; one cell is its own table); a task
    enters it only if both methods have it (>= 2 paired seeds) in every one of those cells. Static 2r means twice
    each cell's own rank."""
    keys = sorted(k for k, m in meta.items() if m["budget"] <= POOLED_MAX_BUDGET and targets in (None, m["targets"]))
    comps: dict[str, Any] = {}
    for a, b in (HEAD_RATE_PAIRS if targets is None else POOLED_PAIRS):
        pooled = [k for k in keys if a in cells[k]["per_task"] and b in cells[k]["per_task"]]
        if len(pooled) < 2:  # one cell is its own table, not a pool
            continue
        per_task: dict[str, list[float]] = defaultdict(list)
        for k in pooled:
            pt = cells[k]["per_task"]
            for t in set(pt[a]) & set(pt[b]):
                d = paired_diffs(pt[a][t]["seeds"], pt[b][t]["seeds"])
                if len(d) >= 2:
                    per_task[t].append(statistics.fmean(d.values()))
        used = {t: v for t, v in per_task.items() if len(v) == len(pooled)}
        if len(used) < 2:
            continue
        task_means = [statistics.fmean(v) for v in used.values()]
        m, lo, hi = mean_ci95(task_means)
        comps[f"{a} - {b}"] = {"method": a, "against": b, "cells": pooled, "mean": m, "ci95": [lo, hi],
                               "tasks": sorted(used), "per_task": {t: statistics.fmean(v) for t, v in sorted(used.items())},
                               **power_of(task_means)}
    return {"cells": keys, "max_budget": POOLED_MAX_BUDGET, "targets": targets, "comparisons": comps}


def write(out: Path, cache: Path) -> dict[str, Any]:
    from dynalora.atomic import write_json, write_text

    records = [r for r in load_cache(cache) if "result" in r]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["config"]["cell"]].append(r)
    meta = {k: {"budget": v[0]["config"]["budget"], "targets": v[0]["config"]["targets"], "regime": v[0]["config"]["regime"],
                "settings": {x: v[0]["config"][x] for x in ("model", "batch", "max_length")}} for k, v in groups.items()}
    cells = {k: cell_tables(v) for k, v in groups.items()}
    extra = {name: json.loads((out / f"rank_study_{name}.json").read_text())
             for name in ("tasks", "timing") if (out / f"rank_study_{name}.json").is_file()}
    report = {"environment": _environment(), "n_cached_runs": len(records), "cells": cells, "cell_meta": meta,
              "summary": {**summarize(cells, meta),
                          **{name: pooled_small_budgets(cells, meta, targets) for name, (targets, _) in POOLS.items()}},
              **extra}
    write_json(out / "rank_study.json", report)
    write_text(out / "rank_study.md", render(report))
    _plot(report, out / "rank_study.png")
    return report


def _environment() -> dict[str, Any]:
    from dynalora.edge_runtime.envinfo import PACKAGES, environment

    return environment((*PACKAGES, "peft"))


def render(report: dict[str, Any]) -> str:
    from rank_study_render import render_markdown

    return render_markdown(report)


def _plot(report: dict[str, Any], path: Path) -> None:
    from rank_study_render import plot_pareto

    plot_pareto(report, path)
