"""Step-time overhead of dynamic rank vs static LoRA at the same live budget (issue #11 target: <= 1.02x).

    .venv/bin/python benchmarks/rank_study_timing.py --data /tmp/rank_study/data [--rank 2 --targets all]

Every method is built exactly as `dynalora train` builds it (core/build.py) and trained in one process on the
same fixed batches; methods take turns, `--steps` steps each per round, for `--rounds` rounds after a
warm-up round (the order alternates between rounds), so the machine's background load hits every method
alike. The schedule is sized to the timed steps, so reallocations, statistics and fades all happen inside the
timed window. Writes benchmarks/results/rank_study_timing.json (raw step times, medians, ratios to static,
environment); rank_study.md quotes it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rank_study import ours_configs  # noqa: E402


def build(method: str, rank: int, targets: str, data_dir: Path, task: str, total: int) -> dict[str, Any]:
    from dynalora.core.batches import load_data
    from dynalora.core.build import build_model, build_optimizer
    from dynalora.core.config import TrainConfig

    lora, dynamic = ours_configs(method, rank, targets)
    cfg = TrainConfig(task=None, train_file=str(data_dir / task / "train.jsonl"), eval_file=str(data_dir / task / "eval.jsonl"),
                      out="-", steps=total, lr=3e-3, lora=lora, dynamic=dynamic)
    data = load_data(cfg)
    model, tok, ctrl, _ = build_model(cfg, data, total, torch.device("cpu"))
    opt, sched, _ = build_optimizer(model, cfg, total)
    return {"model": model, "tok": tok, "ctrl": ctrl, "opt": opt, "sched": sched, "data": data, "cfg": cfg, "step": 0}


def main() -> int:
    from dynalora.atomic import write_json
    from dynalora.core.batches import encode_batch, global_batch
    from dynalora.core.controller import LocalCollective

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/rank_study/data")
    ap.add_argument("--task", default="rotten_tomatoes")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--targets", default="all")
    ap.add_argument("--methods", default="static,dynamic,dyn-sens,dyn-sens-prune")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rank_study_timing.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    total = (args.rounds + 1) * args.steps
    built = {m: build(m, args.rank, args.targets, Path(args.data), args.task, total) for m in methods}
    first = built[methods[0]]
    data = first["data"]
    batches = [encode_batch(first["tok"], data.spec, [data.train[i] for i in global_batch(len(data.train), 16, 0, s)], 64)
               for s in range(args.steps)]
    samples: dict[str, list[float]] = {m: [] for m in methods}
    coll = LocalCollective()
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for m in (methods if rnd % 2 == 0 else methods[::-1]):
            b = built[m]
            b["model"].train()
            gc.collect()
            for batch in batches:
                t0 = time.perf_counter()
                b["model"](**batch).loss.backward()
                b["ctrl"].after_backward()
                b["opt"].step()
                b["sched"].step()
                b["opt"].zero_grad(set_to_none=True)
                b["step"] += 1
                b["ctrl"].step_end(b["step"], b["opt"], coll)
                if rnd > 0:
                    samples[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in samples.items()}
    from dynalora.edge_runtime.envinfo import PACKAGES, environment

    report = {"environment": environment((*PACKAGES, "peft")), "args": vars(args), "raw_s": samples,
              "median_s": med, "ratio_to_static": {m: med[m] / med["static"] for m in med} if "static" in med else {},
              "live_budget": {m: sum(built[m]["ctrl"].ranks().values()) for m in methods}}
    write_json(args.out, report)
    for m in methods:
        print(f"{m:>16}: median step {1000 * med[m]:.1f} ms" + (f"  ({med[m] / med['static']:.3f}x static)" if "static" in med else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
