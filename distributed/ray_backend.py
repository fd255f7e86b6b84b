"""Ray Train backend: the same training loop in a `ray.train.torch.TorchTrainer`.

    dynalora train --backend ray --workers 2 --model minilm --task rotten_tomatoes --out /abs/runs/rt

    dynalora cluster up                                   # loopback-only head, dashboard :8265
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m dynalora train --backend ray --workers 2 ... --out /abs/runs/rt
    dynalora cluster down

Which cluster: `--ray-address` or RAY_ADDRESS (set by Ray inside a job) if given; else a cluster
already running on this machine (`dynalora cluster up`); else an embedded single-node cluster
for this run, bound to 127.0.0.1, that stops with it.

Each worker joins the process group Ray Train initialised (gloo), wraps the model in DDP and runs
`dynalora.core.train.train` with a TorchCollective. Rank 0 writes the run folder (`--out`, an
absolute path every worker can reach: shared storage on a multi-node cluster). Each checkpoint
is also reported to Ray Train (`ray.train.report`, every worker, same number of times) and
persisted under `--storage-path` (RunConfig.storage_path; Ray's default is ~/ray_results; use
shared storage such as NFS or s3:// for multi-node). With `--max-failures N` Ray restarts the
worker group after a failure and the workers resume from the latest checkpoint of the run folder
(restored from Ray's copy first if the run folder lacks it).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dynalora.atomic import atomic_dir
from dynalora.core.config import TrainConfig
from dynalora.errors import DynaloraError
from dynalora.distributed.cluster import auth_token as _auth_token
from dynalora.distributed.errors import ClusterError, DistributedError
from dynalora.distributed.watchdog import dist_timeout_s

_PASS_ENV_PREFIXES = ("DYNALORA_", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


# ---- driver ---------------------------------------------------------------------------------
def run_ray(cfg: TrainConfig) -> Any:
    """Validate, connect to (or start) a cluster, fit, and return the RunResult read from the run folder."""
    from dynalora.core.resume import plan_attempt
    from dynalora.distributed.recovery import validate_out

    cfg.validate()
    _absolutise_paths(cfg)
    cfg = plan_attempt(cfg, "", restarted=False)  # --resume: the run's own config, or one line naming changed flags
    finished = validate_out(cfg)  # before any cluster starts: a bad --out costs nothing and writes nothing
    if finished is not None:
        return finished

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every Ray port on loopback
    if _auth_token():
        # Clusters started here have token auth on, and Ray clients send the token only in token
        # mode; Ray reads this when it is imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    started_here = connect(cfg)
    try:
        check_resources(cfg.workers)
        t0 = time.perf_counter()
        _fit(cfg)
        print(f"dynalora: ray fit took {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        if started_here:
            ray.shutdown()
    return _result_from_run(Path(cfg.out))


def _absolutise_paths(cfg: TrainConfig) -> None:
    """Workers run in another working directory: every local path they read or write is made absolute."""
    cfg.out = str(Path(cfg.out).expanduser().resolve())
    for name in ("model", "train_file", "eval_file", "data_dir"):
        value = getattr(cfg, name)
        if value and Path(value).expanduser().exists():
            setattr(cfg, name, str(Path(value).expanduser().resolve()))
    if cfg.storage_path and "://" not in cfg.storage_path:
        cfg.storage_path = str(Path(cfg.storage_path).expanduser().resolve())


def _reachable(address: str, timeout: float = 3.0) -> bool:
    """Does anything accept TCP connections at host:port (or the URL's host:port)?"""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.hostname is None or parsed.port is None:
        return True  # not host:port ("auto", a ray:// alias...): let ray.init decide
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            return True
    except OSError:
        return False


def _local_cluster_address() -> str | None:
    """GCS address of a cluster started on this machine (`dynalora cluster up` / `ray start`), if it is up."""
    try:
        address = _CURRENT_CLUSTER.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return address if address and _reachable(address, timeout=1.0) else None


def connect(cfg: TrainConfig) -> bool:
    """ray.init against the chosen cluster; returns True when this call started an embedded one."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": True, "logging_level": "WARNING", "configure_logging": True}
    if address:
        where = "--ray-address" if cfg.ray_address else "RAY_ADDRESS"
        if address.startswith(("http://", "https://")):
            if not _reachable(address):
                raise ClusterError(
                    f"no Ray cluster reachable at {address} ({where}); start one with `dynalora cluster up` "
                    "or unset RAY_ADDRESS to use a local one"
                )
            raise ClusterError(
                f"{where}={address} is a dashboard (job submission) address: submit with "
                f"`ray job submit --address {address} -- python -m dynalora train ...`, or pass the GCS address (host:6379)"
            )
        if not _reachable(address):
            raise ClusterError(
                f"no Ray cluster reachable at {address} ({where}); start one with `dynalora cluster up` "
                "or unset RAY_ADDRESS to use a local one"
            )
        _init_existing(address, quiet)
        return False
    local = _local_cluster_address()
    if local:
        _init_existing(local, quiet)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=max(1, os.cpu_count() or 1),
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls
        # (without it, it logs a warning every few seconds); it listens on loopback only.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=_free_port(),
        _node_ip_address="127.0.0.1",
        **quiet,
    )
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _init_existing(address: str, options: dict[str, Any]) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=address, **options)
    except AuthenticationError:
        raise ClusterError(
            f"the Ray cluster at {address} refused this client's auth token: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def check_resources(workers: int) -> None:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if cpus < workers:
        raise ClusterError(
            f"--workers {workers} needs {workers} CPUs (one per worker) but the Ray cluster has {cpus:g}; "
            f"lower --workers to {int(cpus)} or add nodes"
        )


def _trainer_class() -> type:
    """TorchTrainer without Ray Train's PlacementGroupCleaner.

    The cleaner (a detached actor) polls the State API for the controller and, when the answer is missing, takes
    the controller for dead and removes the run's placement group: on a loaded machine that tore down a live run
    (`make demo` beside `make test`: both workers SIGTERMed 40 s after step 200, "A worker health check failed").
    A review comment on ray-project/ray#65447 names it: `is_actor_alive` treats a missing State API result as dead.
    Without the cleaner, a placement group is still released when the job that owns it ends."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class _Trainer(TorchTrainer):
        def _create_default_callbacks(self):  # type: ignore[no-untyped-def]
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return _Trainer


def _fit(cfg: TrainConfig) -> None:
    import ray.train
    from ray.train.torch import TorchConfig

    name = f"dynalora-{Path(cfg.out).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = _trainer_class()(
        _ray_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_id": uuid.uuid4().hex},
        # the process group Ray sets up: its collectives time out like ours (watchdog.py)
        torch_config=TorchConfig(backend="gloo", timeout_s=int(dist_timeout_s())),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": env},
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise _user_error(exc) from None


def _user_error(exc: Exception) -> DynaloraError:
    """The first worker's DynaloraError if that is what failed, else one line about the failure."""
    failures = getattr(exc, "worker_failures", {}) or {}
    for _rank, err in sorted(failures.items()):
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, DynaloraError):
            return cause
    first = next(iter(failures.values()), exc)
    cause = getattr(first, "cause", None) or first
    line = next((ln for ln in str(cause).splitlines() if ln.strip()), type(cause).__name__)
    return DistributedError(f"Ray Train failed ({type(cause).__name__}: {line[:200]}); the worker logs above have details")


def _result_from_run(out: Path) -> Any:
    import json

    from dynalora.core.run_folder import RunResult

    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return RunResult(out=out, metrics=info["metrics"], ranks=info["final_ranks"], steps=int(info["steps"]))


# ---- worker ---------------------------------------------------------------------------------
def _ray_worker(config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker; the gloo process group is already initialised."""
    import ray.train
    import torch

    from dynalora.distributed.collective import TorchCollective
    from dynalora.core.resume import find_owned, plan_attempt
    from dynalora.distributed.watchdog import Watchdog, dist_timeout_s
    from dynalora.distributed.worker import run_worker

    cfg = TrainConfig.from_dict(config["cfg"])
    launch_id = "ray:" + config["run_id"]
    torch.set_num_threads(cfg.threads or 1)  # one intra-op thread per 1-CPU worker unless --threads says otherwise
    collective = TorchCollective(watchdog=Watchdog(dist_timeout_s(), rank=ray.train.get_context().get_world_rank()))
    if collective.rank == 0:
        owned = find_owned(Path(cfg.out), launch_id)  # a restarted attempt of this fit: its folder
        if owned is not None:
            _restore_from_ray(owned, ray.train.get_checkpoint())
    collective.gather("prepared")  # rank 0 restored Ray's checkpoint before anyone reads checkpoints
    # The driver validated --out; a restart of this fit resumes the folder it created.
    cfg = plan_attempt(cfg, launch_id, restarted=True)

    def report(step: int, path: Path | None) -> None:
        metrics = {"step": step}
        if path is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=path.name)
        else:
            ray.train.report(metrics)

    cfg.progress = False  # no tqdm bar in job logs: rank 0 prints one line per log record
    run_worker(cfg, collective, launch_id=launch_id, on_checkpoint=report)


def _restore_from_ray(out: Path, checkpoint: Any) -> None:
    """Copy Ray's persisted checkpoint into the run folder if the run folder lacks it (e.g. lost node)."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        src = Path(folder)
        if not (src / "meta.json").is_file():
            return
        import json

        step = int(json.loads((src / "meta.json").read_text(encoding="utf-8"))["step"])
        dest = out / "checkpoints" / f"step-{step:07d}"
        if dest.is_dir():
            return
        with atomic_dir(dest) as tmp:
            for item in src.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        sys.stderr.write(f"dynalora: restored checkpoint step {step} from Ray storage\n")
