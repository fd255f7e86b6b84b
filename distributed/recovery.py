"""Checks before a distributed run writes anything, and resume after a worker failure.

    check_out_writable(out)      try a temp file where the run folder will be created
    validate_out(cfg)            refuse an existing --out without --overwrite (before any rank writes)
    latest_step(out)             step of the newest complete checkpoint (0: none)
    trim_logs(out, step)         drop log lines a crashed attempt wrote after that checkpoint

A failed attempt may have logged steps past its last checkpoint; on resume those steps run again,
so their lines are dropped first (allocation.jsonl / metrics.jsonl then read as one clean run).
Checkpoint folders are written atomically (core/atomic.py), so `latest_step` only ever sees a
complete checkpoint: a crash in the middle of a write leaves the previous one as the latest.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from dynalora.core.atomic import write_text
from dynalora.core.config import TrainConfig
from dynalora.core.errors import ConfigError
from dynalora.core.run_io import list_checkpoints
from dynalora.core.train import prepare_out_dir

LOG_FILES = ("allocation.jsonl", "metrics.jsonl")


def check_out_writable(out: Path) -> None:
    """Raise ConfigError unless a file can be created where `out` lives (nothing is left behind)."""
    target = out if out.is_dir() else out.parent
    while not target.exists():  # the folder is created later: its nearest existing ancestor must be writable
        if target.parent == target:
            break
        target = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dynalora-write-check.", dir=target)
    except OSError as exc:
        raise ConfigError(f"--out {out} is not writable ({exc.strerror} in {target}): pick another folder") from None
    os.close(fd)
    os.unlink(tmp)


def validate_out(cfg: TrainConfig) -> None:
    """Every user-facing check on the run folder, done before any worker starts writing."""
    out = Path(cfg.out)
    check_out_writable(out)
    prepare_out_dir(cfg, True)


def latest_step(out: Path) -> int:
    ckpts = list_checkpoints(out)
    return int(ckpts[-1].name.split("-")[1]) if ckpts else 0


def trim_logs(out: Path, step: int) -> None:
    """Keep only log lines at or before `step` (the checkpoint the run resumes from)."""
    for name in LOG_FILES:
        path = out / name
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and int(json.loads(line).get("step", 0)) <= step]
        if len(kept) != len(lines):
            write_text(path, "".join(line + "\n" for line in kept))
