"""`dynalora bench EXPORT ...`: registers the benchmark subcommand (see bench.py)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    from dynalora.edge_runtime.bench import add_bench_arguments, bench_main

    p = sub.add_parser("bench", help="benchmark an ONNX export on this device (latency, memory)",
                       description="Validate, warm up, then time an export with onnxruntime (optionally vs PyTorch).")
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)
