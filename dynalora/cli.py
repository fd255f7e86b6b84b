"""The `dynalora` command line (also `python -m dynalora`): thin wrappers over the library.

    dynalora train  --model minilm --task rotten_tomatoes --out runs/rt [--config f.yaml] ...
    dynalora export merged|adapters ...        (see dynalora.export)
    dynalora bench  EXPORT ...                 (see dynalora.edge_runtime)
    dynalora cluster up|down                   (see dynalora.distributed)
    dynalora tasks                             list built-in tasks

Flags of `train` are generated from the TrainConfig / LoRAConfig / DynamicConfig dataclasses,
so flags, YAML and the Python API cannot drift apart. Precedence: flag > YAML > default.
A user error prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

from dynalora.core.errors import DynaloraError

def _add_dataclass_flags(parser: argparse.ArgumentParser, kind: type, section: str) -> None:
    from dynalora.core.config import flag_name

    group = parser.add_argument_group(section or "training")
    for f in dataclasses.fields(kind):
        if f.name in ("lora", "dynamic"):
            continue
        flag = flag_name(section, f.name)
        dest = f"{section}.{f.name}" if section else f.name
        help_text = f.metadata.get("help", "")
        ftype = str(f.type)
        if ftype.startswith("bool"):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif "list[str]" in ftype:
            group.add_argument(flag, dest=dest, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            conv = int if ftype.startswith("int") else float if ftype.startswith("float") else str
            group.add_argument(flag, dest=dest, type=conv, default=argparse.SUPPRESS, help=help_text)


def _train_parser(sub: Any) -> None:
    from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig

    p = sub.add_parser("train", help="fine-tune with dynamic LoRA", description="Fine-tune a model with dynamic LoRA.")
    p.add_argument("--config", dest="config_file", default=None, help="YAML file with the same options (flags win)")
    p.add_argument("--static", action="store_true", default=False, help="static LoRA baseline: no reallocation, no input statistics")
    _add_dataclass_flags(p, TrainConfig, "")
    _add_dataclass_flags(p, LoRAConfig, "lora")
    _add_dataclass_flags(p, DynamicConfig, "dynamic")
    p.set_defaults(func=_cmd_train)


def config_from_args(args: argparse.Namespace) -> Any:
    from dynalora.core.config import TrainConfig

    data: dict[str, Any] = {}
    if args.config_file:
        data = TrainConfig.from_yaml(args.config_file).to_dict()
    for key, value in vars(args).items():
        if key in ("func", "config_file", "command", "static"):
            continue
        if "." in key:
            section, name = key.split(".", 1)
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    if args.static:
        data.setdefault("dynamic", {}).update(reallocate=False, input_adaptive="off")
    if data.get("train_file") and "task" not in data:
        data["task"] = None  # own files: the task is named after the file, labels are not checked against a built-in

    cfg = TrainConfig.from_dict(data)
    # what the user actually set (flags and YAML keys, not defaults): --resume refuses those that differ
    from dynalora.core.resume import explicit_keys

    given = {k: v for k, v in vars(args).items() if k not in ("func", "config_file", "command", "static")}
    nested: dict[str, Any] = {}
    for key, value in given.items():
        section, _, name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[name if section else key] = value
    if args.static:
        nested.setdefault("dynamic", {}).update(reallocate=False, input_adaptive="off")
    if args.config_file:
        import yaml

        raw = yaml.safe_load(open(args.config_file, encoding="utf-8")) or {}
        cfg.explicit_keys = explicit_keys(raw) | explicit_keys(nested)  # type: ignore[attr-defined]
    else:
        cfg.explicit_keys = explicit_keys(nested)  # type: ignore[attr-defined]
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from dynalora.distributed.launcher import in_torchrun, run_training

    if cfg.backend == "local" and not in_torchrun():
        from dynalora.core.train import train

        result = train(cfg)  # validates before anything is written
    else:
        result = run_training(cfg)
    if result is not None and result.metrics:
        _print_summary(result)
    return 0


def _print_summary(result: Any) -> None:
    from dynalora.core.plots import short_name

    print("\n== evaluation ==")
    for k, v in result.metrics.items():
        print(f"  {k:>10}: {v:.4f}")
    print("== final rank per layer ==")
    print("  " + "  ".join(f"{short_name(n)}={r}" for n, r in result.ranks.items()))
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
    for module in ("dynalora.export.cli", "dynalora.edge_runtime.cli", "dynalora.distributed.cli", "dynalora.core.fusion_cli"):
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


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
