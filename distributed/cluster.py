"""A single-node Ray head for `ray job submit`, bound to 127.0.0.1 unless told otherwise.

    dynalora cluster up [--num-cpus 2] [--port 6379] [--dashboard-port 8265] [--host 127.0.0.1]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m dynalora train --backend ray ...
    dynalora cluster down

`up` runs `ray start --head` with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without it Ray binds GCS and
raylet to every interface even with --node-ip-address 127.0.0.1), waits until the dashboard's job
API answers, and prints the address to submit to. `down` runs `ray stop`, which stops the Ray
processes of this user on this machine. Binding to another host (e.g. 0.0.0.0 to let other nodes
join) is an explicit choice and prints a warning: anyone who can reach the ports can run code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dynalora.distributed.errors import ClusterError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ClusterInfo:
    gcs_address: str  # host:port, for `ray start --address` / ray.init
    dashboard_url: str  # http://host:port, for `ray job submit --address`


def ray_executable() -> str:
    """The `ray` next to this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    if here.is_file():
        return str(here)
    found = shutil.which("ray")
    if found is None:
        raise ClusterError("the `ray` command is not installed: pip install 'ray[default,train]'")
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
    raise ClusterError(f"the Ray dashboard at {url} did not answer within {timeout_s:.0f} s ({last}); see /tmp/ray/session_latest/logs")


def up(
    *, num_cpus: int | None = None, host: str = "127.0.0.1", port: int = 6379, dashboard_port: int = 8265,
    timeout_s: float = 90.0,
) -> ClusterInfo:
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
    wait_for_jobs_api(info.dashboard_url, timeout_s)
    return info


def down(timeout_s: float = 60.0) -> None:
    proc = subprocess.run([ray_executable(), "stop"], env=ray_env("127.0.0.1"), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ClusterError(f"`ray stop` failed: {tail[0]}")
