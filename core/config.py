"""Typed configuration for adapters, rank dynamics and training.

One source of truth: the CLI flags and the YAML file (`--config FILE.yaml`) both fill these
dataclasses (`TrainConfig.from_dict`), and `validate()` raises a `ConfigError` that says what to
change. The resolved config is written to `RUN/config.yaml` and read back by `load_run`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynalora.errors import ConfigError, not_utf8_message

INPUT_ADAPTIVE_MODES = ("off", "layer", "per-example")
DEVICE_PATTERN = re.compile(r"cpu|auto|mps|(cuda|xpu)(:\d+)?")
SEED_LIMIT = 1 << 32  # seeds are combined with step numbers into torch's 64-bit generator seeds
MAX_LENGTH_LIMIT = 1 << 20  # tokens: beyond any model's context; larger values only overflow the tokenizer
SECTIONS = ("lora", "dynamic")
# command-line flags whose name differs from the field name: (section, field) -> flag
FLAG_RENAMES = {("lora", "dropout"): "lora-dropout", ("lora", "alpha"): "lora-alpha"}


def flag_name(section: str, name: str) -> str:
    """The command-line flag of a config field: `--max-rank`, `--lora-alpha`, ..."""
    return "--" + FLAG_RENAMES.get((section, name), name.replace("_", "-"))


def _is_eval_size(value: float) -> bool:
    """A fraction in (0, 1) or a whole count >= 1 (1.5 examples is neither)."""
    return 0.0 < value < 1.0 or (value >= 1 and float(value).is_integer())


def _check_finite(obj: Any, section: str) -> None:
    """Every float field must be a finite number: inf / nan would train silently into NaN."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(section, f.name)} must be a finite number, got {value}")


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

    def __post_init__(self) -> None:
        self.validate()  # a LoRAConfig out of range cannot be built

    def validate(self) -> None:
        _check_finite(self, "lora")
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
            raise ConfigError(f"--lora-alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.dropout}")


def frozen_allocation(lora: LoRAConfig, dynamic: DynamicConfig) -> str | None:
    """Why reallocation is on but can move no rank (every layer pinned at the average), or None.

    With the floor (--min-rank) or the cap (--max-rank) equal to the average rank and no budget to prune, every
    layer must sit exactly at the average: the run is static LoRA plus the statistics' cost. The rank study's
    default at average rank 1 (min rank 1) was such a run."""
    if not dynamic.reallocate or dynamic.budget_start > 1.0:
        return None
    floor_pins, cap = lora.min_rank >= lora.rank, lora.resolved_max_rank(True)
    pinned = ([f"--min-rank {lora.min_rank}"] if floor_pins else []) + ([f"--max-rank {cap}"] if cap <= lora.rank else [])
    if not pinned:
        return None
    hint = "lower --min-rank (0 lets a layer be switched off)" if floor_pins else "raise --max-rank"
    cost = "" if dynamic.input_adaptive == "per-example" else " (the run is static LoRA plus the statistics' cost)"
    verb = "equal" if len(pinned) > 1 else "equals"
    return (f"{' and '.join(pinned)} {verb} the average --rank {lora.rank}, so reallocation cannot move rank "
            f"between layers{cost}; {hint} to let it")


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
    budget_start: float = field(
        default=1.0,
        metadata={"help": "live rank budget at the start, x the target; > 1 prunes down to the target by the last "
                          "reallocation (cubic, as AdaLoRA; layers then only shrink)"},
    )

    @property
    def uses_input_stats(self) -> bool:
        return self.input_adaptive != "off"

    @property
    def is_static(self) -> bool:
        return not self.reallocate and self.input_adaptive == "off"

    def __post_init__(self) -> None:
        self.validate()  # a DynamicConfig out of range cannot be built

    def validate(self) -> None:
        _check_finite(self, "dynamic")
        if self.input_adaptive not in INPUT_ADAPTIVE_MODES:
            raise ConfigError(
                f"--input-adaptive must be one of {', '.join(INPUT_ADAPTIVE_MODES)}, got {self.input_adaptive!r}"
            )
        if not 0.0 <= self.input_weight <= 1.0:
            raise ConfigError(f"--input-weight must be in [0, 1], got {self.input_weight}")
        if not 0.0 <= self.warmup_frac < self.final_frac <= 1.0:
            raise ConfigError(
                f"need 0 <= --warmup-frac < --final-frac <= 1, got {self.warmup_frac} and {self.final_frac}"
            )
        if not 0.0 < self.interval_frac <= 1.0:
            raise ConfigError(f"--interval-frac must be in (0, 1], got {self.interval_frac}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        if self.sketch_dim < 2:
            raise ConfigError(f"--sketch-dim must be >= 2, got {self.sketch_dim}")
        if self.stat_stride < 1:
            raise ConfigError(f"--stat-stride must be >= 1, got {self.stat_stride}")
        if self.example_gamma < 0:
            raise ConfigError(f"--example-gamma must be >= 0, got {self.example_gamma}")
        if not 0.0 < self.example_min_frac <= 1.0:
            raise ConfigError(f"--example-min-frac must be in (0, 1], got {self.example_min_frac}")
        if self.budget_start < 1.0:
            raise ConfigError(f"--budget-start must be >= 1 (a multiple of the target budget), got {self.budget_start}")
        if self.budget_start > 1.0 and not self.reallocate:
            raise ConfigError("--budget-start > 1 needs reallocation (it prunes the extra rank away); "
                              "drop --no-reallocate or set --budget-start 1")


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
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (AdamW); default 3e-3 for an encoder with "
                                                             "the default query/value targets, else 1e-3 (README: how "
                                                             "they were chosen)"})
    head_lr: float | None = field(default=None, metadata={"help": "peak learning rate of the task head (a classifier's fresh "
                                                                  "output layer); default: the --lr of the adapters"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear LR warm-up share of steps"})
    max_length: int = field(default=64, metadata={"help": "tokens per example (truncation)"})
    objective: str = field(default="auto", metadata={"help": "auto | classifier | choice (score answer options by a causal LM's log-likelihood) | generate (prompt -> response)"})
    max_new_tokens: int = field(default=64, metadata={"help": "generation runs: tokens generated per evaluation prompt (greedy)"})
    stop: list[str] | None = field(default=None, metadata={"help": "generation runs: strings that end an answer (besides the end-of-turn token)"})
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
        self.check_values()

    def validate(self) -> None:
        """Everything a run needs: the value checks of construction (again: fields may have been set
        since) plus the options a run cannot do without (--out; --task or --train-file)."""
        self.check_values()
        if not self.out:
            raise ConfigError("--out is required: the folder the run is written to")
        if self.task is None and self.train_file is None:
            raise ConfigError("give --task or --train-file")

    def check_values(self) -> None:
        """Every value in range (run at construction, so a bad TrainConfig cannot exist)."""
        self.lora.validate()
        self.dynamic.validate()
        _check_finite(self, "")
        for name in ("train_file", "eval_file", "data_dir", "storage_path", "ray_address"):
            if getattr(self, name) == "":
                raise ConfigError(f"{flag_name('', name)} is empty: pass a value or leave the option out")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
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
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ConfigError(f"--head-lr must be > 0, got {self.head_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.eval_size is not None and not _is_eval_size(self.eval_size):
            raise ConfigError(
                f"--eval-size must be a fraction in (0, 1) or a whole number of examples >= 1, got {self.eval_size:g}"
            )
        for flag, count in (("--max-train", self.max_train), ("--max-eval", self.max_eval)):
            if count is not None and count < 1:
                raise ConfigError(f"{flag} must be >= 1, got {count}")
        if not -SEED_LIMIT < self.seed < SEED_LIMIT:
            raise ConfigError(f"--seed must be between {-SEED_LIMIT + 1} and {SEED_LIMIT - 1}, got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        for flag, every in (("--eval-every", self.eval_every), ("--checkpoint-every", self.checkpoint_every)):
            if every < 0:
                raise ConfigError(f"{flag} must be >= 0 (0: off), got {every}")
        if self.log_every < 1:
            raise ConfigError(f"--log-every must be >= 1, got {self.log_every}")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be >= 2, got {self.max_length}")
        if self.max_length > MAX_LENGTH_LIMIT:
            raise ConfigError(f"--max-length {self.max_length} is beyond any model's context ({MAX_LENGTH_LIMIT} tokens at most)")
        if self.objective not in ("auto", "classifier", "choice", "generate"):
            raise ConfigError(f"unknown objective {self.objective!r}: use auto, classifier, choice or generate")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.stop is not None and not all(self.stop):
            raise ConfigError("--stop strings must be non-empty")
        if self.backend not in ("local", "torchrun", "ray"):
            raise ConfigError(f"unknown backend {self.backend!r}: use local, torchrun or ray")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: pick one")

    # ---- dict / YAML round trip -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (YAML, flags): each value is checked against the field's type."""
        if not isinstance(data, dict):
            raise ConfigError(f"the configuration must be a mapping of option: value, got {_show(data)}")
        data = _normalise_keys(data, "")
        sections = {name: _section(data.pop(name, None), name) for name in SECTIONS}
        lora = _build(LoRAConfig, sections["lora"], "lora")
        dynamic = _build(DynamicConfig, sections["dynamic"], "dynamic")
        cfg = _build(cls, data, "")
        cfg.lora, cfg.dynamic = lora, dynamic
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; pass a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {not_utf8_message(path, raw, exc)}") from None
        import yaml  # local: `dynalora --help` builds train flags from this module on a runtime-only install

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---- building from untyped input (YAML, flags) ---------------------------------------------------
def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def _option(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _normalise_keys(data: dict[Any, Any], section: str) -> dict[str, Any]:
    """`max-rank` and `max_rank` are the same option; giving both is an error."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in out:
            raise ConfigError(f"option {_option(section, name)!r} is given twice (as {name} and {key})")
        out[name] = value
    return out


def _section(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"option {name!r} must be a mapping of {name} options (e.g. {name}: {{...}}), got {_show(value)}")
    return _normalise_keys(value, name)


def _type_name(kind: Any) -> str:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return " or ".join(_type_name(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(item, str(item))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


_NO_MATCH = object()


def _convert(kind: Any, value: Any) -> Any:
    """`value` as type `kind`, or _NO_MATCH. Exact types only: no "4" -> 4, no 4.0 -> 4, no 1 -> True."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        for option in typing.get_args(kind):
            converted = _convert(option, value)
            if converted is not _NO_MATCH:
                return converted
        return _NO_MATCH
    if kind is type(None):
        return None if value is None else _NO_MATCH
    if kind is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if kind is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO_MATCH
    if kind is str:
        if isinstance(value, str):
            return value
        return os.fspath(value) if isinstance(value, os.PathLike) else _NO_MATCH  # Path objects from Python callers
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        (item,) = typing.get_args(kind)
        items = [_convert(item, v) for v in value]
        return _NO_MATCH if any(v is _NO_MATCH for v in items) else items
    raise TypeError(f"unsupported config field type {kind!r}")  # pragma: no cover - a new field type


def _build(kind: type, data: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)} - set(SECTIONS)
    data = _normalise_keys(data, section)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section '{section}'" if section else ""
        raise ConfigError(f"unknown option(s){where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        converted = _convert(hints[name], value)
        if converted is _NO_MATCH:
            raise ConfigError(
                f"option {_option(section, name)!r} ({flag_name(section, name)}) must be {_type_name(hints[name])}, "
                f"got {_show(value)} ({type(value).__name__})"
            )
        values[name] = converted
    return kind(**values)
