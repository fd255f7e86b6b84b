"""The rank study's bookkeeping on synthetic run records: learning-rate choice from validation runs only,
seed-paired differences with t intervals, the machine-readable summary, and the report files."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import rank_study  # noqa: E402
import rank_study_report as report  # noqa: E402
from rank_study_stats import (  # noqa: E402
    detectable_effect, mean_ci95, over_tasks, paired_diffs, power_two_sided, units_needed, verdict)


def _rec(method: str, task: str, split: str, lr: float, seed: int, acc: float, rank: int = 2, lr_from: str | None = None):
    return {"config": {"cell": "r2-all-epochs", "budget": 2, "targets": ["query", "key", "value", "dense"],
                       "regime": {"epochs": 3.0}, "model": "minilm", "batch": 16, "max_length": 64, "method": method,
                       "task": task, "split": split, "lr": lr, "seed": seed, "rank": rank, "lr_from": lr_from, "kind": "ours",
                       "lora": {"rank": rank, "min_rank": 1, "max_rank": None},
                       "dynamic": {"reallocate": not method.startswith("static"), "budget_start": 1.0, "input_weight": 0.5,
                                   "input_adaptive": "off" if method.startswith(("static", "dyn-sens")) else "layer"}},
            "result": {"metrics": {"accuracy": acc}, "live_params": 1000 * rank,
                       "ranks": {"bert.encoder.layer.0.attention.self.query": rank, "bert.encoder.layer.1.output.dense": rank}}}


def test_mean_ci95_matches_student_t() -> None:
    m, lo, hi = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and lo == pytest.approx(2.0 - 4.302652729911275 * 1.0 / math.sqrt(3))
    assert hi == pytest.approx(2 * m - lo)
    assert math.isnan(mean_ci95([5.0])[1])


def test_paired_diffs_use_common_seeds_and_over_tasks_uses_task_means() -> None:
    assert paired_diffs({0: 80.0, 1: 82.0, 2: 70.0}, {0: 79.0, 1: 83.0}) == {0: 1.0, 1: -1.0}
    o = over_tasks({"a": {0: 1.0, 1: 3.0}, "b": {0: -1.0, 1: -1.0}, "c": {0: 9.0}})
    assert o["tasks"] == ["a", "b"] and o["left_out"] == ["c"] and o["mean"] == pytest.approx(0.5)
    assert "not met" in verdict(0.5, -0.1, 1.1) and "includes 0" in verdict(0.5, -0.1, 1.1)
    assert "met" in verdict(1.5, 0.2, 2.8) and "not met" not in verdict(1.5, 0.2, 2.8)


def test_power_of_the_over_task_test_matches_published_values_and_simulation() -> None:
    # one-sample two-sided t test, alpha 0.05 (G*Power): d = 1 needs n = 10 (power 0.8031); d = 0.5 needs n = 34
    assert power_two_sided(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert units_needed(1.0, effect=1.0) == 10 and units_needed(2.0, effect=1.0) == 34
    assert power_two_sided(0.0, 2.0, 6) == pytest.approx(0.05)  # no true difference: the test's own error rate
    e = detectable_effect(1.5, 6)
    assert power_two_sided(e, 1.5, 6) == pytest.approx(0.8, abs=1e-5) and detectable_effect(3.0, 6) == pytest.approx(2 * e)
    rng = np.random.default_rng(0)  # simulated studies of 6 tasks with that true difference find it ~80% of the time
    x = rng.normal(e, 1.5, size=(20000, 6))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(6))
    assert float(np.mean(np.abs(t) > 2.5705818366147395)) == pytest.approx(0.8, abs=0.015)
    o = over_tasks({"a": {0: 1.0, 1: 1.0}, "b": {0: 3.0, 1: 3.0}, "c": {0: 2.0, 1: 2.0}})
    assert o["sd_over_tasks"] == pytest.approx(1.0) and o["detectable_80"] == pytest.approx(detectable_effect(1.0, 3))
    assert o["tasks_for_1_point"] == 10 and detectable_effect(0.0, 6) == 0.0
    import rank_study_render

    line = rank_study_render._power_lines(o)[0]
    assert f"finds a true difference of {o['detectable_80']:.2f} points" in line and "would take 10 tasks" in line


def test_learning_rate_is_chosen_on_validation_runs_only() -> None:
    recs = [_rec("static", "t1", "val", 1e-3, 0, 0.70), _rec("static", "t1", "val", 3e-3, 0, 0.80),
            _rec("static", "t1", "eval", 1e-3, 0, 0.99)]  # an evaluation score must not pick the rate
    assert report.best_lrs(recs) == {"static": 3e-3}


def test_cell_tables_summary_and_files(tmp_path: Path) -> None:
    recs = []
    for m, lr, bonus, rank, src in (("static", 3e-3, 0.0, 2, None), ("dynamic", 1e-2, 0.02, 2, None),
                                    ("static-2r", 3e-3, 0.01, 4, None), ("dyn-sens", 1e-2, 0.03, 2, "dynamic")):
        if src is None:
            recs += [_rec(m, "t1", "val", lr, 0, 0.8 + bonus, rank), _rec(m, "t1", "val", 1e-4, 0, 0.5, rank)]
        for t in ("t1", "t2"):
            for s in range(3):
                recs.append(_rec(m, t, "eval", lr, s, 0.7 + bonus + 0.01 * s, rank, src))
                recs.append(_rec(m, t, "eval", 1e-4, s, 0.1, rank, src))  # not the selected rate: ignored
    cell = report.cell_tables(recs)
    assert cell["lrs"] == {"static": 3e-3, "dynamic": 1e-2, "static-2r": 3e-3, "dyn-sens": 1e-2}
    assert cell["lr_at_edge"] == {"static": 3e-3, "dynamic": 1e-2, "static-2r": 3e-3}  # each beat only 1e-4
    assert cell["per_task"]["dynamic"]["t1"]["mean"] == pytest.approx(73.0)
    d = cell["comparisons"]["dynamic r - static r"]
    assert d["over_tasks"]["mean"] == pytest.approx(2.0) and d["per_task"]["t1"]["n"] == 3
    assert cell["comparisons"]["dynamic r - static 2r"]["over_tasks"]["mean"] == pytest.approx(1.0)
    assert cell["comparisons"]["dyn-sens - static r (ablation)"]["over_tasks"]["mean"] == pytest.approx(3.0)
    meta = {"r2-all-epochs": {"budget": 2, "targets": ["query", "key", "value", "dense"], "regime": {"epochs": 3.0}}}
    summary = report.summarize({"r2-all-epochs": cell}, meta)
    assert summary["tasks"] == ["t1", "t2"] and summary["seeds"] == [0, 1, 2] and summary["budgets"] == [2]
    assert summary["per_budget"]["2"]["mean_diff_points"] == pytest.approx(2.0)
    assert summary["per_budget"]["2"]["dynamic_r_vs_static_2r_points"] == pytest.approx(1.0)
    cache = tmp_path / "cache"
    cache.mkdir()
    for i, r in enumerate(recs):
        (cache / f"{i}.json").write_text(json.dumps(r))
    out = report.write(tmp_path, cache)
    assert out["summary"]["per_budget"]["2"]["ci95"][0] == pytest.approx(2.0)  # identical per-task means: zero width
    md = (tmp_path / "rank_study.md").read_text()
    assert "dynamic r - static r" in md and "## Against the targets" in md
    assert "Chosen at the edge of the rates tried (a better rate may lie beyond): static 0.003, dynamic 0.01" in md
    assert cell["mechanism"]["dyn-sens"] == "reallocation from sensitivity only, min rank 1, max 4"
    assert cell["mechanism"]["dynamic"].startswith("reallocation from sensitivity + input complexity (50/50)")
    assert (tmp_path / "rank_study.png").read_bytes()[:4] == b"\x89PNG"


def test_run_config_hash_changes_with_any_setting(tmp_path: Path) -> None:
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        (tmp_path / "t1").mkdir(exist_ok=True)
        (tmp_path / "t1" / name).write_text('{"text": "a", "label": "x"}\n')
    cell = rank_study.Cell(2, "all", "epochs")
    s = {"model": "minilm", "batch": 16, "max_length": 64}
    a = rank_study.run_config(cell, "dynamic", "t1", "eval", 3e-3, 0, tmp_path, s)
    assert a["dynamic"]["reallocate"] is True and a["lora"]["rank"] == 2  # the resolved settings are part of it
    b = rank_study.run_config(cell, "dynamic", "t1", "eval", 3e-3, 1, tmp_path, s)
    c = rank_study.run_config(cell, "static-2r", "t1", "eval", 3e-3, 0, tmp_path, s)
    assert c["rank"] == 4 and c["dynamic"]["reallocate"] is False
    assert len({rank_study.config_hash(x) for x in (a, b, c)}) == 3
    (tmp_path / "t1" / "train.jsonl").write_text('{"text": "b", "label": "x"}\n')  # data change -> new hash
    assert rank_study.config_hash(rank_study.run_config(cell, "dynamic", "t1", "eval", 3e-3, 0, tmp_path, s)) != rank_study.config_hash(a)


def test_the_head_rate_diagnostic_trains_static_lora_with_the_head_at_ten_times_the_rate(tmp_path: Path) -> None:
    (tmp_path / "t1").mkdir()
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        (tmp_path / "t1" / name).write_text('{"text": "a", "label": "x"}\n')
    cell = rank_study.Cell(2, "qv", "epochs")
    s = {"model": "minilm", "batch": 16, "max_length": 64}
    head = rank_study.run_config(cell, "static-head10", "t1", "eval", 3e-3, 0, tmp_path, s)
    static = rank_study.run_config(cell, "static", "t1", "eval", 3e-3, 0, tmp_path, s)
    assert head["lr_from"] == "static" and head["head_lr_mult"] == 10 and "head_lr_mult" not in static
    assert {k: v for k, v in head.items() if k not in ("method", "lr_from", "head_lr_mult")} == \
        {k: v for k, v in static.items() if k not in ("method", "lr_from")}  # nothing else differs
    tcfg = rank_study._train_config(head, tmp_path, tmp_path / "run")
    assert (tcfg.lr, tcfg.head_lr) == (3e-3, pytest.approx(3e-2))
    assert rank_study._train_config(static, tmp_path, tmp_path / "run").head_lr is None
    assert report.describe(head) == "static rank 2, task head at 10x the learning rate"


def test_report_flags_a_cell_where_the_allocator_never_moved_rank() -> None:
    recs = []
    for m in ("static", "dynamic"):
        recs.append(_rec(m, "t1", "val", 1e-3, 0, 0.8))
        recs += [_rec(m, "t1", "eval", 1e-3, s, 0.7 + 0.01 * s) for s in range(2)]
    meta = {"r2-all-epochs": {"budget": 2, "targets": ["query", "key", "value", "dense"], "regime": {"epochs": 3.0}}}
    frozen = report.cell_tables(recs)  # every layer of every run at rank 2
    assert frozen["allocation_moved"] == {"static": False, "dynamic": False}
    summary = report.summarize({"r2-all-epochs": frozen}, meta)
    assert summary["per_budget"]["2"]["dynamic_allocation_moved"] is False
    from rank_study_render import targets_lines

    assert any("never moved rank" in line for line in targets_lines({"summary": summary}))
    recs[-1]["result"]["ranks"] = {"a": 1, "b": 3}  # one dynamic run moved rank from one layer to another
    moved = report.cell_tables(recs)
    assert moved["allocation_moved"]["dynamic"] is True
    summary = report.summarize({"r2-all-epochs": moved}, meta)
    assert not any("never moved rank" in line for line in targets_lines({"summary": summary}))


def test_study_methods_do_not_follow_library_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study method is its written-out settings: changing LoRAConfig / DynamicConfig defaults changes neither its
    configuration nor the hash its cached runs are stored under (so a default change does not re-run the study)."""
    from dynalora.core import config as cfgmod

    task = tmp_path / "t"
    task.mkdir()
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        (task / name).write_text('{"text": "a", "label": 0}\n')
    settings = {"model": "minilm", "batch": 16, "max_length": 64}
    cell = rank_study.Cell(2, "all", "epochs")
    before = {m: rank_study.config_hash(rank_study.run_config(cell, m, "t", "eval", 1e-3, 0, tmp_path, settings))
              for m in ("static", "dynamic", "dyn-sens-r0")}
    # without any default, LoRAConfig / DynamicConfig can only be built from values the study writes out itself
    for cls in (cfgmod.LoRAConfig, cfgmod.DynamicConfig):
        monkeypatch.setattr(cls.__init__, "__defaults__", None)
        monkeypatch.setattr(cls.__init__, "__kwdefaults__", None)
    after = {m: rank_study.config_hash(rank_study.run_config(cell, m, "t", "eval", 1e-3, 0, tmp_path, settings))
             for m in ("static", "dynamic", "dyn-sens-r0")}
    assert before == after
    dyn = rank_study.run_config(cell, "dynamic", "t", "eval", 1e-3, 0, tmp_path, settings)
    assert dyn["dynamic"]["input_adaptive"] == "layer" and dyn["lora"]["min_rank"] == 1


def test_pooled_small_budgets_averages_cells_within_each_task() -> None:
    """Every projection at rank <= 4: per task, the mean over the cells of its paired difference, t over tasks;
    a cell at rank 8 or on query/value only stays out, and a cell lacking one of the methods is skipped."""
    def cell(diffs: dict[str, float], methods=("static", "dynamic")) -> dict:
        per_task = {m: {t: {"seeds": {s: 70.0 + (d if m == "dynamic" else 0.0) + s for s in range(3)}}
                        for t, d in diffs.items()} for m in methods}
        return {"per_task": per_task, "tasks": sorted(diffs)}

    allp = ["query", "key", "value", "dense"]
    cells = {"r1-all-epochs": cell({"a": 1.0, "b": 3.0}), "r2-all-epochs": cell({"a": 3.0, "b": 5.0}),
             "r4-all-epochs": cell({"a": 9.0, "b": 9.0}, methods=("static",)),  # no dynamic: skipped
             "r8-all-epochs": cell({"a": 50.0, "b": 50.0}), "r2-qv-epochs": cell({"a": -50.0, "b": -50.0})}
    meta = {"r1-all-epochs": {"budget": 1, "targets": allp}, "r2-all-epochs": {"budget": 2, "targets": allp},
            "r4-all-epochs": {"budget": 4, "targets": allp}, "r8-all-epochs": {"budget": 8, "targets": allp},
            "r2-qv-epochs": {"budget": 2, "targets": ["query", "value"]}}
    p = report.pooled_small_budgets(cells, meta)
    assert p["cells"] == ["r1-all-epochs", "r2-all-epochs", "r4-all-epochs"]
    c = p["comparisons"]["dynamic - static"]
    assert c["cells"] == ["r1-all-epochs", "r2-all-epochs"]
    assert c["per_task"] == {"a": pytest.approx(2.0), "b": pytest.approx(4.0)} and c["mean"] == pytest.approx(3.0)
    assert c["ci95"][0] == pytest.approx(3.0 - 12.706204736174698 * 1.0)  # t(1) over the two task means
    assert "dyn-sens-r0 - static" not in p["comparisons"]

    # the query/value pool takes the query/value cells at rank <= 4 only, and one cell alone is no pool
    qv = ["query", "value"]
    assert report.pooled_small_budgets(cells, meta, qv)["comparisons"] == {}
    cells |= {"r4-qv-epochs": cell({"a": 2.0, "b": 4.0}), "r8-qv-short": cell({"a": 90.0, "b": 90.0})}
    meta |= {"r4-qv-epochs": {"budget": 4, "targets": qv}, "r8-qv-short": {"budget": 8, "targets": qv}}
    q = report.pooled_small_budgets(cells, meta, qv)
    assert q["cells"] == ["r2-qv-epochs", "r4-qv-epochs"] and q["targets"] == qv
    assert q["comparisons"]["dynamic - static"]["per_task"] == {"a": pytest.approx(-24.0), "b": pytest.approx(-23.0)}
    assert report.pooled_small_budgets(cells, meta)["cells"] == p["cells"]  # the all-projection pool is unchanged
    from rank_study_render import pooled_lines

    assert any(ln.startswith("## Pooled: query/value at average rank <= 4") for ln in pooled_lines(
        {"summary": {"pooled_small_budgets_query_value": q}}))


def test_the_head_rate_pool_takes_every_cell_it_ran_in_whatever_the_targets() -> None:
    def cell(diffs: dict[str, float]) -> dict:
        per_task = {m: {t: {"seeds": {s: 70.0 + (d if m == "static-head10" else 0.0) + s for s in range(3)}}
                        for t, d in diffs.items()} for m in ("static", "static-head10")}
        return {"per_task": per_task, "tasks": sorted(diffs)}

    cells = {"r1-all-epochs": cell({"a": 2.0, "b": 4.0}), "r2-qv-epochs": cell({"a": 6.0, "b": 8.0}),
             "r8-qv-short": cell({"a": 99.0, "b": 99.0})}  # above the pooled budgets: out
    meta = {"r1-all-epochs": {"budget": 1, "targets": ["query", "key", "value", "dense"]},
            "r2-qv-epochs": {"budget": 2, "targets": ["query", "value"]}, "r8-qv-short": {"budget": 8, "targets": ["query", "value"]}}
    h = report.pooled_small_budgets(cells, meta, None)
    c = h["comparisons"]["static-head10 - static"]
    assert c["cells"] == ["r1-all-epochs", "r2-qv-epochs"] and list(h["comparisons"]) == ["static-head10 - static"]
    assert c["per_task"] == {"a": pytest.approx(4.0), "b": pytest.approx(6.0)} and c["mean"] == pytest.approx(5.0)
    assert report.pooled_small_budgets(cells, meta)["comparisons"] == {}  # not a pair of the targets' pools
    from rank_study_render import pooled_lines

    lines = pooled_lines({"summary": {"pooled_head_rate": h}})
    assert any(ln.startswith("## Pooled: the head-rate diagnostic") for ln in lines)
    assert any(ln.startswith("| static-head10 - static | r1-all-epochs, r2-qv-epochs | +4.00 | +6.00 |") for ln in lines)


def test_ablation_variants_are_compared_with_peft_adalora_in_cell_summary_and_pool() -> None:
    """The issue's "dynamic > PEFT AdaLoRA at equal budget" is asked of each candidate default too: an ablation row
    against PEFT AdaLoRA, its figure in the summary, and the pooled comparison over cells."""
    recs = []
    for m, bonus, src in (("static", 0.0, None), ("dynamic", 0.01, None), ("peft-adalora", 0.02, None),
                          ("dyn-sens-r0", 0.05, "dynamic")):
        recs.append(_rec(m, "t1", "val", 1e-3, 0, 0.8, 2))
        for t, extra in (("t1", 0.0), ("t2", 0.02)):
            for s in range(3):
                recs.append(_rec(m, t, "eval", 1e-3, s, 0.7 + bonus + (extra if m == "dyn-sens-r0" else 0.0) + 0.01 * s,
                                 2, src))
    for r in recs:
        if r["config"]["method"] == "peft-adalora":
            r["config"]["kind"] = "peft-adalora"
            del r["config"]["lora"], r["config"]["dynamic"], r["result"]["ranks"]
    cell = report.cell_tables(recs)
    row = cell["comparisons"]["dyn-sens-r0 r - PEFT AdaLoRA r (ablation)"]
    assert row["per_task"]["t1"]["mean"] == pytest.approx(3.0) and row["per_task"]["t2"]["mean"] == pytest.approx(5.0)
    assert cell["comparisons"]["dynamic r - PEFT AdaLoRA r"]["over_tasks"]["mean"] == pytest.approx(-1.0)
    allp = ["query", "key", "value", "dense"]
    meta = {"r2-all-epochs": {"budget": 2, "targets": allp, "regime": {"epochs": 3.0}}}
    s = report.summarize({"r2-all-epochs": cell}, meta)["per_budget"]["2"]
    assert s["dynamic_vs_peft_adalora_points"] == pytest.approx(-1.0)
    assert s["ablations"]["dyn-sens-r0"]["vs_peft_adalora_points"] == pytest.approx(4.0)
    assert s["live_params"]["peft-adalora"] == 2000
    meta["r4-all-epochs"] = {**meta["r2-all-epochs"], "budget": 4}  # the same runs again: a pool needs two cells
    pooled = report.pooled_small_budgets({"r2-all-epochs": cell, "r4-all-epochs": cell}, meta)["comparisons"]
    assert pooled["dyn-sens-r0 - peft-adalora"]["per_task"] == {"t1": pytest.approx(3.0), "t2": pytest.approx(5.0)}
    assert pooled["dynamic - peft-adalora"]["mean"] == pytest.approx(-1.0)
    render = __import__("rank_study_render")
    rows = {ln.split(" | ")[0][2:]: ln for ln in render.pooled_lines(
        {"summary": {"pooled_small_budgets": {"max_budget": 4, "comparisons": pooled}}}) if ln.startswith("| d")}
    assert "target >= +1" in rows["dynamic - static"]  # the +1-point verdict belongs to the static comparison only
    # t(1) over the task means 3 and 5, then what that spread (sd 1.41) can detect and the tasks 1 point needs
    assert rows["dyn-sens-r0 - peft-adalora"].endswith("| **+4.00 [-8.71, +16.71]** | 16.33 | 18 |")
    lines = "\n".join(__import__("rank_study_render").targets_lines({"summary": {"per_budget": {"2": s}}}))
    assert "vs PEFT AdaLoRA r: +4.00" in lines
    assert "> AdaLoRA: met on the point estimate only; the interval includes 0" in lines
    assert "dynamic vs PEFT AdaLoRA at equal budget: -1.00" in lines
    assert "(dynamic > PEFT AdaLoRA: not met, the interval is below 0)" in lines


def test_a_no_margin_target_is_met_plainly_only_when_its_interval_is_above_zero() -> None:
    goal = __import__("rank_study_render")._goal
    assert goal("x", 0.5, 0.1, 0.9) == "x: met, the interval is above 0"
    assert goal("x", 0.5, -0.3, 1.3) == "x: met on the point estimate only; the interval includes 0"
    assert goal("x", -0.5, -1.3, 0.3) == "x: not met on the point estimate; the interval includes 0"
    assert goal("x", -0.5, -0.9, -0.1) == "x: not met, the interval is below 0"
    assert goal("x", 0.0, -1.0, 1.0).startswith("x: met on") and goal("x", 0.0, -1.0, 1.0, strict=True).startswith("x: not met on")
    assert goal("x", 0.5, float("nan"), float("nan")) == "x: met on the point estimate (no interval)"


def test_lr_sweep_extends_past_an_edge_until_the_best_is_inside(tmp_path: Path) -> None:
    """A best rate at the top of the grid sweeps the next one up (1-3-10 series), and again while it stays at the
    edge, at most MAX_EDGE_STEPS times; a best rate inside the grid runs nothing more."""
    data = tmp_path / "data"
    (data / "t1").mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        (data / "t1" / name).write_text("{}\n")
    cell = rank_study.Cell(2, "all", "epochs")
    settings = {"model": "minilm", "batch": 16, "max_length": 64}

    def fake(peak: float):
        asked: list[float] = []

        def runner(cfgs):
            asked.extend(c["lr"] for c in cfgs)
            return [{"config": c, "result": {"metrics": {"accuracy": 1.0 - abs(math.log10(c["lr"] / peak))}}} for c in cfgs]
        return runner, asked

    runner, asked = fake(3e-2)  # best beyond the top: 1e-2 is the edge, 3e-2 is tried, then 1e-1 shows it is the peak
    recs = rank_study.swept_records(cell, "peft-adalora", ["t1"], data, settings, runner)
    assert asked == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1] and report.best_lrs(recs)["peft-adalora"] == 3e-2
    runner, asked = fake(1e-3)  # inside the grid: nothing more
    rank_study.swept_records(cell, "static", ["t1"], data, settings, runner)
    assert asked == [3e-4, 1e-3, 3e-3]
    runner, asked = fake(1e-6)  # far below: two steps down, then it stops
    rank_study.swept_records(cell, "static", ["t1"], data, settings, runner)
    assert asked == [3e-4, 1e-3, 3e-3, 1e-4, 3e-5] and rank_study.MAX_EDGE_STEPS == 2
    assert rank_study.lr_step(3e-3, up=True) == 1e-2 and rank_study.lr_step(1e-3, up=False) == 3e-4


_INTERVAL = r"[+-]\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]"


def _report_intervals(text: str) -> set[str]:
    """Every 'd [lo, hi]' a report states, also where it writes 'd points, 95% CI [lo, hi]'."""
    found = set(re.findall(_INTERVAL, text))
    for d, lo_hi in re.findall(r"([+-]\d+\.\d+) points(?: \[|, 95% CI \[)([+-]?\d+\.\d+, [+-]?\d+\.\d+)\]", text):
        found.add(f"{d} [{lo_hi}]")
    return found


def test_readme_rank_figures_are_the_reports() -> None:
    """Issue #11: README's account of dynamic LoRA quotes the committed report word for word in figures.
    Every seed-paired interval and every step-time ratio it gives must be one the report (or the timing files it
    cites) states, so a regenerated report that moves a figure, or a typo, fails here."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## How dynamic LoRA works here"):readme.index("## Command line")]
    results = root / "benchmarks" / "results"
    report_md = (results / "rank_study.md").read_text()

    quoted = re.findall(_INTERVAL, section)
    assert len(quoted) >= 20, "the README section no longer quotes the study's intervals"
    missing = sorted(set(quoted) - _report_intervals(report_md))
    assert not missing, f"README intervals not in benchmarks/results/rank_study.md: {missing}"

    ratios = set(re.findall(r"\d\.\d{3}x", report_md))
    for path in sorted((results / "rank_study_timing_r2").glob("*.json")):
        ratios |= {f"{v:.3f}x" for v in json.loads(path.read_text())["ratio_to_static"].values()}
    stated = set(re.findall(r"\d\.\d{3}x", section))
    assert stated, "the README section no longer quotes the measured step-time ratios"
    assert not sorted(stated - ratios), f"README step-time ratios not measured: {sorted(stated - ratios)}"


def test_eval_runs_at_another_rate_are_a_separate_check_not_a_comparison() -> None:
    """Evaluation runs of static 2r at a rate its sweep did not choose are shown apart (per-task means, and the
    default dynamic method minus them, seed-paired) and change no comparison."""
    recs = []
    for m, best in (("static", 3e-3), ("static-2r", 1e-3), ("dynamic", 3e-3)):
        for lr in (1e-3, 3e-3):
            recs.append(_rec(m, "t1", "val", lr, 0, 0.8 if lr == best else 0.6))
        for t, base in (("t1", 0.70), ("t2", 0.80)):
            for s in range(3):
                recs.append(_rec(m, t, "eval", best, s, base + 0.01 * s + (0.02 if m == "dynamic" else 0.0)))
    for t, base in (("t1", 0.75), ("t2", 0.90)):  # static 2r at the rate the others chose: better than at its own
        for s in range(3):
            recs.append(_rec("static-2r", t, "eval", 3e-3, s, base + 0.01 * s))
    cell = report.cell_tables(recs)
    assert cell["lrs"]["static-2r"] == 1e-3
    assert cell["comparisons"]["dynamic r - static 2r"]["over_tasks"]["mean"] == pytest.approx(2.0)  # chosen rate only
    [check] = cell["rate_checks"]
    assert (check["method"], check["lr"], check["chosen_lr"]) == ("static-2r", 3e-3, 1e-3)
    assert check["per_task"] == {"t1": pytest.approx(76.0), "t2": pytest.approx(91.0)}
    assert check["dynamic_minus_this"]["mean"] == pytest.approx((-3.0 + -8.0) / 2)
    from rank_study_render import _cell_md

    lines = _cell_md("r2-all-epochs", cell, {"budget": 2, "targets": ["query", "key", "value", "dense"],
                                             "regime": {"epochs": 3.0}})
    assert "| static-2r | 0.003 (0.001) | 76.00 | 91.00 | 83.50 | -5.50 [-37.27, +26.27] |" in lines


def test_targets_warn_when_static_at_twice_the_rank_scored_below_static() -> None:
    """'dynamic r >= static 2r' is only evidence of saved budget when doubling the rank did not hurt; when static 2r
    scored below static r, the target line says so, with its swept rates and the rate check."""
    from rank_study_render import targets_lines

    allp = ["query", "key", "value", "dense"]
    meta = {"r2-all-epochs": {"budget": 2, "targets": allp, "regime": {"epochs": 3.0}}}

    def lines(drop_2r: float, check: bool) -> list[str]:
        recs = []
        for m, best in (("static", 3e-3), ("static-2r", 1e-3), ("dynamic", 3e-3)):
            recs += [_rec(m, "t1", "val", lr, 0, 0.8 if lr == best else 0.6) for lr in (1e-3, 3e-3)]
            recs += [_rec(m, t, "eval", best, s, base + 0.01 * s - (drop_2r if m == "static-2r" else 0.0))
                     for t, base in (("t1", 0.70), ("t2", 0.80)) for s in range(3)]
        if check:
            recs += [_rec("static-2r", t, "eval", 3e-3, s, base + 0.01 * s) for t, base in (("t1", 0.71), ("t2", 0.81))
                     for s in range(3)]
        summary = report.summarize({"r2-all-epochs": report.cell_tables(recs)}, meta)
        return targets_lines({"summary": summary})

    assert not [ln for ln in lines(0.0, check=True) if "caution" in ln]  # doubling cost nothing: no caution
    [warn] = [ln for ln in lines(0.05, check=True) if "caution" in ln]
    assert "static at rank 4 scored below static at rank 2 here (-5.00 points; swept rates 0.001 against 0.003)" in warn
    assert warn.endswith("static at rank 4 trained at 0.003 instead: dynamic at rank 2 minus it -1.00 [-1.00, -1.00]")
    [warn] = [ln for ln in lines(0.05, check=False) if "caution" in ln]
    assert "trained at" not in warn


@pytest.mark.parametrize("check", ["bogus=1e-3", "static=fast", "static"])
def test_a_malformed_rate_check_is_refused_before_anything_is_written(check: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["rank_study.py", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                      "--rate-check", check])
    assert rank_study.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --rate-check takes METHOD=LR")
    assert not (tmp_path / "out").exists()
