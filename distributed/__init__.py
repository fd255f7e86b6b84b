"""Data-parallel training: torchrun and Ray Train around the one loop in dynalora.core.train.

    collective.py    TorchCollective: the loop's all-reduce / gather over torch.distributed
    worker.py        what every worker runs: DDP wrap, fault hook, progress lines, distributed.json
    launcher.py      `dynalora train` dispatch; torchrun workers (restart -> resume)
    ray_backend.py   Ray Train driver and worker (TorchTrainer, report/checkpoints, max_failures)
    recovery.py      checks before anything is written; log trimming on resume
    faults.py        DYNALORA_FAULT_STEP fault injection for recovery tests
    cluster.py, cli.py   `dynalora cluster up|down` (single-node, loopback-only Ray head)
"""
