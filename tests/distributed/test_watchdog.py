"""Every distributed stage is bounded: a stage that outlives its deadline ends the worker with one line.

Run: .venv/bin/python -m pytest tests/distributed/test_watchdog.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynalora.errors import ConfigError
from dynalora.distributed.watchdog import EXIT_STALLED, Watchdog, dist_timeout_s

REPO = Path(__file__).resolve().parents[2]


def _collect() -> tuple[list[str], Watchdog]:
    seen: list[str] = []
    return seen, Watchdog(0.2, rank=1, on_expire=seen.append)


def test_expired_stage_reports_one_line() -> None:
    seen, dog = _collect()
    dog.arm("gather / barrier (done)")
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(seen) == 1
    assert seen[0].startswith("dynalora: error: rank 1: gather / barrier (done) did not finish within 0.2 s")
    assert "DYNALORA_DIST_TIMEOUT_S" in seen[0] and "\n" not in seen[0]
    assert dog.armed() == []


def test_finished_stages_and_heartbeats_never_expire() -> None:
    seen, dog = _collect()
    with dog.stage("process-group init"):
        time.sleep(0.05)
    for _ in range(8):  # a heartbeat re-armed faster than its deadline
        dog.arm("training step")
        time.sleep(0.05)
    dog.disarm("training step")
    time.sleep(0.4)
    assert seen == [] and dog.armed() == []


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "nan", "inf"])
def test_bad_timeout_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="DYNALORA_DIST_TIMEOUT_S"):
        dist_timeout_s(raw)


def test_default_and_given_timeout() -> None:
    assert dist_timeout_s("") == 600.0 and dist_timeout_s("45") == 45.0


def test_watchdog_ends_a_process_blocked_in_process_group_init(tmp_path: Path) -> None:
    """rank 0 of a 2-worker group whose peer never comes: blocked inside C++, ended by the watchdog."""
    script = (
        "from dynalora.distributed.collective import init_process_group\n"
        "from dynalora.distributed.watchdog import Watchdog\n"
        "init_process_group(timeout_s=300, watchdog=Watchdog(2.0, rank=0))\n"
        "print('should not get here')\n"
    )
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "2",
           "LOCAL_RANK": "0"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == EXIT_STALLED, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dynalora: error:")]
    assert len(lines) == 1 and "process-group init" in lines[0] and "did not finish within 2 s" in lines[0]
    assert "should not get here" not in proc.stdout
