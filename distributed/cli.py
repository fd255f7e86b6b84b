"""`dynalora cluster up|down`: registered into the main CLI by `dynalora.cli.build_parser`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("cluster", help="start / stop a single-node Ray cluster for `ray job submit`")
    actions = p.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start a Ray head on this machine (loopback only by default)")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs the cluster offers (default: all)")
    up.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback is reachable from the network")
    up.add_argument("--port", type=int, default=6379, help="GCS port (what `ray.init` / other nodes connect to)")
    up.add_argument("--dashboard-port", type=int, default=8265, help="dashboard / job submission port")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the cluster to accept jobs")
    up.set_defaults(func=_cmd_up)
    down = actions.add_parser(
        "down", help="stop the Ray cluster `cluster up` started (recorded in Ray's temp folder); others are left alone")
    down.add_argument("--port", type=int, default=None,
                      help="GCS port of the recorded cluster to stop (needed when `cluster up` started several)")
    down.add_argument("--grace", type=float, default=10.0, help="seconds to wait after SIGTERM before SIGKILL (default 10)")
    down.set_defaults(func=_cmd_down)


def _cmd_up(args: argparse.Namespace) -> int:
    from dynalora.distributed.cluster import up

    info = up(num_cpus=args.num_cpus, host=args.host, port=args.port, dashboard_port=args.dashboard_port, timeout_s=args.timeout)
    print(f"Ray cluster is up.\n  dashboard / jobs: {info.dashboard_url}\n  GCS address:      {info.gcs_address}")
    print("  submit:  export RAY_AUTH_MODE=token   # Ray clients send the token in ~/.ray/auth_token only then")
    print(f"           ray job submit --address {info.dashboard_url} --working-dir . -- python -m dynalora train --backend ray ...")
    print(f"  stop:    dynalora cluster down --port {args.port}   (--port may be left out while it is the only one)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    import math

    from dynalora.distributed.cluster import down
    from dynalora.distributed.errors import ClusterError

    if not (math.isfinite(args.grace) and args.grace >= 0):
        raise ClusterError(f"--grace must be a finite number of seconds >= 0, got {args.grace}")
    for line in down(port=args.port, grace_s=args.grace):
        print(line)
    return 0
