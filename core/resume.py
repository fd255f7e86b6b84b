"""`--resume`: continue a run exactly as it was configured, or say why not.

    cfg = resumed_config(requested, explicit)   # the run's saved config + where/how it runs now
    finished_result(out)                        # a finished run's result (resume has nothing to do)

A resumed run trains what its `config.yaml` says. The caller may change where and how it runs
(`RESUME_RUNTIME`: out, threads, device, launcher, workers, ...) and how often it logs, evaluates
and checkpoints (`RESUME_ADJUSTABLE`). Any other option the caller sets to a value different from
the saved one (model, data, rank budget, lr, steps, batch, seed, ...) would silently not apply,
so it is refused in one line that names every difference.

Which options "the caller sets": the CLI records the flags and YAML keys actually given
(`explicit`, dotted names like `lora.rank`); a Python caller that builds a TrainConfig is judged
by the fields that differ from their defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dynalora.core.config import TrainConfig
from dynalora.core.errors import CheckpointError, ConfigError

# where / how a run executes: always the caller's
RESUME_RUNTIME = ("out", "progress", "threads", "device", "backend", "workers", "ray_address", "storage_path", "max_failures")
# bookkeeping cadence: the caller's if given, else the run's
RESUME_ADJUSTABLE = ("log_every", "eval_every", "checkpoint_every")
_IGNORED = ("resume", "overwrite")
_PATH_FIELDS = ("model", "train_file", "eval_file", "data_dir")


def flatten(cfg: TrainConfig) -> dict[str, Any]:
    """TrainConfig as {dotted name: value} (lora.rank, dynamic.ema, lr, ...)."""
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _flag(key: str) -> str:
    section, _, name = key.rpartition(".")
    renames = {("lora", "dropout"): "lora-dropout", ("lora", "alpha"): "lora-alpha"}
    return "--" + renames.get((section, name), name.replace("_", "-"))


def _same(key: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    if key in _PATH_FIELDS and isinstance(a, str) and isinstance(b, str):
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return False


def saved_config(out: Path) -> TrainConfig:
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"--resume: {out} is not a run folder (no config.yaml)")
    return TrainConfig.from_yaml(saved)


def resumed_config(requested: TrainConfig, explicit: Collection[str] | None = None) -> TrainConfig:
    """The saved config of `requested.out`, with the caller's runtime options; refuses changed options."""
    saved = saved_config(Path(requested.out))
    want, have = flatten(requested), flatten(saved)
    defaults = flatten(TrainConfig())
    if explicit is None:
        given = {k for k, v in want.items() if not _same(k, v, defaults.get(k))}
    else:
        given = set(explicit)
    diffs = [
        f"{_flag(k)} {want[k]!r} (the run has {have.get(k)!r})"
        for k in sorted(given)
        if k in want and k not in RESUME_RUNTIME + RESUME_ADJUSTABLE + _IGNORED and not _same(k, want[k], have.get(k))
    ]
    if diffs:
        raise ConfigError(
            f"--resume continues {requested.out} as it was configured, but " + "; ".join(diffs)
            + ": drop these flags, or start a new run (another --out, or --overwrite)"
        )
    cfg = saved
    for key in RESUME_RUNTIME:
        setattr(cfg, key, getattr(requested, key))
    for key in RESUME_ADJUSTABLE:
        if key in given:
            setattr(cfg, key, getattr(requested, key))
    cfg.resume, cfg.overwrite = True, False
    return cfg


def finished_info(out: Path) -> dict[str, Any] | None:
    """run.json of a finished run (written last, atomically), else None."""
    path = Path(out) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc.__class__.__name__}); the run cannot be resumed") from None


def explicit_keys(data: dict[str, Any]) -> set[str]:
    """Dotted keys of a (possibly nested) options dict, as given by the CLI / YAML."""
    keys: set[str] = set()
    sections = {f.name for f in dataclasses.fields(TrainConfig) if f.name in ("lora", "dynamic")}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key in sections and isinstance(value, dict):
            keys |= {f"{key}.{k.replace('-', '_')}" for k in value}
        else:
            keys.add(key)
    return keys
