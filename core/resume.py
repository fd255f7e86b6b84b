"""Resume, in one place: which folder an attempt continues, with which configuration, or why not.

    cfg = plan_attempt(cfg, launch_id, restarted)  # every launcher, once per attempt, before writing
    done = finished_run(cfg)                       # --resume of a finished run: its result, nothing to do
    cfg = resumed_config(requested, explicit)      # the run's saved config + where/how it runs now

Which folder. A run folder records the launch that created it in its `.dynalora` marker
(core/outdir.py). After a worker failure torchrun / Ray start a new attempt of the *same* launch:
it finds the folder that launch owns (the run folder, or the staging folder of an --overwrite in
progress) and resumes it from its newest intact checkpoint (core/checkpoint.py); with no
checkpoint yet it starts that folder over. A first attempt never continues anything implicitly:
an existing --out needs --overwrite (replace) or --resume (continue).

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
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dynalora.core.checkpoint import load_latest_checkpoint
from dynalora.core.config import TrainConfig
from dynalora.errors import CheckpointError, ConfigError
from dynalora.core.outdir import read_marker, staging_path
from dynalora.core.run_folder import RunResult, finished_result

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


def find_owned(out: Path, launch_id: str) -> Path | None:
    """The run folder (or --overwrite staging folder) that `launch_id` created, if any."""
    for folder in (Path(out), staging_path(Path(out))):
        marker = read_marker(folder)
        if marker and marker.get("kind") == "run" and marker.get("launch") == launch_id and (folder / "config.yaml").is_file():
            return folder
    return None


def plan_attempt(cfg: TrainConfig, launch_id: str | None, restarted: bool) -> TrainConfig:
    """What this attempt trains: the user's --resume, a restarted launch's own folder, or a new run."""
    explicit = getattr(cfg, "explicit_keys", None)
    if cfg.resume:
        return resumed_config(cfg, explicit)
    if not restarted or not launch_id:
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


def finished_run(cfg: TrainConfig, *, announce: bool = True) -> RunResult | None:
    """--resume of a finished run: its result (and one line saying so); otherwise None."""
    if not cfg.resume:
        return None
    done = finished_result(Path(cfg.out))
    if done is not None and announce:
        print(f"dynalora: {done.out} is finished ({done.steps} steps); nothing to resume", flush=True)
    return done
