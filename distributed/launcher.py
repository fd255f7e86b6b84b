"""Choose how `dynalora train` runs: torchrun worker or Ray Train driver.

    # one machine, two workers (the backend is detected from torchrun's environment)
    torchrun --standalone --nproc_per_node=2 -m dynalora train --model minilm --task rotten_tomatoes --out runs/rt

    # restart all workers up to once after a failure; they resume from the latest checkpoint
    torchrun --standalone --nproc_per_node=2 --max-restarts 1 -m dynalora train ... --checkpoint-every 50

    # two machines, two workers each: run on both, with a run id unique to this job
    torchrun --nnodes 2 --nproc_per_node 2 --rdzv-backend c10d --rdzv-endpoint HOST0:29400 \
        --rdzv-id rt-$(date +%s) -m dynalora train ... --out /shared/runs/rt

    # Ray Train (see ray_backend.py)
    dynalora train --backend ray --workers 2 ...

torchrun restarts *all* workers after a failure, with TORCHELASTIC_RESTART_COUNT > 0. A restarted
worker resumes from the run folder's latest checkpoint, but only if that folder was created by
this torchrun job (rank 0 records TORCHELASTIC_RUN_ID in the folder's .dynalora marker): a first attempt always
refuses an existing --out without --overwrite, and a restart never continues someone else's run.
Every distributed stage runs under a deadline (watchdog.py, DYNALORA_DIST_TIMEOUT_S): a stalled
group ends its workers, which torchrun then restarts, instead of hanging.
With multi-node torchrun, give each job its own --rdzv-id (the default id is "none").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dynalora.core.config import TrainConfig
from dynalora.errors import ConfigError



def in_torchrun() -> bool:
    """True when started by torchrun (it sets these for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def run_training(cfg: TrainConfig) -> Any:
    if in_torchrun():
        return run_torchrun_worker(cfg)
    if cfg.backend == "ray":
        from dynalora.distributed.ray_backend import run_ray

        return run_ray(cfg)
    if cfg.backend == "torchrun":
        raise ConfigError(
            "--backend torchrun: start the workers with torchrun, e.g. "
            "`torchrun --standalone --nproc_per_node=2 -m dynalora train ...`"
        )
    from dynalora.core.train import train

    return train(cfg)  # validates before anything is written


def run_torchrun_worker(cfg: TrainConfig) -> Any:
    """One torchrun worker: checks, process group, DDP, the shared loop; resume after a restart."""
    from dynalora.core.resume import plan_attempt
    from dynalora.distributed.recovery import validate_out

    if cfg.backend == "ray":
        raise ConfigError("started by torchrun but --backend ray: drop --backend ray, or run without torchrun")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.workers not in (1, world):
        raise ConfigError(f"--workers {cfg.workers} but torchrun started {world} workers: drop --workers under torchrun")
    cfg.backend, cfg.workers = "torchrun", world
    launch_id = "torchrun:" + os.environ.get("TORCHELASTIC_RUN_ID", "")
    cfg.out = str(Path(cfg.out).resolve())
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    # Every check runs on every rank before the process group exists, so nobody has written
    # anything yet: no rank can see a folder that rank 0 created a moment ago.
    cfg = plan_attempt(cfg, launch_id, restarted)
    cfg.validate()
    finished = validate_out(cfg, announce=rank == 0)
    if finished is not None:
        return finished

    from dynalora.distributed.collective import TorchCollective, destroy_process_group, init_process_group
    from dynalora.distributed.watchdog import Watchdog, dist_timeout_s
    from dynalora.distributed.worker import run_worker

    watchdog = Watchdog(dist_timeout_s(), rank=rank)
    init_process_group(watchdog=watchdog)
    try:
        collective = TorchCollective(watchdog=watchdog)
        return run_worker(cfg, collective, launch_id=launch_id, print_progress=not cfg.progress)
    finally:
        destroy_process_group(watchdog)
