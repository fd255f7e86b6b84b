"""Markdown and Pareto plot of the rank study report (see rank_study_report.py for the numbers)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ORDER = ("static", "static-2r", "dynamic", "dyn-mix", "dyn-sens", "dyn-sens-r0", "dyn-sens-prune", "peft-lora", "peft-adalora")


def _f(x: float | None, nd: int = 2, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _ci(d: dict[str, Any]) -> str:
    lo, hi = d.get("low"), d.get("high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return _f(d.get("mean"))
    return f"{_f(d['mean'])} [{_f(lo)}, {_f(hi)}]"


def _interval(mean: float | None, ci95: list[float] | None) -> str:
    lo, hi = ci95 or [float("nan")] * 2
    return _ci({"mean": mean, "low": lo, "high": hi})


def _goal(what: str, d: float, lo: float, hi: float, strict: bool = False) -> str:
    """A no-margin target ("dynamic r >= static 2r", "> AdaLoRA") answered with its interval: a point estimate on
    the right side of 0 whose interval includes 0 is reported as exactly that, not as a plain "met"."""
    if math.isnan(lo) or math.isnan(hi):
        return f"{what}: {'met' if (d > 0 if strict else d >= 0) else 'not met'} on the point estimate (no interval)"
    if lo > 0:
        return f"{what}: met, the interval is above 0"
    if hi < 0:
        return f"{what}: not met, the interval is below 0"
    met = d > 0 if strict else d >= 0
    return f"{what}: {'met on the point estimate only' if met else 'not met on the point estimate'}; the interval includes 0"


def _methods(cell: dict[str, Any]) -> list[str]:
    return sorted(cell["per_task"], key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))


def _cell_md(key: str, cell: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    from rank_study_stats import verdict

    methods = _methods(cell)
    L = [f"## {key}: average rank {meta['budget']}, targets {', '.join(meta['targets'])}, regime {meta['regime']}", ""]
    L.append(f"Seeds {cell['seeds']}; metric points = accuracy x 100 (classification) or Pearson r x 100 (regression), "
             "on each task's evaluation file.")
    L += ["", "| task | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t in cell["tasks"]:
        row = []
        for m in methods:
            v = cell["per_task"][m].get(t)
            row.append(f"{v['mean']:.2f} ± {v['sd']:.2f} (n={v['n']})" if v else "")
        L.append(f"| {t} | " + " | ".join(row) + " |")
    L.append(f"| **mean over the {len(cell['common_tasks'])} tasks all methods have** | "
             + " | ".join(f"**{cell['mean_over_tasks'][m]:.2f}**" for m in methods) + " |")
    L.append("| live trainable params | " + " | ".join(f"{cell['live_params'][m]:,}" for m in methods) + " |")
    L.append("| learning rate (swept) | " + " | ".join(f"{cell['lrs'].get(m, float('nan')):g}" for m in methods) + " |")
    L += ["", "Seed-paired differences in points, mean and 95% CI (per task: t over seeds; over tasks: t over the "
          "per-task means):", "", "| comparison | " + " | ".join(cell["tasks"]) + " | over tasks |",
          "|---" * (len(cell["tasks"]) + 2) + "|"]
    for label, c in cell["comparisons"].items():
        o = c["over_tasks"]
        cells = [(_ci(c["per_task"][t]) if t in c["per_task"] else "") for t in cell["tasks"]]
        L.append(f"| {label} | " + " | ".join(cells) + f" | **{_interval(o['mean'], o['ci95'])}** |")
    L += ["", "Ablation (one mechanism per row; each against static r over tasks):", "", "| variant | mechanism | diff vs static r |",
          "|---|---|---|"]
    for m in methods:
        c = cell["comparisons"].get("dynamic r - static r" if m == "dynamic" else f"{m} - static r (ablation)")
        if c:
            o = c["over_tasks"]
            L.append(f"| {m} | {cell['mechanism'][m]} | {verdict(o['mean'], o['ci95'][0], o['ci95'][1])} |")
    if cell["rank_split"]:
        L += ["", "Where the rank went (mean final rank per adapted layer, over tasks and seeds):", ""]
        types = sorted({t for v in cell["rank_split"].values() for t in v["by_module_type"]})
        L += ["| method | " + " | ".join(types) + " | by layer (0 = bottom) |", "|---" * (len(types) + 2) + "|"]
        for m, v in cell["rank_split"].items():
            L.append(f"| {m} | " + " | ".join(f"{v['by_module_type'].get(t, '')}" for t in types)
                     + " | " + ", ".join(f"{k}: {x}" for k, x in v["by_layer"].items()) + " |")
    L += ["", "LR sweep (seed 0, validation files of the sweep tasks; the best mean wins):", "",
          "| method | lr | " + " | ".join(sorted({s['task'] for s in cell['sweep']})) + " |",
          "|---|---|" + "---|" * len({s['task'] for s in cell['sweep']})]
    sweep_tasks = sorted({s["task"] for s in cell["sweep"]})
    for m in sorted({s["method"] for s in cell["sweep"]}, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER)):
        for lr in sorted({s["lr"] for s in cell["sweep"] if s["method"] == m}):
            vals = {s["task"]: s["val"] for s in cell["sweep"] if s["method"] == m and s["lr"] == lr}
            L.append(f"| {m} | {lr:g} | " + " | ".join(f"{vals[t]:.2f}" if t in vals else "" for t in sweep_tasks) + " |")
    if cell.get("lr_at_edge"):
        L += ["", "Chosen at the edge of the rates tried (a better rate may lie beyond): "
              + ", ".join(f"{m} {lr:g}" for m, lr in cell["lr_at_edge"].items()) + "."]
    if cell.get("rate_checks"):
        L += ["", "Evaluation runs at a rate other than the swept one (a check of the sweep's choice; no comparison "
              "above uses them). Last column: the default dynamic method at its chosen rate minus these runs, "
              "seed-paired, over tasks:", "",
              "| method | lr (chosen) | " + " | ".join(cell["tasks"]) + " | mean | dynamic r - these runs |",
              "|---" * (len(cell["tasks"]) + 4) + "|"]
        for c in cell["rate_checks"]:
            o = c.get("dynamic_minus_this")
            diff = _interval(o["mean"], o["ci95"]) if o else "n/a"
            L.append(f"| {c['method']} | {c['lr']:g} ({c['chosen_lr']:g}) | "
                     + " | ".join(f"{c['per_task'][t]:.2f}" if t in c["per_task"] else "" for t in cell["tasks"])
                     + f" | {c['mean_over_tasks']:.2f} | {diff} |")
    return L + [""]


def targets_lines(report: dict[str, Any]) -> list[str]:
    """The issue's targets, each answered by a sentence computed from the numbers."""
    from rank_study_stats import verdict

    s = report["summary"]
    L = ["## Against the targets", ""]
    cells = [(b, e) for b, v in sorted(s["per_budget"].items(), key=lambda kv: int(kv[0]))
             for e in sorted(v["cells"], key=lambda e: e["cell"] != v["cell"])]  # the budget's headline cell first
    for b, v in cells:
        lo, hi = (v.get("ci95") or [float("nan")] * 2)
        L.append(f"- average rank {b} ({v['cell']}): dynamic - static = {verdict(v['mean_diff_points'] or float('nan'), lo, hi)}")
        if v.get("dynamic_allocation_moved") is False:
            L.append("  - the default dynamic method never moved rank in this cell (every layer ended at the average "
                     "rank; with min rank = average rank there is nothing to move): its difference from static is "
                     "initialisation noise, not allocation")
        L += _power_lines(v.get("power") or {})
        lo2, hi2 = (v.get("dynamic_r_vs_static_2r_ci95") or [float("nan")] * 2)
        d2 = v.get("dynamic_r_vs_static_2r_points")
        if d2 is not None:
            L.append(f"  - dynamic at rank {b} vs static at rank {2 * int(b)}: {_f(d2)} points [{_f(lo2)}, {_f(hi2)}] "
                     f"({_goal('dynamic r >= static 2r', d2, lo2, hi2)})")
            L += _doubling_caution(b, v)
        d3 = v.get("dynamic_vs_peft_adalora_points")
        if d3 is not None:
            lo3, hi3 = v.get("dynamic_vs_peft_adalora_ci95") or [float("nan")] * 2
            L.append(f"  - dynamic vs PEFT AdaLoRA at equal budget: {_f(d3)} points [{_f(lo3)}, {_f(hi3)}] "
                     f"({_goal('dynamic > PEFT AdaLoRA', d3, lo3, hi3, strict=True)})")
        L += _ablation_target_lines(b, v)
    return L + [""]


def _doubling_caution(b: str, v: dict[str, Any]) -> list[str]:
    """When static at twice the rank scored below static at the rank, the 'static 2r' target measures static 2r's
    training (its swept rate), not what allocation saves: say so, with the rate check where one was run."""
    dbl = v.get("static_2r_minus_static_points")
    if dbl is None or math.isnan(dbl) or dbl >= 0:
        return []
    lrs = v.get("lrs") or {}
    line = (f"  - caution: static at rank {2 * int(b)} scored below static at rank {b} here ({_f(dbl)} points; swept rates "
            f"{lrs.get('static-2r') or float('nan'):g} against {lrs.get('static') or float('nan'):g}), so this comparison "
            "says more about static 2r's training than about what allocation saves")
    for r in v.get("static_2r_rate_checks") or []:
        if r.get("dynamic_minus_this") is not None:
            line += (f"; static at rank {2 * int(b)} trained at {r['lr']:g} instead: dynamic at rank {b} minus it "
                     f"{_interval(r['dynamic_minus_this'], r.get('ci95'))}")
    return [line]


def _power_lines(p: dict[str, Any]) -> list[str]:
    """What the over-task interval could see, from the spread of the per-task differences it was built on."""
    if p.get("detectable_80") is None or math.isnan(p["detectable_80"]):
        return []
    need = p.get("tasks_for_1_point")
    return [f"  - power: with the spread over tasks measured here (sd {p['sd_over_tasks']:.2f} points), this comparison "
            f"finds a true difference of {p['detectable_80']:.2f} points with 80% probability; finding 1 point "
            f"would take {need if need is not None else 'more than 10,000'} tasks"]


def pooled_lines(report: dict[str, Any]) -> list[str]:
    """Each pooled view (every projection, query/value) at average rank <= 4: the cells taken together."""
    from rank_study_report import POOLS

    return [ln for name, (_, heading) in POOLS.items() for ln in _pool_lines(report["summary"].get(name) or {}, heading)]


def _pool_lines(p: dict[str, Any], heading: str) -> list[str]:
    """One pooled view as a table (more tasks x cells, a narrower interval)."""
    from rank_study_stats import verdict

    if not p.get("comparisons"):
        return []
    tasks = sorted({t for c in p["comparisons"].values() for t in c["per_task"]})
    L = [f"## Pooled: {heading} at average rank <= {p['max_budget']}", "",
         "Per task, the mean over the pooled cells of its seed-paired difference; the interval is Student's t over "
         "tasks. Static 2r is twice each cell's own rank.", "",
         "Power: the true difference the over-task test finds with 80% probability, given the spread of the per-task "
         "differences in that row (noncentral t), and the number of tasks that spread would need for 1 point.", "",
         "| comparison | cells | " + " | ".join(tasks) + " | over tasks | detectable (80%) | tasks for 1 point |",
         "|---" * (len(tasks) + 5) + "|"]
    for label, c in p["comparisons"].items():
        # the +1-point verdict is the target against static LoRA; other rows give the interval only
        over = verdict(c["mean"], *c["ci95"]) if c["against"] == "static" else f"{_f(c['mean'])} [{_f(c['ci95'][0])}, {_f(c['ci95'][1])}]"
        L.append(f"| {label} | {', '.join(c['cells'])} | " + " | ".join(_f(c["per_task"].get(t)) for t in tasks)
                 + f" | **{over}** | {_f(c.get('detectable_80'), sign=False)} | {c.get('tasks_for_1_point') or 'n/a'} |")
    return L + [""]


def _ablation_target_lines(b: str, v: dict[str, Any]) -> list[str]:
    """The same two targets for each ablation variant (a candidate default), with live parameters beside them."""
    L = []
    params = v.get("live_params") or {}
    for m, a in sorted((v.get("ablations") or {}).items()):
        if a.get("vs_static_r_points") is None:
            continue
        lo, hi = a.get("vs_static_r_ci95") or [float("nan")] * 2
        line = f"  - {m}: vs static r {_f(a['vs_static_r_points'])} [{_f(lo)}, {_f(hi)}]"
        if a.get("vs_static_2r_points") is not None:
            lo2, hi2 = a.get("vs_static_2r_ci95") or [float("nan")] * 2
            line += (f"; vs static rank {2 * int(b)}: {_f(a['vs_static_2r_points'])} [{_f(lo2)}, {_f(hi2)}] "
                     f"({_goal('>= static 2r', a['vs_static_2r_points'], lo2, hi2)})")
        if a.get("vs_peft_adalora_points") is not None:
            lo3, hi3 = a.get("vs_peft_adalora_ci95") or [float("nan")] * 2
            line += (f"; vs PEFT AdaLoRA r: {_f(a['vs_peft_adalora_points'])} [{_f(lo3)}, {_f(hi3)}] "
                     f"({_goal('> AdaLoRA', a['vs_peft_adalora_points'], lo3, hi3, strict=True)})")
        if a.get("live_params") and params.get("static") and params.get("static-2r"):
            line += (f"; live parameters {a['live_params']:,} (static r {params['static']:,}, "
                     f"static 2r {params['static-2r']:,})")
        L.append(line)
    return L


def data_lines(report: dict[str, Any]) -> list[str]:
    tasks = report.get("tasks") or {}
    if not tasks:
        return []
    L = ["## Data", "", "Every method reads the same files (benchmarks/rank_study_data.py): the first n_train examples of "
         "the loader's seeded training split, the next n_val for the learning-rate sweep, the first n_eval of its "
         "evaluation split.", "", "| task | kind | problem | n_train | n_val | n_eval | source |", "|---|---|---|---|---|---|---|"]
    for t, m in sorted(tasks.items()):
        L.append(f"| {t} | {m['kind']} | {m['problem']} | {m['n_train']} | {m['n_val']} | {m['n_eval']} | {m['source']} |")
    return L + [""]


def timing_lines(report: dict[str, Any]) -> list[str]:
    t = report.get("timing")
    if not t:
        return []
    a = t["args"]
    L = ["## Step time (benchmarks/rank_study_timing.py)", "",
         f"Interleaved rounds on the same fixed batches ({a['task']}, batch 16, <= 64 tokens, average rank {a['rank']}, "
         f"targets {a['targets']}, {a['threads']} threads, {a['rounds']} rounds x {a['steps']} steps after a warm-up round; "
         "reallocations happen inside the timed window).", "", "| method | median step (ms) | vs static | live budget at the end |",
         "|---|---|---|---|"]
    for m, v in t["median_s"].items():
        L.append(f"| {m} | {1000 * v:.1f} | {t['ratio_to_static'].get(m, float('nan')):.3f}x | {t['live_budget'][m]} |")
    return L + [""]


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    s = report["summary"]
    L = ["# Rank study: dynamic LoRA vs static LoRA at equal live budget", "",
         f"Generated from {report['n_cached_runs']} cached runs (benchmarks/results/rank_study_runs/). Machine: "
         f"{env.get('cpu', '?')}, {env.get('logical_cores', '?')} cores, {env.get('ram_gb', 0):.0f} GiB, torch "
         f"{env.get('versions', {}).get('torch', '?')}, transformers {env.get('versions', {}).get('transformers', '?')}, "
         f"peft {env.get('versions', {}).get('peft', '?')}; every run used 1 torch thread (2 runs in parallel).",
         "", f"Tasks: {', '.join(s['tasks'])}. Seeds: {s['seeds']}. Budgets (average rank): {s['budgets']}.",
         "", "Regenerate: see the docstring of benchmarks/rank_study.py (`--report-only` rebuilds this file from the cache).", ""]
    L += targets_lines(report) + pooled_lines(report)
    L += data_lines(report) + timing_lines(report)
    L += ["![Pareto: metric vs live trainable parameters](rank_study.png)", ""]
    for key in sorted(report["cells"]):
        L += _cell_md(key, report["cells"][key], report["cell_meta"][key])
    return "\n".join(L) + "\n"


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Mean metric over tasks against mean live trainable parameters, per method, one panel per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynalora.atomic import atomic_path

    keys = sorted(report["cells"])
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        cell = report["cells"][key]
        for m in _methods(cell):
            x, y = cell["live_params"][m], cell["mean_over_tasks"][m]
            color = f"C{ORDER.index(m) % 10}" if m in ORDER else "k"  # one colour per method in every panel
            ax.scatter([x], [y], s=40, color=color,
                       marker="s" if m.startswith("static") else ("^" if m.startswith("peft") else "o"))
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if {"static", "static-2r"} <= set(cell["live_params"]):
            ax.plot([cell["live_params"]["static"], cell["live_params"]["static-2r"]],
                    [cell["mean_over_tasks"]["static"], cell["mean_over_tasks"]["static-2r"]], "k--", lw=0.8)
        ax.set_title(key)
        ax.set_xlabel("live trainable parameters (adapters + head)")
        ax.set_ylabel("mean metric over tasks (points)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
