"""`dynalora fuse train|eval` (registered by dynalora/cli.py through `register`).

    dynalora fuse train --runs runs/rt runs/bbc runs/intent runs/nli --out fuse/ [--top-p 0.6]
                        [--router-from OTHER_FUSE] [--multitask-steps 600] [--router-epochs 30] [--overwrite]
    dynalora fuse eval fuse/ [--max-eval 500] [--json eval.json [--overwrite]]

Flags map onto `FuseConfig` / `RouterConfig`; a user error prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    fuse = subparsers.add_parser("fuse", help="fuse several task adapters behind a router (DLP-LoRA style)",
                                 description="Train / evaluate a router over task adapters of one base model.")
    sub = fuse.add_subparsers(dest="fuse_command", required=True)
    t = sub.add_parser("train", help="train the router and write a fusion folder")
    t.add_argument("--runs", nargs="+", required=True, help="run folders (one task each, same base model)")
    t.add_argument("--out", required=True, help="fusion folder to create")
    t.add_argument("--top-p", type=float, default=None, help="kept probability mass, in (0, 1] (default 0.6)")
    t.add_argument("--router-from", default=None, help="reuse the router of this fusion folder (same tasks)")
    t.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the runs' largest)")
    t.add_argument("--multitask-steps", type=int, default=0, help="also train the one-adapter-for-all baseline")
    t.add_argument("--router-hidden", type=int, default=None, help="router MLP hidden size (default 256)")
    t.add_argument("--router-epochs", type=int, default=None, help="router training epochs (default 30)")
    t.add_argument("--router-per-task", type=int, default=None, help="router training examples per task (default 1000)")
    t.add_argument("--seed", type=int, default=None, help="router seed (default 0)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="router accuracy and per-task accuracy: fused vs oracle vs multi-task vs base")
    e.add_argument("fuse", help="fusion folder written by `dynalora fuse train`")
    e.add_argument("--max-eval", type=int, default=500, help="evaluation examples per task (default 500)")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=_cmd_eval)


def _cmd_train(args: argparse.Namespace) -> int:
    from dynalora.core.fusion_train import FuseConfig, train_fusion
    from dynalora.core.router import DEFAULT_P, RouterConfig

    router = RouterConfig()
    for flag, name in (("router_hidden", "hidden"), ("router_epochs", "epochs"), ("router_per_task", "per_task"),
                       ("seed", "seed")):
        if getattr(args, flag) is not None:
            setattr(router, name, getattr(args, flag))
    cfg = FuseConfig(runs=list(args.runs), out=args.out, top_p=DEFAULT_P if args.top_p is None else args.top_p,
                     router_from=args.router_from, max_length=args.max_length, multitask_steps=args.multitask_steps,
                     overwrite=args.overwrite, router=router)
    out = train_fusion(cfg)
    info = json.loads((out / "fusion.json").read_text(encoding="utf-8"))
    r = info["router"]
    print(f"fusion of {len(info['tasks'])} adapters written to {out}")
    print(f"  router: {r['parameters']} parameters, held-out task accuracy {r['eval_accuracy']:.4f} "
          f"({r['eval_per_task']} per task), top-p {info['top_p']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from dynalora.core.atomic import write_json
    from dynalora.core.errors import ConfigError
    from dynalora.core.fusion_train import evaluate_fusion, load_fusion

    if args.max_eval < 1:
        raise ConfigError(f"--max-eval must be >= 1, got {args.max_eval}")
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise ConfigError(f"--json file {args.json} already exists; pass --overwrite or choose another path")
    results = evaluate_fusion(load_fusion(args.fuse), max_eval=args.max_eval)
    cols = [c for c in ("router", "fused", "fused_top1", "oracle", "multitask", "base", "mean_kept_adapters")
            if c in results["mean"]]
    print("| task | n | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for task, r in results.items():
        n = str(r.get("n", ""))
        print(f"| {task} | {n} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    if args.json:
        write_json(args.json, results)
    return 0
