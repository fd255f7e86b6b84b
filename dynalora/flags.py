"""Command-line flags generated from config dataclasses: one field -> one flag, its help from the field's metadata.

    add_dataclass_flags(parser, TrainConfig, "")                     # --steps, --lr, ... -> dest "steps"
    add_dataclass_flags(parser, LoRAConfig, "lora")                  # --rank, --lora-alpha -> dest "lora.rank"
    add_dataclass_flags(parser, RouterConfig, "router", prefix="router-", renames={"seed": "seed"})
    values = dataclass_values(args)                                  # {"steps": 9, "lora": {"rank": 4}}

Used by `dynalora train` (TrainConfig / LoRAConfig / DynamicConfig) and `dynalora fuse train` (FuseConfig /
RouterConfig), so flags, YAML and the Python API cannot drift apart. A flag left out is absent from the
namespace (default SUPPRESS): the dataclass default applies. Fields holding a nested config (a
`default_factory` that is itself a dataclass, e.g. TrainConfig.lora) get their flags from their own call.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any


def add_dataclass_flags(parser: argparse.ArgumentParser, kind: type, section: str, *, title: str | None = None,
                        prefix: str = "", renames: Mapping[str, str] | None = None,
                        required: Collection[str] = ()) -> None:
    """One flag per field of `kind` in an argument group; dest is "field" or "section.field", the help the
    field's metadata "help" (plus the default, unless the help speaks of it).

    The flag is `dynalora.core.config.flag_name(section, field)` with `prefix` put in front of the name
    (`--router-hidden`), unless `renames` maps the field to its own flag name (without the dashes).
    Fields named in `required` must be given on the command line.
    """
    from dynalora.core.config import flag_name

    group = parser.add_argument_group(title or section or "training")
    for f in dataclasses.fields(kind):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            continue  # a nested config section: flags of its own
        if renames and f.name in renames:
            flag = "--" + renames[f.name]
        else:
            flag = "--" + prefix + flag_name(section, f.name).removeprefix("--")
        dest = f"{section}.{f.name}" if section else f.name
        help_text = f.metadata.get("help", "")
        ftype = str(f.type)
        if f.default not in (dataclasses.MISSING, None, "") and not ftype.startswith("bool") and "default" not in help_text:
            help_text += f" (default {f.default})"
        kwargs: dict[str, Any] = {"dest": dest, "help": help_text}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        if ftype.startswith("bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
        if "list[str]" in ftype:
            group.add_argument(flag, nargs="+", **kwargs)
        else:
            conv = int if ftype.startswith("int") else float if ftype.startswith("float") else str
            group.add_argument(flag, type=conv, **kwargs)


def dataclass_values(args: argparse.Namespace, skip: Collection[str] = ("func",)) -> dict[str, Any]:
    """The flags given, nested by section: {"name": v, "section": {"name": v}} (keys in `skip` left out)."""
    data: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in skip:
            continue
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name if section else key] = value
    return data
