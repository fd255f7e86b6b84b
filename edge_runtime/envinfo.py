"""The machine and software a measurement ran on: one record for `dynalora bench` and every benchmark report.

    from dynalora.edge_runtime.envinfo import environment
    environment()                      # python, os, cpu, cores, RAM, providers, package versions, load, date
    environment(("torch", "ray"))      # versions of these packages instead of the default list

Versions come from the installed distributions' metadata, so nothing is imported to read them: torch's
version is reported when torch is installed, and None otherwise; `torch_threads` only when the caller
already imported torch. No torch import here.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("dynalora", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "optimum", "optimum-onnx", "numpy")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    try:
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def environment(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """Versions, CPU, cores, memory, providers and load: enough to tell whether two result files are comparable."""
    import psutil

    from dynalora.edge_runtime.providers import available_providers, physical_cores

    torch = sys.modules.get("torch")
    return {
        "python": platform.python_version(), "os": platform.platform(), "cpu": cpu_model(),
        "physical_cores": physical_cores(), "logical_cores": os.cpu_count(),
        "ram_gb": psutil.virtual_memory().total / 1024**3, "providers_available": available_providers(),
        "versions": {pkg: package_version(pkg) for pkg in packages},
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
