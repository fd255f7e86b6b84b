"""`dynalora cluster up|down` stops only the cluster it started, never every Ray cluster of the user.

    .venv/bin/python -m pytest tests/distributed/test_cluster.py -q                  (the Ray test: -m distributed)

The fast tests fake a cluster with sleeping processes whose command lines name a session folder;
the Ray test starts two real loopback clusters in a private Ray temp folder (RAY_TMPDIR), so neither
it nor `dynalora cluster down` can see or touch any other Ray cluster on the machine.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dynalora.cli import main
from dynalora.distributed.cluster import (
    ClusterRecord,
    _write_records,
    cluster_processes,
    discover,
    free_port,
    ray_env,
    ray_executable,
    read_records,
    state_file,
    stop_processes,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private Ray temp folder (short: Ray's unix sockets live under it)."""
    root = Path(tempfile.mkdtemp(prefix="dlr", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


# ---- fast: no Ray --------------------------------------------------------------------------------
def test_down_with_nothing_recorded_touches_nothing(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _sleeper(f"--session-dir={ray_tmp}/ray/session_other")
    try:
        assert main(["cluster", "down"]) == 0
        out = capsys.readouterr().out
        assert "no Ray cluster started by `dynalora cluster up`" in out and "nothing stopped" in out
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_down_stops_only_the_recorded_session(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = f"{ray_tmp}/ray/session_2026-01-01_00-00-00_000001_42"
    mine = _sleeper(f"--session-dir={session}")
    ours_by_address = _sleeper("--gcs-address=127.0.0.1:1")
    # a session folder whose name merely starts with ours, and another cluster's address: not ours
    decoys = [_sleeper(f"--session-dir={session}7"), _sleeper("--gcs-address=127.0.0.1:10")]
    try:
        _write_records([ClusterRecord(gcs_address="127.0.0.1:1", port=1, session_dir=session, pids=[mine.pid])])
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        assert main(["cluster", "down", "--grace", "5"]) == 0
        out = capsys.readouterr().out
        assert "stopped the Ray cluster at 127.0.0.1:1 (session_2026-01-01_00-00-00_000001_42): 2 processes" in out
        assert mine.wait(timeout=10) is not None and ours_by_address.wait(timeout=10) is not None
        assert all(d.poll() is None for d in decoys)
        assert read_records() == [] and not (ray_tmp / "ray" / "ray_current_cluster").exists()
        assert main(["cluster", "down"]) == 0 and "nothing stopped" in capsys.readouterr().out
    finally:
        for proc in (mine, ours_by_address, *decoys):
            proc.kill()
            proc.wait()


def test_recorded_cluster_that_is_gone_is_forgotten(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_records([ClusterRecord(gcs_address="127.0.0.1:2", port=2, session_dir=f"{ray_tmp}/ray/session_gone")])
    assert main(["cluster", "down", "--port", "2"]) == 0
    assert "was no longer running; forgotten" in capsys.readouterr().out
    assert read_records() == []


def test_corrupt_state_file_is_one_line(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text("{not json")
    assert main(["cluster", "down"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynalora: error: ") and "corrupt" in err[0]


# ---- Ray: two real clusters, `down` stops the recorded one only -----------------------------------
def _run(cmd: list[str], env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.distributed
def test_down_stops_its_cluster_and_leaves_another(ray_tmp: Path) -> None:
    env = {k: v for k, v in ray_env("127.0.0.1").items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_TMPDIR=str(ray_tmp), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    mine_port, mine_dash, other_port = free_port(), free_port(), free_port()
    other: ClusterRecord | None = None
    started: ClusterRecord | None = None
    try:
        up = _run([sys.executable, "-m", "dynalora", "cluster", "up", "--num-cpus", "1", "--port", str(mine_port),
                   "--dashboard-port", str(mine_dash)], env)
        assert up.returncode == 0, up.stderr[-3000:]
        (started,) = read_records()
        assert started.port == mine_port and started.session_dir and str(ray_tmp) in started.session_dir
        # a second cluster started by hand, the way cluster.py starts one (loopback only, own ports)
        cmd = [ray_executable(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={other_port}",
               "--num-cpus=1", "--include-dashboard=false", "--dashboard-host=127.0.0.1",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats"]
        start = _run(cmd, env)
        other = discover(f"127.0.0.1:{other_port}", other_port, timeout_s=30)
        assert start.returncode == 0, start.stderr[-3000:]
        assert other.session_dir and other.session_dir != started.session_dir
        # `ray start` points Ray's "current cluster" file at the newest cluster: the second one
        current = ray_tmp / "ray" / "ray_current_cluster"
        assert current.read_text().strip() == f"127.0.0.1:{other_port}"
        assert _answers(mine_port) and _answers(other_port)

        down = _run([sys.executable, "-m", "dynalora", "cluster", "down"], env)
        assert down.returncode == 0, down.stderr[-2000:]
        assert f"stopped the Ray cluster at 127.0.0.1:{mine_port}" in down.stdout
        assert "gcs_server" in down.stdout and "raylet" in down.stdout
        assert not cluster_processes(started) and not _answers(mine_port) and not _answers(mine_dash)
        assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in started.pids)
        # the other cluster is untouched and still answers; Ray's current-cluster file still points at it
        assert _answers(other_port) and cluster_processes(other)
        assert all(psutil.pid_exists(pid) for pid in other.pids)
        assert current.read_text().strip() == f"127.0.0.1:{other_port}"

        again = _run([sys.executable, "-m", "dynalora", "cluster", "down"], env)
        assert again.returncode == 0 and "nothing stopped" in again.stdout
        assert _answers(other_port)
    finally:
        for record in (started, other):
            if record is not None:
                stop_processes(cluster_processes(record))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_refuses_bad_ports_before_starting(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, needle in ((["--port", "70000"], "--port must be a TCP port"),
                         (["--port", "7000", "--dashboard-port", "7000"], "both 7000"),
                         (["--num-cpus", "-1"], "--num-cpus must be >= 0"),
                         (["--timeout", "nan"], "--timeout must be a finite number")):
        assert main(["cluster", "up", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not state_file().exists()


def test_down_without_port_refuses_when_several_are_recorded(ray_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two `cluster up`s (say a demo and a test): a bare `down` must not stop both; it names them instead."""
    a = _sleeper(f"--session-dir={ray_tmp}/ray/session_a")
    b = _sleeper(f"--session-dir={ray_tmp}/ray/session_b")
    try:
        _write_records([ClusterRecord(gcs_address="127.0.0.1:3", port=3, session_dir=f"{ray_tmp}/ray/session_a", pids=[a.pid]),
                        ClusterRecord(gcs_address="127.0.0.1:4", port=4, session_dir=f"{ray_tmp}/ray/session_b", pids=[b.pid])])
        assert main(["cluster", "down"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "2 Ray clusters" in err[0] and "127.0.0.1:3" in err[0] and "--port" in err[0]
        assert a.poll() is None and b.poll() is None and len(read_records()) == 2
        assert main(["cluster", "down", "--port", "3", "--grace", "5"]) == 0
        assert a.wait(timeout=10) is not None and b.poll() is None
        assert [r.port for r in read_records()] == [4]
    finally:
        for proc in (a, b):
            proc.kill()
            proc.wait()
