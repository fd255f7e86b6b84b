"""`dynalora fuse train|eval` (registered by dynalora/cli.py through `register`).

    dynalora fuse train --runs runs/rt runs/bbc runs/intent runs/nli --out fuse/ [--top-p 0.6]
                        [--router-from OTHER_FUSE] [--multitask-steps 600] [--router-epochs 30] [--overwrite]
    dynalora fuse eval fuse/ [--max-eval 500] [--json eval.json [--overwrite]]

The flags of `fuse train` are generated from `FuseConfig` and `RouterConfig` (dynalora/flags.py, as
`dynalora train` does from TrainConfig): a FuseConfig field is `--field-name`, a RouterConfig field
`--router-field-name` (the router's seed is plain `--seed`). A user error prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dynalora.flags import add_dataclass_flags, dataclass_values

ROUTER_FLAGS = {"seed": "seed"}  # RouterConfig fields whose flag is not --router-<field>
NOT_CONFIG = ("func", "command", "fuse_command")  # namespace keys that are no FuseConfig / RouterConfig field


def register(subparsers: Any) -> None:
    from dynalora.fusion.config import FuseConfig, RouterConfig

    fuse = subparsers.add_parser("fuse", help="fuse several task adapters behind a router (DLP-LoRA style)",
                                 description="Train / evaluate a router over task adapters of one base model.")
    sub = fuse.add_subparsers(dest="fuse_command", required=True)
    t = sub.add_parser("train", help="train the router and write a fusion folder",
                       description="Train a router over task adapters of one base model and write a fusion folder.")
    add_dataclass_flags(t, FuseConfig, "", title="fusion", required=("runs", "out"))
    add_dataclass_flags(t, RouterConfig, "router", prefix="router-", renames=ROUTER_FLAGS)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="router accuracy and per-task accuracy: fused vs oracle vs multi-task vs base")
    e.add_argument("fuse", help="fusion folder written by `dynalora fuse train`")
    e.add_argument("--max-eval", type=int, default=500, help="evaluation examples per task (default 500)")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=_cmd_eval)


def config_from_args(args: argparse.Namespace) -> Any:
    """The FuseConfig of `fuse train`'s flags (validated as it is built); flags left out keep their defaults."""
    from dynalora.fusion.config import FuseConfig, RouterConfig

    values = dataclass_values(args, skip=NOT_CONFIG)
    router = RouterConfig(**values.pop("router", {}))
    return FuseConfig(**values, router=router)


def _cmd_train(args: argparse.Namespace) -> int:
    from dynalora.fusion.train import train_fusion

    out = train_fusion(config_from_args(args))
    info = json.loads((out / "fusion.json").read_text(encoding="utf-8"))
    r = info["router"]
    print(f"fusion of {len(info['tasks'])} adapters written to {out}")
    print(f"  router: {r['parameters']} parameters, held-out task accuracy {r['eval_accuracy']:.4f} "
          f"({r['eval_per_task']} per task), top-p {info['top_p']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dynalora.atomic import write_json
    from dynalora.errors import ConfigError
    from dynalora.fusion.evaluate import evaluate_fusion
    from dynalora.fusion.train import load_fusion

    if args.max_eval < 1:
        raise ConfigError(f"--max-eval must be >= 1, got {args.max_eval}")
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise ConfigError(f"--json file {args.json} already exists; pass --overwrite or choose another path")
    results = evaluate_fusion(load_fusion(args.fuse), max_eval=args.max_eval)
    cols = [c for c in ("router", "fused", "fused_top1", "oracle", "multitask", "base", "mean_kept_adapters")
            if c in results["mean"]]
    print("| task | n | metric | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for task, r in results.items():
        n = str(r.get("n", ""))
        metric = r.get("metric", "accuracy") if task != "mean" else ""
        print(f"| {task} | {n} | {metric} | " + " | ".join(f"{r[c]:.4f}" if c in r else "-" for c in cols) + " |")
    if any(r.get("metric") == "rougeL" for r in results.values()):
        print("generation tasks: ROUGE-L F (exact_match and bleu per variant in --json); the rest: accuracy")
    if args.json:
        write_json(args.json, results)
    return 0
