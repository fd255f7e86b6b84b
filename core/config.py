"""Typed configuration for adapters, rank dynamics and training.

One source of truth: the CLI flags and the YAML file (`--config FILE.yaml`) both fill these
dataclasses (`TrainConfig.from_dict`), and `validate()` raises a `ConfigError` that says what to
change. The resolved config is written to `RUN/config.yaml` and read back by `load_run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynalora.core.errors import ConfigError

INPUT_ADAPTIVE_MODES = ("off", "layer", "per-example")


@dataclass
class LoRAConfig:
    rank: int = field(default=8, metadata={"help": "average rank per adapted layer; budget = rank x layers"})
    max_rank: int | None = field(default=None, metadata={"help": "cap on one layer's rank (default 2 x rank)"})
    min_rank: int = field(default=1, metadata={"help": "floor on one layer's rank (0 lets a layer be switched off)"})
    alpha: float = field(default=16.0, metadata={"help": "scaling = alpha / rank, fixed for the whole run"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "leaf module names to adapt (default: per architecture)"}
    )

    def resolved_max_rank(self, dynamic: bool) -> int:
        if not dynamic:
            return self.rank
        return self.max_rank if self.max_rank is not None else 2 * self.rank

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"--rank must be >= 1, got {self.rank}")
        if self.min_rank < 0:
            raise ConfigError(f"--min-rank must be >= 0, got {self.min_rank}")
        if self.max_rank is not None and self.max_rank < self.rank:
            raise ConfigError(
                f"impossible budget: --max-rank {self.max_rank} is below the average --rank {self.rank}; "
                "raise --max-rank or lower --rank"
            )
        if self.min_rank > self.rank:
            raise ConfigError(
                f"impossible budget: --min-rank {self.min_rank} is above the average --rank {self.rank}; "
                "lower --min-rank or raise --rank"
            )
        if self.alpha <= 0:
            raise ConfigError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DynamicConfig:
    reallocate: bool = field(default=True, metadata={"help": "move rank between layers from importance"})
    input_adaptive: str = field(default="layer", metadata={"help": "off | layer | per-example"})
    input_weight: float = field(
        default=0.5, metadata={"help": "share of input complexity in the layer score (0 = sensitivity only)"}
    )
    warmup_frac: float = field(default=0.1, metadata={"help": "no reallocation before this fraction of steps"})
    final_frac: float = field(default=0.8, metadata={"help": "ranks frozen after this fraction of steps"})
    interval_frac: float = field(default=0.05, metadata={"help": "reallocate every this fraction of steps"})
    ema: float = field(default=0.7, metadata={"help": "smoothing of scores across reallocations"})
    sketch_dim: int = field(default=64, metadata={"help": "random sketch size for input covariance"})
    stat_stride: int = field(
        default=4, metadata={"help": "input stats use every N-th token of each example (a function of the example only)"}
    )
    example_gamma: float = field(default=1.0, metadata={"help": "per-example rank = rank * (v / v_ref)^gamma"})
    example_min_frac: float = field(default=0.25, metadata={"help": "per-example rank floor, fraction of rank"})

    @property
    def uses_input_stats(self) -> bool:
        return self.input_adaptive != "off"

    @property
    def is_static(self) -> bool:
        return not self.reallocate and self.input_adaptive == "off"

    def validate(self) -> None:
        if self.input_adaptive not in INPUT_ADAPTIVE_MODES:
            raise ConfigError(
                f"--input-adaptive must be one of {', '.join(INPUT_ADAPTIVE_MODES)}, got {self.input_adaptive!r}"
            )
        if not 0.0 <= self.input_weight <= 1.0:
            raise ConfigError(f"input_weight must be in [0, 1], got {self.input_weight}")
        if not 0.0 <= self.warmup_frac < self.final_frac <= 1.0:
            raise ConfigError(
                f"need 0 <= warmup_frac < final_frac <= 1, got {self.warmup_frac} and {self.final_frac}"
            )
        if not 0.0 < self.interval_frac <= 1.0:
            raise ConfigError(f"interval_frac must be in (0, 1], got {self.interval_frac}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if self.sketch_dim < 2 or self.stat_stride < 1:
            raise ConfigError("sketch_dim must be >= 2 and stat_stride >= 1")
        if self.example_gamma < 0 or not 0.0 < self.example_min_frac <= 1.0:
            raise ConfigError("example_gamma must be >= 0 and example_min_frac in (0, 1]")


@dataclass
class TrainConfig:
    model: str = field(default="minilm", metadata={"help": "built-in name (minilm, smollm2-135m), path or hub id"})
    task: str | None = field(default="rotten_tomatoes", metadata={"help": "task name (see `dynalora tasks`)"})
    out: str = field(default="", metadata={"help": "run folder"})
    data_dir: str | None = field(default=None, metadata={"help": "GLUE folder (glue_data/) or task folder"})
    train_file: str | None = field(default=None, metadata={"help": "CSV/TSV/JSONL with text[,text_pair],label"})
    eval_file: str | None = field(default=None, metadata={"help": "evaluation file, same columns"})
    eval_size: float | None = field(default=None, metadata={"help": "held-out size (count or fraction)"})
    max_train: int | None = field(default=None, metadata={"help": "truncate the training split"})
    max_eval: int | None = field(default=None, metadata={"help": "truncate the evaluation split"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=16, metadata={"help": "global examples per optimizer step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear LR warm-up share of steps"})
    max_length: int = field(default=64, metadata={"help": "tokens per example (truncation)"})
    objective: str = field(default="auto", metadata={"help": "auto | classifier | choice (score answer options by a causal LM's log-likelihood)"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and dropout"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    checkpoint_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: never)"})
    log_every: int = field(default=10, metadata={"help": "write a metrics line every N steps"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N | auto (CUDA when present)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run folder"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --out"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    backend: str = field(default="local", metadata={"help": "local | torchrun | ray"})
    workers: int = field(default=1, metadata={"help": "data-parallel workers (ray backend)"})
    max_failures: int = field(default=0, metadata={"help": "ray backend: restarts from the latest checkpoint after a worker failure"})
    storage_path: str | None = field(default=None, metadata={"help": "ray backend: Ray Train storage (shared storage for multi-node)"})
    ray_address: str | None = field(default=None, metadata={"help": "ray backend: cluster address (default: RAY_ADDRESS, else a local cluster)"})
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def __post_init__(self) -> None:
        # paths may come in as pathlib.Path from Python callers; store plain strings (YAML-safe)
        for name in ("model", "out", "data_dir", "train_file", "eval_file", "task"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        if self.task == "":
            self.task = None

    def validate(self) -> None:
        self.lora.validate()
        self.dynamic.validate()
        if not self.out:
            raise ConfigError("--out is required: the folder the run is written to")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("--batch-size and --grad-accum must be >= 1")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum}"
            )
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be >= 2, got {self.max_length}")
        if self.objective not in ("auto", "classifier", "choice"):
            raise ConfigError(f"unknown objective {self.objective!r}: use auto, classifier or choice")
        if self.backend not in ("local", "torchrun", "ray"):
            raise ConfigError(f"unknown backend {self.backend!r}: use local, torchrun or ray")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: pick one")
        if self.task is None and self.train_file is None:
            raise ConfigError("give --task or --train-file")

    # ---- dict / YAML round trip -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        lora = _build(LoRAConfig, data.pop("lora", None) or {}, "lora")
        dynamic = _build(DynamicConfig, data.pop("dynamic", None) or {}, "dynamic")
        cfg = _build(cls, data, "")
        cfg.lora, cfg.dynamic = lora, dynamic
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(kind: type, data: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(kind)} - {"lora", "dynamic"}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section '{section}'" if section else ""
        raise ConfigError(f"unknown option(s){where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    return kind(**data)
