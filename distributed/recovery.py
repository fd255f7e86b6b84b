"""Checks before a distributed run writes anything, and what a restarted attempt continues.

    cfg = plan_attempt(cfg, launch_id, restarted)   # resume the folder this launch owns, if any
    finished = validate_out(cfg)                    # every --out check, before any rank writes

Every launcher (torchrun workers, the Ray driver and Ray workers) calls these once per attempt,
before the process group exists. A run folder records the launch that created it in its
`.dynalora` marker (core/outdir.py). After a worker failure the launcher starts a new attempt of
the *same* launch: it finds the folder that launch owns (the run folder, or the staging folder of
an --overwrite in progress) and resumes it from its newest intact checkpoint; with no checkpoint
yet it starts that folder over. A first attempt never continues anything implicitly: an existing
--out needs --overwrite (replace) or --resume (continue, with the run's own configuration).

Log lines a failed attempt wrote after its last checkpoint are dropped by the loop itself when it
resumes (core/train.py), once, on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynalora.core.config import TrainConfig
from dynalora.core.outdir import read_marker, staging_path
from dynalora.core.resume import resumed_config
from dynalora.core.run_io import load_latest_checkpoint
from dynalora.core.train import finished_result, prepare_out_dir, truncate_log

LOG_FILES = ("allocation.jsonl", "metrics.jsonl")


def find_owned(out: Path, launch_id: str) -> Path | None:
    """The run folder (or --overwrite staging folder) that `launch_id` created, if any."""
    for folder in (Path(out), staging_path(Path(out))):
        marker = read_marker(folder)
        if marker and marker.get("kind") == "run" and marker.get("launch") == launch_id and (folder / "config.yaml").is_file():
            return folder
    return None


def plan_attempt(cfg: TrainConfig, launch_id: str, restarted: bool) -> TrainConfig:
    """What this attempt trains: the user's --resume, a restart's own folder, or a new run."""
    explicit = getattr(cfg, "explicit_keys", None)
    if cfg.resume:
        return resumed_config(cfg, explicit)
    if not restarted:
        return cfg
    owned = find_owned(Path(cfg.out), launch_id)
    if owned is None:
        return cfg  # the first attempt failed before it created anything: start normally
    if load_latest_checkpoint(owned).path is None:
        cfg.overwrite = True  # our own folder, no checkpoint yet: start it over (replaced when complete)
        return cfg
    requested = TrainConfig.from_dict(cfg.to_dict())
    requested.out = str(owned)
    return resumed_config(requested, explicit)


def validate_out(cfg: TrainConfig) -> Any:
    """Every user-facing check on the run folder, done before any worker starts writing.

    Returns the finished run's RunResult when --resume names a finished run (nothing to do), else None.
    """
    if cfg.resume:
        done = finished_result(Path(cfg.out))
        if done is not None:
            print(f"dynalora: {done.out} is finished ({done.steps} steps); nothing to resume", flush=True)
            return done
    prepare_out_dir(cfg, True)
    return None


def latest_step(out: Path) -> int:
    """Step of the newest intact checkpoint (0: none)."""
    found = load_latest_checkpoint(out)
    return int(found.meta["step"]) if found.path is not None else 0


def trim_logs(out: Path, step: int) -> None:
    """Keep only log lines at or before `step` (the checkpoint the run resumes from)."""
    for name in LOG_FILES:
        truncate_log(Path(out) / name, step)
