"""The `dynalora` command line (also `python -m dynalora`): thin wrappers over the library.

    dynalora train  --model minilm --task rotten_tomatoes --out runs/rt [--config f.yaml] ...
    dynalora export merged|adapters ...        (see dynalora.export)
    dynalora bench  EXPORT ...                 (see dynalora.edge_runtime)
    dynalora cluster up|down                   (see dynalora.distributed)
    dynalora fuse   train|eval ...             (see dynalora.fusion)
    dynalora tasks                             list built-in tasks

Flags of `train` are generated from the TrainConfig / LoRAConfig / DynamicConfig dataclasses (dynalora/flags.py,
which `fuse train` uses too), so flags, YAML and the Python API cannot drift apart. Precedence: flag > YAML > default.
This module only dispatches: each package registers its own subcommands through `register(subparsers)`.
A user error prints one line on stderr and exits with code 2; so does a subcommand run on the runtime-only
install (`pip install dynalora`) that needs the training stack (`pip install 'dynalora[train]'`).
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

from dynalora.errors import TRAIN_INSTALL, DynaloraError
from dynalora.flags import add_dataclass_flags, dataclass_values

NOT_CONFIG = ("func", "config_file", "command", "static")  # `train` arguments that are no TrainConfig field
# Import names of the `train` extra (pyproject.toml). The runtime-only install (`pip install dynalora`) builds
# every parser (registering imports none of these) and runs `bench`; a subcommand that imports one of them
# there ends with one line naming the extra, not a traceback.
TRAINING_STACK_MODULES = frozenset(("torch", "transformers", "peft", "safetensors", "accelerate", "onnx", "onnxscript",
                                    "optimum", "ray", "yaml", "tqdm", "matplotlib"))


def _train_parser(sub: Any) -> None:
    from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig

    p = sub.add_parser("train", help="fine-tune with dynamic LoRA", description="Fine-tune a model with dynamic LoRA.")
    p.add_argument("--config", dest="config_file", default=None, help="YAML file with the same options (flags win)")
    p.add_argument("--static", action="store_true", default=False, help="static LoRA baseline: no reallocation, no input statistics")
    add_dataclass_flags(p, TrainConfig, "")
    add_dataclass_flags(p, LoRAConfig, "lora")
    add_dataclass_flags(p, DynamicConfig, "dynamic")
    p.set_defaults(func=_cmd_train)


def config_from_args(args: argparse.Namespace) -> Any:
    from dynalora.core.config import SECTIONS, TrainConfig

    # what the user actually set (flags, then YAML keys below; not defaults): --resume refuses those that differ
    nested = dataclass_values(args, skip=NOT_CONFIG)
    if args.static:
        nested.setdefault("dynamic", {}).update(reallocate=False, input_adaptive="off")
    data: dict[str, Any] = {}
    if args.config_file:
        data = TrainConfig.from_yaml(args.config_file).to_dict()
    for key, value in nested.items():  # flag > YAML
        if key in SECTIONS:
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    if data.get("train_file") and "task" not in data:
        data["task"] = None  # own files: the task is named after the file, labels are not checked against a built-in

    cfg = TrainConfig.from_dict(data)
    from dynalora.core.resume import explicit_keys

    if args.config_file:
        import yaml

        raw = yaml.safe_load(open(args.config_file, encoding="utf-8")) or {}
        cfg.explicit_keys = explicit_keys(raw) | explicit_keys(nested)  # type: ignore[attr-defined]
    else:
        cfg.explicit_keys = explicit_keys(nested)  # type: ignore[attr-defined]
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from dynalora.core.config import frozen_allocation
    from dynalora.distributed.launcher import in_torchrun, run_training

    note = frozen_allocation(cfg.lora, cfg.dynamic)
    if note and os.environ.get("RANK", "0") == "0":  # one line per run, not one per worker
        print(f"dynalora: note: {note}", file=sys.stderr, flush=True)

    if cfg.backend == "local" and not in_torchrun():
        from dynalora.core.train import train

        result = train(cfg)  # validates before anything is written
    else:
        result = run_training(cfg)
    if result is not None and result.metrics:
        _print_summary(result, cfg.lora.rank)
    return 0


def _print_summary(result: Any, average_rank: int) -> None:
    from dynalora.core.budget import summary_lines
    from dynalora.core.plots import short_name

    print("\n== evaluation ==")
    for k, v in result.metrics.items():
        print(f"  {k:>11}: {v}" if isinstance(v, int) else f"  {k:>11}: {v:.4f}")
    print("== final rank per layer ==")
    print("  " + "  ".join(f"{short_name(n)}={r}" for n, r in result.ranks.items()))
    print("== rank budget ==")
    for line in summary_lines(result.ranks, average_rank):
        print("  " + line)
    print(f"== outputs ==\n  adapter: {result.out / 'adapter'}\n  heatmap: {result.out / 'allocation.png'}\n  metrics: {result.out / 'metrics.jsonl'}")


def _tasks_parser(sub: Any) -> None:
    p = sub.add_parser("tasks", help="list the built-in task names")
    p.set_defaults(func=lambda a: print("\n".join(__import__("dynalora.core.data", fromlist=["list_tasks"]).list_tasks())) or 0)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line on stderr, exit code 2 (sub-parsers inherit it)."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"dynalora: error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynalora", description="Dynamic LoRA: train, export, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _tasks_parser(sub)
    for module in ("dynalora.export.cli", "dynalora.edge_runtime.cli", "dynalora.distributed.cli", "dynalora.fusion.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a flag argparse refused (2, one line printed by _Parser)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except DynaloraError as exc:
        print(f"dynalora: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dynalora: interrupted", file=sys.stderr)
        return 130
    except FileExistsError as exc:
        print(f"dynalora: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in TRAINING_STACK_MODULES:
            raise
        print(f"dynalora: error: `dynalora {args.command}` needs the training stack ({missing} is not installed): "
              f"{TRAIN_INSTALL}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
