"""Rank study (issue #11): does moving rank between layers beat a fixed rank at the same live budget?

Regenerate the report from the cached runs (and run whatever the plan still lacks):

    .venv/bin/python benchmarks/rank_study_data.py --out /tmp/rank_study/data \
        --bigbench-dir BENCHMARK_TASKS_DIR --vader-sdist vaderSentiment-3.3.2.tar.gz
    .venv/bin/python benchmarks/rank_study.py --data /tmp/rank_study/data \
        --budgets 2 --targets all --regimes epochs --jobs 2
    .venv/bin/python benchmarks/rank_study.py --report-only        # rebuild the report from the cache

Design
- Every run is one configuration (task, split, method, rank, target modules, regime, learning rate, seed,
  and the full resolved LoRA / dynamics settings). Its result is cached in
  benchmarks/results/rank_study_runs/<sha256 of the configuration>.json, so the study grows over several
  sessions, a cut-short run loses nothing, and anyone can rebuild the report from the cache.
- Our methods train through `dynalora.core.train.train` (exactly what `dynalora train` runs); PEFT LoRA and
  AdaLoRA train through the same data order, optimizer (AdamW), warm-up / linear-decay schedule, encoding and
  evaluation code, with PEFT's own layers.
- Learning rates: each baseline (static r, static 2r, the default dynamic, PEFT LoRA, PEFT AdaLoRA) is swept
  per cell on the sweep tasks' validation files (carved from the training split; seed 0); the best mean
  validation score wins. A best rate at the edge of the grid extends the sweep one step beyond it (1-3-10
  series), up to MAX_EDGE_STEPS times. Ablation variants of dynamic use the default dynamic's learning rate.
- Reported figures come only from the evaluation files, seeds 0..S-1; differences are seed-paired.
- `static-head10` (and `dynamic-head10`, `dyn-sens-r0-head10`) train the task head at 10x the method's swept rate
  (`--head-lr`), the adapters at the rate itself: a diagnostic of whether a lead (PEFT AdaLoRA's swept rate is 10x
  LoRA's, on its head too) comes from the head's training rather than from where rank goes.
- `--rate-check static-2r=3e-3` also runs a method's evaluation runs at a rate its sweep did not choose (a check of
  that choice when the sweep's one seed looks decisive); the report shows them per cell, apart from every comparison.
- Live trainable parameters: the tensors that remain in the saved adapter (live rank components and the task
  head); for AdaLoRA, the unmasked singular triplets.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
import rank_study_report  # noqa: E402

STUDY_VERSION = 1
HERE = Path(__file__).parent
CACHE = HERE / "results" / "rank_study_runs"
TARGETS = {"qv": ["query", "value"], "all": rank_study_report.ALL_PROJECTIONS}
REGIMES = {"short": {"steps": 100}, "epochs": {"epochs": 3.0}}
LR_GRID = {"ours": [3e-4, 1e-3, 3e-3], "peft-lora": [3e-4, 1e-3, 3e-3], "peft-adalora": [1e-3, 3e-3, 1e-2]}
MAX_EDGE_STEPS = 2  # a best rate at the edge of the tried rates extends them by one step, at most this often
STATIC = {"reallocate": False, "input_adaptive": "off"}
# Every method is these settings plus its own overrides, written out rather than taken from today's
# LoRAConfig / DynamicConfig defaults: a change of the library's defaults (issue #11 item 3) must not change
# what a study method means, nor the hashes of its cached runs (they are the values the defaults had when the
# study began; tests/benchmarks/test_rank_study.py checks a cached hash).
STUDY_LORA = {"min_rank": 1, "max_rank": None, "alpha": 16.0, "dropout": 0.0}
STUDY_DYNAMIC = {"reallocate": True, "input_adaptive": "layer", "input_weight": 0.5, "warmup_frac": 0.1,
                 "final_frac": 0.8, "interval_frac": 0.05, "ema": 0.7, "sketch_dim": 64, "stat_stride": 4,
                 "example_gamma": 1.0, "example_min_frac": 0.25, "budget_start": 1.0}

# method -> how to build it; "lr_from" = use that method's swept learning rate
METHODS: dict[str, dict[str, Any]] = {
    "static": {"kind": "ours", "dynamic": STATIC},
    "static-2r": {"kind": "ours", "rank_mult": 2, "dynamic": STATIC},
    "dynamic": {"kind": "ours", "dynamic": {}},
    "peft-lora": {"kind": "peft-lora"},
    "peft-adalora": {"kind": "peft-adalora"},
    # ablations: one mechanism per row, learning rate of the default dynamic
    "dyn-mix": {"kind": "ours", "dynamic": {"input_adaptive": "layer", "input_weight": 0.5}, "lr_from": "dynamic"},
    "dyn-sens": {"kind": "ours", "dynamic": {"input_adaptive": "off"}, "lr_from": "dynamic"},
    "dyn-sens-r0": {"kind": "ours", "dynamic": {"input_adaptive": "off"}, "lora": {"min_rank": 0, "max_rank_mult": 4},
                    "lr_from": "dynamic"},
    "dyn-sens-prune": {"kind": "ours", "dynamic": {"input_adaptive": "off", "budget_start": 1.5}, "lr_from": "dynamic"},
    # a diagnostic, not an allocation: static LoRA with the task head at 10x its rate (PEFT AdaLoRA's swept rate is
    # 10x LoRA's and drives the fresh head too; does that, rather than where it puts rank, explain its lead?)
    "static-head10": {"kind": "ours", "dynamic": STATIC, "head_lr_mult": 10, "lr_from": "static"},
    # ... and does allocation add anything once the head trains at that rate? (compared with static-head10)
    "dynamic-head10": {"kind": "ours", "dynamic": {}, "head_lr_mult": 10, "lr_from": "dynamic"},
    "dyn-sens-r0-head10": {"kind": "ours", "dynamic": {"input_adaptive": "off"}, "lora": {"min_rank": 0, "max_rank_mult": 4},
                           "head_lr_mult": 10, "lr_from": "dynamic"},
}
SWEPT = ("static", "static-2r", "dynamic", "peft-lora", "peft-adalora")


@dataclasses.dataclass(frozen=True)
class Cell:
    rank: int
    targets: str
    regime: str

    @property
    def key(self) -> str:
        return f"r{self.rank}-{self.targets}-{self.regime}"


# ---- configurations ---------------------------------------------------------------------------------------

def _file_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("train.jsonl", "val.jsonl", "eval.jsonl"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def ours_configs(method: str, budget: int, targets: str) -> tuple[Any, Any]:
    """(LoRAConfig, DynamicConfig) of one of our methods at average rank `budget`."""
    from dynalora.core.config import DynamicConfig, LoRAConfig

    spec = METHODS[method]
    rank = budget * spec.get("rank_mult", 1)
    lora_extra = {**STUDY_LORA, **spec.get("lora", {})}
    mult = lora_extra.pop("max_rank_mult", None)
    if mult:
        lora_extra["max_rank"] = mult * rank
    return (LoRAConfig(rank=rank, target_modules=TARGETS[targets], **lora_extra),
            DynamicConfig(**{**STUDY_DYNAMIC, **spec["dynamic"]}))


def run_config(cell: Cell, method: str, task: str, split: str, lr: float, seed: int, data: Path,
               settings: dict[str, Any]) -> dict[str, Any]:
    """The full configuration of one run: everything that can change its result."""
    spec = METHODS[method]
    rank = cell.rank * spec.get("rank_mult", 1)
    cfg: dict[str, Any] = {
        "study_version": STUDY_VERSION, "task": task, "data_digest": _file_digest(data / task), "split": split,
        "cell": cell.key, "budget": cell.rank, "method": method, "lr_from": spec.get("lr_from"),
        "kind": spec["kind"], "rank": rank, "targets": TARGETS[cell.targets],
        "regime": REGIMES[cell.regime], "lr": lr, "seed": seed, **settings,
    }
    if "head_lr_mult" in spec:  # only where set: the hashes of every other method's runs stay as they were
        cfg["head_lr_mult"] = spec["head_lr_mult"]
    if spec["kind"] == "ours":
        lora, dynamic = ours_configs(method, cell.rank, cell.targets)
        cfg["lora"] = dataclasses.asdict(lora)
        cfg["dynamic"] = dataclasses.asdict(dynamic)  # resolved: a default change re-runs
    elif spec["kind"] == "peft-adalora":
        cfg["peft"] = {"init_r": (3 * rank + 1) // 2, "target_r": rank, "lora_alpha": 16, "tinit_frac": 0.1,
                       "tfinal_frac": 0.2, "deltaT_frac": 0.05, "orth_reg_weight": 0.5}
    else:
        cfg["peft"] = {"r": rank, "lora_alpha": 16}
    return cfg


def config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:24]


def cached(cfg: dict[str, Any]) -> dict[str, Any] | None:
    path = CACHE / f"{config_hash(cfg)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---- one run (in a worker process) -----------------------------------------------------------------------

def _train_config(cfg: dict[str, Any], data: Path, out: Path) -> Any:
    from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig

    folder = data / cfg["task"]
    eval_file = folder / ("val.jsonl" if cfg["split"] == "val" else "eval.jsonl")
    regime = cfg["regime"]
    return TrainConfig(
        model=cfg["model"], task=None, train_file=str(folder / "train.jsonl"), eval_file=str(eval_file), out=str(out),
        steps=regime.get("steps"), epochs=regime.get("epochs", 1.0), batch_size=cfg["batch"], lr=cfg["lr"],
        head_lr=cfg["lr"] * cfg["head_lr_mult"] if "head_lr_mult" in cfg else None,
        max_length=cfg["max_length"], seed=cfg["seed"], progress=False, log_every=1_000_000, threads=1,
        lora=LoRAConfig(**cfg["lora"]) if "lora" in cfg else LoRAConfig(),
        dynamic=DynamicConfig(**cfg["dynamic"]) if "dynamic" in cfg else DynamicConfig(),
    )


def _run_ours(cfg: dict[str, Any], data: Path, tmp: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from dynalora.core.train import train

    res = train(_train_config(cfg, data, tmp / "run"))
    with safe_open(str(res.out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        live = sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape()[1] if len(f.get_slice(k).get_shape()) > 1 else 1)
                   for k in f.keys())
    return {"metrics": res.metrics, "live_params": int(live), "ranks": res.ranks, "steps": res.steps,
            "median_step_s": statistics.median(res.step_times[5:]) if len(res.step_times) > 6 else None,
            "final_loss": statistics.fmean(res.losses[-10:])}


def _run_peft(cfg: dict[str, Any], data: Path) -> dict[str, Any]:
    import torch
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    from dynalora.core.batches import encode_batch, global_batch, load_data, total_steps
    from dynalora.core.build import build_optimizer
    from dynalora.core.evaluate import evaluate
    from dynalora.core.models import load_task_model, load_tokenizer, resolve_model_path

    tcfg = _train_config(cfg, data, Path("-"))
    torch.set_num_threads(1)
    task = load_data(tcfg)
    steps = total_steps(tcfg, len(task.train))
    path = resolve_model_path(tcfg.model)
    tok = load_tokenizer(path)
    model = load_task_model(path, task.spec.num_labels, task.spec.problem, seed=tcfg.seed)
    torch.manual_seed(tcfg.seed)
    p = cfg["peft"]
    if cfg["kind"] == "peft-lora":
        pcfg: Any = LoraConfig(task_type="SEQ_CLS", r=p["r"], lora_alpha=p["lora_alpha"], target_modules=cfg["targets"])
    else:
        pcfg = AdaLoraConfig(task_type="SEQ_CLS", init_r=p["init_r"], target_r=p["target_r"], lora_alpha=p["lora_alpha"],
                             target_modules=cfg["targets"], total_step=steps, tinit=int(p["tinit_frac"] * steps),
                             tfinal=int(p["tfinal_frac"] * steps), deltaT=max(1, int(p["deltaT_frac"] * steps)),
                             orth_reg_weight=p["orth_reg_weight"])
    model = get_peft_model(model, pcfg)
    opt, sched, _ = build_optimizer(model, tcfg, steps)
    model.train()
    losses, times = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        batch = encode_batch(tok, task.spec, [task.train[i] for i in global_batch(len(task.train), tcfg.batch_size, tcfg.seed, step)], tcfg.max_length)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        if cfg["kind"] == "peft-adalora":
            model.base_model.update_and_allocate(step)
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    metrics = evaluate(model, tok, task, tcfg)
    return {"metrics": metrics, "live_params": _peft_live_params(model), "steps": steps,
            "median_step_s": statistics.median(times[5:]) if len(times) > 6 else None,
            "final_loss": statistics.fmean(losses[-10:])}


def _peft_live_params(model: Any) -> int:
    """Trainable parameters that still act: LoRA A/B (and AdaLoRA's unmasked triplets) plus the head."""
    import torch

    live = 0
    for name, prm in model.named_parameters():
        if not prm.requires_grad or "lora_" in name:
            continue
        live += prm.numel()
    for mod in model.modules():
        a = getattr(mod, "lora_A", None)
        if a is None or not hasattr(a, "keys") or "default" not in a:
            continue
        pa, pb = a["default"], mod.lora_B["default"]
        wa = pa if isinstance(pa, torch.Tensor) else pa.weight  # AdaLoRA: parameters; LoRA: nn.Linear
        wb = pb if isinstance(pb, torch.Tensor) else pb.weight
        e = getattr(mod, "lora_E", None)
        if e is not None and "default" in e:  # AdaLoRA: only unmasked singular triplets act
            live += int((e["default"] != 0).sum()) * (wa.shape[1] + wb.shape[0] + 1)
        else:
            live += wa.shape[0] * (wa.shape[1] + wb.shape[0])
    return int(live)


def execute(cfg: dict[str, Any], data: str) -> dict[str, Any]:
    """Run one configuration and write its cache file (atomically); returns the record."""
    import torch

    from dynalora.atomic import write_json

    torch.set_num_threads(1)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rank_study_") as tmp:
        try:
            out = _run_ours(cfg, Path(data), Path(tmp)) if cfg["kind"] == "ours" else _run_peft(cfg, Path(data))
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not cached
            return {"config": cfg, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    record = {"config": cfg, "result": out, "wall_s": round(time.time() - t0, 1),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(CACHE / f"{config_hash(cfg)}.json", record)
    return record


# ---- the plan ---------------------------------------------------------------------------------------------

def run_all(configs: list[dict[str, Any]], data: Path, jobs: int, label: str) -> list[dict[str, Any]]:
    todo = [c for c in configs if cached(c) is None]
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {len(configs)} runs, {len(configs) - len(todo)} cached, {len(todo)} to run",
          flush=True)
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(execute, c, str(data)): c for c in todo}
            for n, fut in enumerate(cf.as_completed(futures), 1):
                rec = fut.result()
                c = rec["config"]
                what = f"{c['task']} {c['method']} r={c['rank']} lr={c['lr']:g} seed={c['seed']} {c['split']}"
                if "error" in rec:
                    print(f"  FAILED {what}: {rec['error']}", flush=True)
                else:
                    m = rec["result"]["metrics"]
                    score = m.get("accuracy", m.get("pearson"))
                    print(f"  [{time.strftime('%H:%M:%S')}] {n}/{len(todo)} {what}: {score:.4f} ({rec['wall_s']:.0f} s)", flush=True)
    return [r for r in (cached(c) for c in configs) if r is not None]


def sweep_configs(cell: Cell, methods: list[str], tasks: list[str], data: Path, settings: dict[str, Any],
                  lrs: list[float] | None = None) -> list[dict[str, Any]]:
    out = []
    for method in methods:
        for lr in lrs or LR_GRID[METHODS[method]["kind"]]:
            out += [run_config(cell, method, t, "val", lr, 0, data, settings) for t in tasks]
    return out


def lr_step(lr: float, up: bool) -> float:
    """The neighbour of `lr` in the 1-3-10 series of the grids (1e-3 <-> 3e-3 <-> 1e-2)."""
    ones = f"{lr:.0e}".startswith("1")
    return float(f"{lr * ((3 if ones else 10 / 3) if up else (1 / (10 / 3) if ones else 1 / 3)):.0e}")


Runner = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def swept_records(cell: Cell, method: str, tasks: list[str], data: Path, settings: dict[str, Any],
                  runner: Runner) -> list[dict[str, Any]]:
    """A method's sweep records: its grid, then one step beyond whichever edge of the tried rates is best, until
    the best is inside them (at most MAX_EDGE_STEPS steps), so that "each at its own best learning rate" does
    not stop at the grid. `runner` runs (or only looks up) configurations and returns the records it has."""
    recs = runner(sweep_configs(cell, [method], tasks, data, settings))
    for _ in range(MAX_EDGE_STEPS):
        if not recs:
            break
        tried = sorted({r["config"]["lr"] for r in recs})
        best = rank_study_report.best_lrs(recs)[method]
        if tried[0] < best < tried[-1]:
            break
        new = runner(sweep_configs(cell, [method], tasks, data, settings, [lr_step(best, up=best == tried[-1])]))
        if not new:
            break
        recs += new
    return recs


def record_tasks(out: Path, data: Path, tasks: list[str]) -> None:
    """Keep each task's data description (source, split sizes, digest) beside the cache, for the report."""
    from dynalora.atomic import write_json

    path = out / "rank_study_tasks.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for t in tasks:
        known[t] = {**json.loads((data / t / "meta.json").read_text()), "data_digest": _file_digest(data / t)}
    write_json(path, known)


def _cached_only(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in (cached(c) for c in configs) if r is not None]


def _sweep_runner(cell: Cell, method: str, data: Path, jobs: int) -> Runner:
    def run(cfgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rates = ", ".join(f"{lr:g}" for lr in sorted({c["lr"] for c in cfgs}))
        return run_all(cfgs, data, jobs, f"{cell.key} LR sweep {method} at {rates}")
    return run


def all_sweeps(cell: Cell, tasks: list[str], data: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cached sweep run of this cell (the learning rates of methods swept in earlier tiers)."""
    return [r for m in SWEPT for r in swept_records(cell, m, tasks, data, settings, _cached_only)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/rank_study/data", help="folder written by rank_study_data.py")
    ap.add_argument("--tasks", default="rotten_tomatoes,bbc_news,intent,tweets_sst2,epistemic_rte,movie_valence")
    ap.add_argument("--sweep-tasks", default="rotten_tomatoes,epistemic_rte")
    ap.add_argument("--budgets", default="2", help="average ranks, comma-separated (1,2,4,8)")
    ap.add_argument("--targets", default="all", help=f"comma-separated: {', '.join(TARGETS)}")
    ap.add_argument("--regimes", default="epochs", help=f"comma-separated: {', '.join(REGIMES)}")
    ap.add_argument("--methods", default="static,dynamic,static-2r,dyn-sens,dyn-sens-prune;peft-adalora,peft-lora,dyn-sens-r0",
                    help="tiers separated by ';' (each tier is swept and run before the next: the essential "
                         "comparisons first), methods by ','")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 torch thread each)")
    ap.add_argument("--rate-check", action="append", default=[], metavar="METHOD=LR",
                    help="also run METHOD's evaluation runs at LR in every cell (shown apart; repeatable)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the cache; run nothing")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    data = Path(args.data)
    settings = {"model": "minilm", "batch": 16, "max_length": 64}
    cells = [Cell(int(b), t, g) for b in args.budgets.split(",") for t in args.targets.split(",") for g in args.regimes.split(",")]
    tasks = args.tasks.split(",")
    if args.report_only:
        rank_study_report.write(Path(args.out), CACHE)
        return 0
    try:
        checks = [(m, float(lr)) for m, _, lr in (c.partition("=") for c in args.rate_check)]
    except ValueError:
        checks = None
    if checks is None or any(m not in METHODS for m, _ in checks):
        print(f"error: --rate-check takes METHOD=LR with METHOD one of {', '.join(METHODS)}: {args.rate_check}",
              file=sys.stderr)
        return 2
    missing = [t for t in tasks if not (data / t / "train.jsonl").is_file()]
    if missing:
        print(f"error: no task files for {', '.join(missing)} under {data}; run benchmarks/rank_study_data.py first",
              file=sys.stderr)
        return 2
    record_tasks(Path(args.out), data, tasks)
    tiers = [t.split(",") for t in args.methods.split(";")]
    for cell in cells:
        for tier in tiers:  # each tier: its learning-rate sweep, then its evaluation runs (seed-major)
            swept = [m for m in tier if "lr_from" not in METHODS[m]]
            for m in swept:  # runs what the cache lacks; the rates then come from every cached sweep of the cell
                swept_records(cell, m, args.sweep_tasks.split(","), data, settings, _sweep_runner(cell, m, data, args.jobs))
            lrs = rank_study_report.best_lrs(all_sweeps(cell, args.sweep_tasks.split(","), data, settings))
            print(f"{cell.key} learning rates: {lrs}", flush=True)
            main_cfgs = [run_config(cell, m, t, "eval", lrs[METHODS[m].get("lr_from") or m], s, data, settings)
                         for s in range(args.seeds) for t in tasks for m in tier]
            run_all(main_cfgs, data, args.jobs, f"{cell.key} evaluation runs {','.join(tier)}")
            rank_study_report.write(Path(args.out), CACHE)
        for m, lr in checks:  # a sweep's choice checked: the same evaluation runs at another rate
            run_all([run_config(cell, m, t, "eval", lr, s, data, settings) for s in range(args.seeds) for t in tasks],
                    data, args.jobs, f"{cell.key} rate check {m} at {lr:g}")
            rank_study_report.write(Path(args.out), CACHE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
