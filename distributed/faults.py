"""Fault injection for recovery tests: kill one worker once, at a chosen optimizer step.

    DYNALORA_FAULT_STEP=25 DYNALORA_FAULT_MARKER=/tmp/x/fired [DYNALORA_FAULT_RANK=1] \
        torchrun --standalone --nproc_per_node=2 --max-restarts 1 -m dynalora train ...

After step 25 the worker of rank DYNALORA_FAULT_RANK (default 1) creates the marker file and
exits with os._exit(1): no cleanup, no exception handler, like a crashed or killed process.
The marker makes it fire once, so the restarted attempt runs through. Without
DYNALORA_FAULT_STEP this module does nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def fault_hook(rank: int) -> Callable[[int], None] | None:
    """An on_step hook that crashes this worker at the configured step, or None when not configured."""
    step_env = os.environ.get("DYNALORA_FAULT_STEP")
    if not step_env:
        return None
    fault_step = int(step_env)
    fault_rank = int(os.environ.get("DYNALORA_FAULT_RANK", "1"))
    marker_env = os.environ.get("DYNALORA_FAULT_MARKER")
    if not marker_env:
        raise RuntimeError("DYNALORA_FAULT_STEP needs DYNALORA_FAULT_MARKER (a file path) so the fault fires once")
    marker = Path(marker_env)
    if rank != fault_rank:
        return None

    def on_step(step: int) -> None:
        if step != fault_step or marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {rank} crashed after step {step}\n", encoding="utf-8")
        sys.stderr.write(f"dynalora: fault injection: rank {rank} exits after step {step}\n")
        sys.stderr.flush()
        os._exit(1)

    return on_step
