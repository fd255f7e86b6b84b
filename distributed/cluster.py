"""A single-node Ray head for `ray job submit`, bound to 127.0.0.1 unless told otherwise.

    dynalora cluster up [--num-cpus 2] [--port 6379] [--dashboard-port 8265] [--host 127.0.0.1]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m dynalora train --backend ray ...
    dynalora cluster down

`up` runs `ray start --head` with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without it Ray binds GCS and
raylet to every interface even with --node-ip-address 127.0.0.1), waits until the dashboard's job
API answers, and prints the address to submit to. Binding to another host (e.g. 0.0.0.0 to let other
nodes join) is an explicit choice and prints a warning: anyone who can reach the ports can run code.

`up` records what it started (GCS address, session folder, node id, the head's PIDs) in a state file
in Ray's temp folder (`$RAY_TMPDIR/ray/dynalora_clusters.json`, default /tmp/ray), written atomically.
`down` stops only what is recorded there (`--port P`: that cluster alone): every process of that
session (gcs_server, raylet, dashboard, agents, workers), found by its command line naming the
session folder, node id or GCS address, plus their descendants; SIGTERM, then SIGKILL after a grace
period. It never runs `ray stop`, which would stop every Ray cluster of the user on this machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dynalora.atomic import write_json
from dynalora.distributed.errors import ClusterError
from dynalora.errors import TRAIN_INSTALL

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATE_NAME = "dynalora_clusters.json"
STOP_GRACE_S = 10.0


@dataclass
class ClusterInfo:
    gcs_address: str  # host:port, for `ray start --address` / ray.init
    dashboard_url: str  # http://host:port, for `ray job submit --address`


@dataclass
class ClusterRecord:
    """What `cluster up` started: enough for `cluster down` to find exactly its processes."""

    gcs_address: str
    port: int
    dashboard_url: str = ""
    session_dir: str | None = None  # RAY_TMP/ray/session_<date>_<pid>: in the command line of every head process
    node_id: str | None = None
    pids: list[int] = field(default_factory=list)  # head processes when it started (for the record)
    started_at: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def ray_executable() -> str:
    """The `ray` next to this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    if here.is_file():
        return str(here)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError(f"the `ray` command is not installed: `dynalora cluster` needs the training stack: {TRAIN_INSTALL}")
    return found


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ray_env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    if host in LOOPBACK:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray port on 127.0.0.1 (checked with ss -ltnp)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # `python` in a job's entrypoint is this interpreter (the venv dynalora is installed in), not the
    # system one: jobs inherit PATH from the cluster processes.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Token auth on, always: with a token file Ray turns it on by itself, without one it stays off,
    # and clients (`ray job submit`) only send the token when RAY_AUTH_MODE=token.
    env.setdefault("RAY_AUTH_MODE", "token")
    return env


def ensureauth_token(env: dict[str, str]) -> None:
    if env.get("RAY_AUTH_MODE", "").lower() != "token" or auth_token():
        return
    proc = subprocess.run([ray_executable(), "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ClusterError("could not create a Ray auth token (`ray get-auth-token --generate` failed)")


def auth_token() -> str | None:
    """Ray's token (token auth is on by default for clusters started here): env, else ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def wait_for_jobs_api(url: str, timeout_s: float) -> str:
    """Poll GET {url}/api/version until it answers; returns the Ray version it reports."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/api/version")
        token = auth_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return str(json.loads(resp.read().decode()).get("ray_version", "?"))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):  # it answers; `ray job submit` brings its own token
                return "?"
            last = str(exc)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise ClusterError(f"the Ray dashboard at {url} did not answer within {timeout_s:.0f} s ({last}); see {ray_temp_dir() / 'session_latest' / 'logs'}")


def check_up_arguments(num_cpus: int | None, port: int, dashboard_port: int, timeout_s: float) -> None:
    for flag, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 1 <= p <= 65535:
            raise ClusterError(f"{flag} must be a TCP port in 1..65535, got {p}")
    if port == dashboard_port:
        raise ClusterError(f"--port and --dashboard-port are both {port}: pick two different ports")
    if num_cpus is not None and num_cpus < 0:
        raise ClusterError(f"--num-cpus must be >= 0, got {num_cpus}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ClusterError(f"--timeout must be a finite number of seconds > 0, got {timeout_s}")


def up(
    *, num_cpus: int | None = None, host: str = "127.0.0.1", port: int = 6379, dashboard_port: int = 8265,
    timeout_s: float = 90.0,
) -> ClusterInfo:
    check_up_arguments(num_cpus, port, dashboard_port, timeout_s)
    if host not in LOOPBACK:
        print(
            f"dynalora: warning: binding the Ray head to {host}: every Ray port (GCS {port}, dashboard "
            f"{dashboard_port}, workers) is reachable from that network; only do this on a trusted network",
            file=sys.stderr,
        )
    bind = "127.0.0.1" if host == "localhost" else host
    for what, p in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not port_free(bind if bind != "0.0.0.0" else "", p):
            raise ClusterError(f"port {p} ({what}) is in use on {host}: is a cluster already up? (`dynalora cluster down`) or pick another {what}")
    cmd = [
        ray_executable(), "start", "--head",
        f"--node-ip-address={bind}",
        f"--port={port}",
        "--include-dashboard=true",
        f"--dashboard-host={bind}",
        f"--dashboard-port={dashboard_port}",
        # these default to fixed ports (10001, 52365) that a second cluster on the machine would clash on
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    env = ray_env(host)
    ensureauth_token(env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ClusterError(f"`ray start --head` failed: {tail[0]}")
    dash_host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    info = ClusterInfo(gcs_address=f"{dash_host}:{port}", dashboard_url=f"http://{dash_host}:{dashboard_port}")
    record = discover(info.gcs_address, port, info.dashboard_url)
    with _state_lock():  # recorded before waiting: a dashboard that never answers still leaves a stoppable cluster
        _write_records([r for r in read_records() if r.port != port] + [record])
    wait_for_jobs_api(info.dashboard_url, timeout_s)
    return info


# ---- what `up` started, and stopping exactly that ------------------------------------------------
def ray_temp_dir() -> Path:
    """Ray's temp folder, as Ray picks it: $RAY_TMPDIR/ray, else $TMPDIR/ray (Linux), else /tmp/ray."""
    if os.environ.get("RAY_TMPDIR"):
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"
    else:
        base = tempfile.gettempdir()
    return Path(base) / "ray"


def state_file() -> Path:
    return ray_temp_dir() / STATE_NAME


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise read-modify-write of the state file between concurrent `cluster up` / `down`."""
    path = state_file().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no loopback Ray head either
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_records() -> list[ClusterRecord]:
    path = state_file()
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [ClusterRecord.from_dict(c) for c in data["clusters"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"the cluster state file {path} is corrupt ({exc}); delete it (Ray processes it listed "
                           "keep running: stop them by PID)") from None


def _write_records(records: list[ClusterRecord]) -> None:
    write_json(state_file(), {"clusters": [asdict(r) for r in records]})


def _arg_value(cmdline: list[str], flag: str) -> str | None:
    for arg in cmdline:
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def discover(gcs_address: str, port: int, dashboard_url: str = "", timeout_s: float = 10.0) -> ClusterRecord:
    """The record of the Ray head whose gcs_server listens on `port` (found by its command line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in psutil.process_iter():
            cmd = _cmdline(proc)
            if _arg_value(cmd, "--gcs_server_port") == str(port) and _arg_value(cmd, "--session-dir"):
                record = ClusterRecord(gcs_address=gcs_address, port=port, dashboard_url=dashboard_url,
                                       session_dir=_arg_value(cmd, "--session-dir"), node_id=_arg_value(cmd, "--node-id"),
                                       started_at=time.time())
                record.pids = sorted(p.pid for p in cluster_processes(record))
                return record
        if time.monotonic() > deadline:
            # not found (an unusual Ray build): the GCS address alone still identifies its processes
            return ClusterRecord(gcs_address=gcs_address, port=port, dashboard_url=dashboard_url, started_at=time.time())
        time.sleep(0.5)


def _belongs(cmdline: list[str], record: ClusterRecord) -> bool:
    """A process of this cluster's session: its command line names the session folder, node id or GCS address."""
    if not cmdline:
        return False
    session = re.compile(re.escape(record.session_dir) + r"(?![\w.-])") if record.session_dir else None
    exact = {f"--gcs-address={record.gcs_address}", f"--gcs_address={record.gcs_address}",
             f"--address={record.gcs_address}"}
    if record.node_id:
        exact |= {f"--node-id={record.node_id}", f"--node_id={record.node_id}"}
    return any(arg in exact or (session is not None and session.search(arg)) for arg in cmdline)


def cluster_processes(record: ClusterRecord) -> list[psutil.Process]:
    """The live processes of the recorded cluster and all their descendants (never this process)."""
    members: dict[int, psutil.Process] = {}
    roots = [p for p in psutil.process_iter() if _belongs(_cmdline(p), record)]
    for proc in roots:
        members.setdefault(proc.pid, proc)
        try:
            for child in proc.children(recursive=True):
                members.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    members.pop(os.getpid(), None)
    return sorted(members.values(), key=lambda p: p.pid)


def _label(proc: psutil.Process) -> str:
    """gcs_server, raylet, dashboard.py, ray::IDLE ... (python scripts by their script name)."""
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if name.startswith("ray-dashboard-") or (cmd and cmd[0].startswith("ray-dashboard-")):
        return "dashboard modules"
    if name.startswith("python"):
        script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), None)
        module = cmd[cmd.index("-m") + 1] if "-m" in cmd[:-1] else None
        return script or module or name
    return name


def stop_processes(procs: list[psutil.Process], grace_s: float = STOP_GRACE_S) -> list[psutil.Process]:
    """SIGTERM, wait up to `grace_s`, then SIGKILL what is left; returns the processes still alive (none, normally)."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    return alive


def _forget_current_cluster(record: ClusterRecord) -> None:
    """Ray's `ray_current_cluster` file, if it still points at the stopped cluster (as `ray stop` does)."""
    path = ray_temp_dir() / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == record.gcs_address:
            path.unlink()


def down(port: int | None = None, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop the clusters `up` recorded (only the one on `port` if given); one line per cluster, for the CLI."""
    with _state_lock():
        records = read_records()
        chosen = [r for r in records if port is None or r.port == port]
        if port is None and len(chosen) > 1:
            # several `cluster up`s (another terminal, a test, a demo): stopping all of them would stop
            # clusters this caller did not start; make the caller say which one
            raise ClusterError(
                f"{len(chosen)} Ray clusters were started by `dynalora cluster up` "
                f"({', '.join(r.gcs_address for r in chosen)}): pass --port to say which one to stop"
            )
        if not chosen:
            where = f" on port {port}" if port is not None else ""
            known = f" (recorded: {', '.join(r.gcs_address for r in records)})" if records else ""
            return [f"no Ray cluster started by `dynalora cluster up`{where} is recorded in {state_file()}{known}; "
                    "nothing stopped (other Ray clusters are left alone)"]
        lines: list[str] = []
        stopped: list[ClusterRecord] = []
        for record in chosen:
            procs = cluster_processes(record)
            labels = sorted({_label(p) for p in procs})
            alive = stop_processes(procs, grace_s)
            if alive:
                _write_records([r for r in records if not any(r is s for s in stopped)])
                raise ClusterError(f"could not stop PIDs {', '.join(str(p.pid) for p in alive)} of the Ray cluster at "
                                   f"{record.gcs_address}; stop them by hand")
            stopped.append(record)
            _forget_current_cluster(record)
            session = Path(record.session_dir).name if record.session_dir else "session unknown"
            if procs:
                lines.append(f"stopped the Ray cluster at {record.gcs_address} ({session}): {len(procs)} processes "
                             f"({', '.join(labels)})")
            else:
                lines.append(f"the Ray cluster at {record.gcs_address} ({session}) was no longer running; forgotten")
        _write_records([r for r in records if not any(r is s for s in stopped)])
    return lines
