"""A training run's folder: checks before anything is written, creation, logs, and the finished run.

    work = prepare_out_dir(cfg, is_main)          # --out itself, or the staging folder of an --overwrite
    create_run_folder(work, cfg, launch_id)       # marker, config.yaml
    finish_run(work, ...)                         # adapter/, tokenizer/, run.json, allocation.png
    finished_result(out)                          # a finished run's RunResult (resume has nothing to do)

Layout (written atomically, file by file): see core/run_io.py.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalora import __version__
from dynalora.atomic import write_json, write_text
from dynalora.core.config import TrainConfig
from dynalora.core.controller import RankController
from dynalora.core.data import MULTIPLE_CHOICE, TaskData
from dynalora.core.task import GENERATION
from dynalora.errors import CheckpointError, ConfigError
from dynalora.core.outdir import check_out_path, check_replaceable, check_unlocked, final_path, is_empty_dir, staging_path, write_marker
from dynalora.core.run_io import save_adapter

LOG_FILES = ("allocation.jsonl", "metrics.jsonl")


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, float]
    ranks: dict[str, int]
    steps: int
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)


def prepare_out_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """The folder this run writes, after every check (nothing is written here).

    A new run writes `--out` itself. `--overwrite` of an existing run builds the new run beside it
    (outdir.staging_path) and swaps it in when complete, so an interrupted overwrite leaves the
    previous run intact. Only rank 0 checks: the launchers validated on every rank before the
    process group existed, and rank 0 may be creating the folder while the others get here.
    """
    out = Path(cfg.out)
    if cfg.resume:
        if not (out / "config.yaml").is_file():
            raise CheckpointError(f"--resume: {out} is not a run folder (no config.yaml)")
        return out
    if not is_main:
        return out
    check_out_path(out)
    if out.exists() and not is_empty_dir(out):
        if not cfg.overwrite:
            raise ConfigError(f"output folder {out} exists; pass --overwrite to replace it or --resume to continue it")
        check_replaceable(out, "run")
        check_unlocked(out)
        return staging_path(out)
    check_unlocked(out)
    return out


def finished_info(out: Path) -> dict[str, Any] | None:
    """run.json of a finished run (written last, atomically), else None."""
    path = Path(out) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc.__class__.__name__}); the run cannot be resumed") from None


def finished_result(out: Path) -> RunResult | None:
    """The result of a finished run (resume has nothing to do), else None."""
    info = finished_info(out)
    if info is None:
        return None
    return RunResult(out=final_path(out), metrics=info["metrics"], ranks=info["final_ranks"], steps=int(info["steps"]))


def create_run_folder(out: Path, cfg: TrainConfig, launch_id: str | None) -> None:
    """Create the folder a new run writes: its marker (kind, launch, what it replaces) and config.yaml."""
    if out.exists():  # a stale staging folder of an interrupted --overwrite (the caller holds the run's lock)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    replaces = {"replaces": Path(cfg.out).name} if out != Path(cfg.out) else {}
    write_marker(out, "run", launch=launch_id, **replaces)
    write_text(out / "config.yaml", cfg.to_yaml())


def truncate_log(path: Path, step: int) -> None:
    """Keep only the log lines at or before `step` (a resumed run writes the later ones again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [l for l in lines if l.strip() and int(json.loads(l).get("step", 0)) <= step]
    if len(keep) != len(lines):
        write_text(path, "".join(l + "\n" for l in keep))


def truncate_logs(out: Path, step: int) -> None:
    """Drop the lines a failed attempt logged after the checkpoint the run resumes from."""
    for name in LOG_FILES:
        truncate_log(Path(out) / name, step)


def _generation_info(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """How a generation run's prompts are written and answers decoded (evaluation and export reuse it)."""
    from dynalora.core.generate import PLAIN_PROMPT, prompt_format

    fmt = prompt_format(tokenizer)
    return {"prompt_format": fmt, **({"plain_prompt": PLAIN_PROMPT} if fmt == "plain" else {}),
            "max_new_tokens": cfg.max_new_tokens, "stop": list(cfg.stop or [])}


def finish_run(
    out: Path, cfg: TrainConfig, data: TaskData, model: nn.Module, tokenizer: Any, controller: RankController,
    model_path: str, metrics: dict[str, float], steps: int, world: int,
) -> None:
    extra = {
        "input_adaptive": cfg.dynamic.input_adaptive,
        "example_gamma": cfg.dynamic.example_gamma,
        "example_min_frac": cfg.dynamic.example_min_frac,
        "reallocate": cfg.dynamic.reallocate,
        "problem": data.spec.problem,
    }
    save_adapter(model, out / "adapter", base_model=model_path, extra=extra)
    tok_tmp = out / ".tokenizer.tmp"
    shutil.rmtree(tok_tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tok_tmp))
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    os.replace(tok_tmp, out / "tokenizer")
    spec = data.spec
    write_json(
        out / "run.json",
        {
            "dynalora_version": __version__,
            "base_model": model_path,
            "model_type": getattr(model.config, "model_type", ""),
            "task": {"name": spec.name, "problem": spec.problem, "label_names": list(spec.label_names), "num_labels": spec.num_labels, "has_pair": spec.has_pair,
                     **({"prompt": list(spec.prompt)} if spec.problem in (MULTIPLE_CHOICE, GENERATION) else {}),
                     **(_generation_info(cfg, tokenizer) if spec.problem == GENERATION else {})},
            "data": data.source,
            "n_train": len(data.train),
            "n_eval": len(data.eval),
            "steps": steps,
            "peak_lr": _peak_lr(cfg, model),
            "world_size": world,
            "final_ranks": controller.ranks(),
            "metrics": metrics,
            "torch": torch.__version__,
        },
    )
    try:
        from dynalora.core.plots import allocation_heatmap

        allocation_heatmap(out / "allocation.jsonl", out / "allocation.png")
    except ImportError:  # matplotlib missing: the run is still complete
        pass


def _peak_lr(cfg: TrainConfig, model: nn.Module) -> float:
    from dynalora.core.build import default_lr  # build imports the layers; run folders need only this rule

    return default_lr(cfg, str(getattr(model.config, "model_type", "")))
