"""Choose how `dynalora train` runs: single process, torchrun worker, or Ray Train."""

from __future__ import annotations

import os
from typing import Any

from dynalora.core.config import TrainConfig
from dynalora.core.errors import ConfigError


def in_torchrun() -> bool:
    """True when started by torchrun (it sets these for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def run_training(cfg: TrainConfig) -> Any:
    raise ConfigError(f"backend {cfg.backend!r} is not available yet")
