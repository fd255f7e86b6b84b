"""Before a distributed attempt writes anything: what it continues, and every check on --out.

    cfg = plan_attempt(cfg, launch_id, restarted)   # core/resume.py: the folder this launch owns, if any
    finished = validate_out(cfg)                    # every --out check, before any rank writes

Every launcher (torchrun workers, the Ray driver and Ray workers) calls these once per attempt,
before the process group exists; the resume rules themselves live in core/resume.py. Log lines a
failed attempt wrote after its last checkpoint are dropped by the loop when it resumes, on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynalora.core.config import TrainConfig
from dynalora.core.checkpoint import load_latest_checkpoint
from dynalora.core.resume import finished_run
from dynalora.core.run_folder import LOG_FILES, prepare_out_dir, truncate_log


def validate_out(cfg: TrainConfig, *, announce: bool = True) -> Any:
    """Every user-facing check on the run folder, done before any worker starts writing.

    Returns the finished run's RunResult when --resume names a finished run (nothing to do), else None.
    """
    done = finished_run(cfg, announce=announce)
    if done is not None:
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
