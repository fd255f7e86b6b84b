"""Task adapters as fusion reads them: one finished run folder -> an `AdapterSpec`, and the checks that
several of them can share one base model (`check_compatible`).

    from dynalora.fusion.adapters import read_adapter, check_compatible
    specs = [read_adapter("runs/rt"), read_adapter("runs/bbc")]; check_compatible(specs)

A run is fusable when it is a classification, causal-LM multiple-choice or generation run whose input gate does not
depend on the input (`--input-adaptive layer` or `off`). Adapter folders are read through
`dynalora.core.run_io.read_adapter_files`, the one reader of adapter folders; the base model is not loaded.
The stacked fused model built from the specs lives in `dynalora.fusion.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynalora.errors import CheckpointError, DynaloraError
from dynalora.core.run_io import AdapterFiles, _read_json, read_adapter_files

FUSABLE = ("classification", "multiple_choice", "generation")
CAUSAL = ("multiple_choice", "generation")  # causal-LM runs: no task head, the LM answers; they fuse together


class FusionError(DynaloraError):
    """Adapters or options that cannot be fused as asked; the message says what to change."""


@dataclass
class AdapterSpec:
    """One task adapter as read from a run folder (or its copy inside a fusion folder)."""

    name: str  # task name
    path: Path  # the run (or copied) folder holding adapter/ and run.json
    info: dict[str, Any]  # run.json
    ranks: dict[str, int]  # every adapted module (rank 0 included)
    scaling: float
    mode: str  # input_adaptive mode
    files: AdapterFiles  # the adapter folder (run_io.read_adapter_files: the one reader of adapter folders)

    @property
    def label_names(self) -> list[str]:
        return list(self.info["task"]["label_names"])

    @property
    def problem(self) -> str:
        return str(self.info["task"]["problem"])

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, in), scaling * B (out, r)) of `module`; empty for a rank-0 layer."""
        r = self.ranks[module]
        a, b = self.files.lora(module)
        if r == 0:
            return torch.zeros(0, 0), torch.zeros(0, 0)
        if a is None or b is None or a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(f"adapter {self.path} is missing or has wrong-shaped weights for {module}")
        return a.float(), b.float() * self.scaling

    def head(self, head: str) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.files.head(head).items()}


def read_adapter(run_dir: str | Path) -> AdapterSpec:
    """Read a run folder's adapter without loading its base model."""
    path = Path(run_dir)
    if not (path / "run.json").is_file() or not (path / "adapter" / "adapter_config.json").is_file():
        raise FusionError(f"{path} is not a finished dynalora run (no run.json / adapter/adapter_config.json)")
    info = _read_json(path / "run.json")
    files = read_adapter_files(path / "adapter")
    dyn = files.dyn
    task = info["task"]
    if task.get("problem") not in FUSABLE:
        raise FusionError(f"{path} is a {task.get('problem')} run: fusion supports classification, multiple-choice "
                          "and generation runs only")
    mode = str(dyn.get("input_adaptive", "layer"))
    if mode == "per-example":
        raise FusionError(f"{path} is a per-example input-adaptive run: its gate depends on the input, so it cannot "
                          "be stacked; retrain it with --input-adaptive layer (or off) to fuse it")
    return AdapterSpec(name=str(task["name"]), path=path, info=info,
                       ranks=files.ranks, scaling=float(dyn["scaling"]), mode=mode, files=files)


def check_compatible(specs: list[AdapterSpec]) -> None:
    """Same base model, same target modules, distinct tasks; raises FusionError naming the offender."""
    if len(specs) < 2:
        raise FusionError(f"fusion needs at least 2 task adapters, got {len(specs)}: pass several --runs")
    first = specs[0]
    for s in specs[1:]:
        if (s.info.get("base_model"), s.info.get("model_type")) != (first.info.get("base_model"), first.info.get("model_type")):
            raise FusionError(
                f"{first.path} and {s.path} were trained on different base models ({first.info.get('model_type')} "
                f"{first.info.get('base_model')} vs {s.info.get('model_type')} {s.info.get('base_model')}): "
                "fuse only adapters of one base model")
        if s.problem != first.problem and not (s.problem in CAUSAL and first.problem in CAUSAL):
            raise FusionError(f"{first.path} is a {first.problem} run and {s.path} a {s.problem} run: fuse runs of one "
                              "kind (classifier heads, or causal-LM multiple-choice / generation runs)")
        if set(s.ranks) != set(first.ranks):
            only = sorted(set(s.ranks) ^ set(first.ranks))[:3]
            raise FusionError(f"{first.path} and {s.path} adapt different target modules (e.g. {', '.join(only)}): "
                              "fuse only adapters trained with the same --target-modules")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FusionError(f"several runs train the same task {dupes[0]!r}: the router could not tell them apart; "
                          "pass one run per task")
