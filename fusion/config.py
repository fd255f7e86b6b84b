"""The settings of a fusion: `FuseConfig` (which runs, where to, top-p, the multi-task baseline) and the
router's `RouterConfig`. Both are checked when they are built; `validate()` re-checks before a run.

    cfg = FuseConfig(runs=["runs/rt", "runs/bbc"], out="fuse/", top_p=0.6, router=RouterConfig(epochs=20))

`dynalora fuse train` generates its flags from these dataclasses (dynalora/fusion/cli.py): the field's
metadata is the flag's help. This module imports neither torch nor transformers (`dynalora --help` stays fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dynalora.errors import ConfigError

DEFAULT_P = 0.6  # DLP-LoRA's default


def check_p(p: float) -> float:
    """`p` as a float when it is a top-p mass in (0, 1]; a ConfigError otherwise."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < float(p) <= 1.0) or math.isnan(p):
        raise ConfigError(f"top-p must be in (0, 1], got {p!r}: pass e.g. --top-p 0.6 (DLP-LoRA's default)")
    return float(p)


@dataclass
class RouterConfig:
    """The router MLP and how it is trained (flags `--router-<field>`, the seed `--seed`)."""

    hidden: int = field(default=256, metadata={"help": "router MLP hidden size"})
    epochs: int = field(default=30, metadata={"help": "passes over the balanced router training set"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=64, metadata={"help": "router training batch"})
    per_task: int = field(default=1000, metadata={"help": "training examples per task (balanced: min over tasks)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the MLP"})
    seed: int = field(default=0, metadata={"help": "router init and shuffling seed"})

    def __post_init__(self) -> None:
        self.validate()  # a RouterConfig out of range cannot be built

    def validate(self) -> None:
        for flag, value in (("--router-hidden", self.hidden), ("--router-epochs", self.epochs),
                            ("--router-batch-size", self.batch_size), ("--router-per-task", self.per_task)):
            if value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"router lr must be > 0 and dropout in [0, 1); got {self.lr}, {self.dropout}")


@dataclass
class FuseConfig:
    """What `train_fusion` fuses and where it writes the fusion folder (flags `--<field>`)."""

    runs: list[str] = field(default_factory=list, metadata={"help": "run folders of the task adapters (one base model)"})
    out: str = field(default="", metadata={"help": "fusion folder to create"})
    top_p: float = field(default=DEFAULT_P, metadata={"help": "top-p mass of the kept adapters, in (0, 1]"})
    router_from: str | None = field(default=None, metadata={"help": "reuse the router of this fusion folder"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per input (default: the runs' largest)"})
    multitask_steps: int = field(default=0, metadata={"help": "also train the multi-task baseline (one adapter on all tasks) for this many steps; 0: skip"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out folder"})
    router: RouterConfig = field(default_factory=RouterConfig)

    def __post_init__(self) -> None:
        self.check_values()  # a FuseConfig out of range cannot be built

    def check_values(self) -> None:
        check_p(self.top_p)
        self.router.validate()
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"--max-length must be >= 2, got {self.max_length}")
        if self.multitask_steps < 0:
            raise ConfigError(f"--multitask-steps must be >= 0, got {self.multitask_steps}")

    def validate(self) -> None:
        """Everything `train_fusion` needs: the value checks of construction (again: fields may have been
        set since) plus --out, which a config may leave empty until it is run (like TrainConfig)."""
        self.check_values()
        if not self.out:
            raise ConfigError("--out is required: the fusion folder to create")
