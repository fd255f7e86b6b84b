"""onnxruntime execution providers and named device profiles.

Which providers exist depends on the onnxruntime *build* (onnxruntime = CPU, onnxruntime-gpu = CUDA +
TensorRT, the Android / iOS packages = NNAPI / CoreML / XNNPACK, onnxruntime-qnn = QNN ...).
`resolve_providers` turns a user's request into the ordered list an InferenceSession takes: a
provider that is not in this build is an error, unless the caller allows falling back to CPU, in
which case it warns. A `DeviceProfile` bundles the session settings that suit one class of device.

    from dynalora.edge_runtime.providers import resolve_providers, get_profile, session_options
    providers = resolve_providers("cuda", allow_fallback=True)   # ['CUDAExecutionProvider', 'CPU...']
    opts = session_options(get_profile("mobile-cpu"), threads=None)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from dynalora.errors import DynaloraError

CPU = "CPUExecutionProvider"
# Priority order used when no provider is named: accelerators first, CPU always last.
PRIORITY = (
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "CoreMLExecutionProvider",
    "NnapiExecutionProvider",
    "QNNExecutionProvider",
    "XnnpackExecutionProvider",
    "DmlExecutionProvider",
    CPU,
)
ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "cpu": CPU,
}
# Providers that should keep another accelerator behind them for nodes they cannot take.
_SECONDARY = {"TensorrtExecutionProvider": ("CUDAExecutionProvider",)}


class ProviderError(DynaloraError):
    """A requested execution provider or device profile that this onnxruntime build cannot use."""


class ProviderFallbackWarning(UserWarning):
    """A requested provider was unavailable and the session runs on CPU instead."""


def available_providers() -> list[str]:
    """Providers this onnxruntime build offers (Azure is a remote-call EP, not a device: dropped)."""
    return [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]


def canonical_provider(name: str) -> str:
    """'cuda' / 'CUDA' / 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'; unknown names are an error."""
    key = name.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    for full in ort.get_all_providers():
        if full.lower() == key.lower():
            return full
    raise ProviderError(f"unknown execution provider {name!r}; use one of {', '.join(sorted(set(ALIASES)))} "
                        "or a full onnxruntime name like CUDAExecutionProvider")


def resolve_providers(requested: str | None, allow_fallback: bool = False) -> list[str]:
    """The ordered provider list for an InferenceSession.

    `None` / "auto": every available provider in `PRIORITY` order. A named provider comes first,
    followed by its natural fallbacks (TensorRT -> CUDA) and CPU for nodes it cannot run. If it is not
    in this build: `ProviderError`, or with `allow_fallback` a `ProviderFallbackWarning` and CPU only.
    """
    available = available_providers()
    if requested is None or requested.strip().lower() == "auto":
        ordered = [p for p in PRIORITY if p in available]
        return ordered or [CPU]
    name = canonical_provider(requested)
    if name not in available:
        short = ", ".join(available) or "none"
        if not allow_fallback:
            raise ProviderError(f"{name} is not available in this onnxruntime build (available: {short}); "
                                "install the onnxruntime package for that device or pass --allow-fallback "
                                "to run on CPU")
        warnings.warn(f"{name} is not available (available: {short}); falling back to {CPU}",
                      ProviderFallbackWarning, stacklevel=2)
        return [CPU]
    chain = [name] + [p for p in _SECONDARY.get(name, ()) if p in available]
    if name != CPU:
        chain.append(CPU)
    return chain


def physical_cores() -> int:
    import psutil  # local: keep `import dynalora.edge_runtime` light

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


_GRAPH_OPT = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class DeviceProfile:
    """Session settings for one class of device. Build one with `get_profile(name)` or directly."""

    name: str
    description: str
    provider: str = CPU  # the preferred execution provider (full onnxruntime name)
    intra_op_threads: int | None = None  # threads inside one operator; None = all physical cores
    inter_op_threads: int = 1  # threads across independent operators (only used in parallel mode)
    execution_mode: str = "sequential"  # "sequential" or "parallel"
    graph_optimization: str = "all"  # "disabled" | "basic" | "extended" | "all"
    enable_cpu_mem_arena: bool = True  # the CPU arena keeps peak memory after a large batch; off = lean
    enable_mem_pattern: bool = True  # pre-plans buffers for repeated shapes
    allow_spinning: bool = True  # busy-wait worker threads: lower latency, more power
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per provider name
    expected_precision: str | None = None  # the export precision this profile is tuned for
    memory_cap_mb: float | None = None  # `dynalora bench` fails a configuration whose peak RSS exceeds this
    bench_threads: tuple[int, ...] = ()  # `dynalora bench --profile`'s thread counts when --threads is not given

    def __post_init__(self) -> None:
        if self.execution_mode not in ("sequential", "parallel"):
            raise ProviderError(f"profile {self.name!r}: execution_mode must be 'sequential' or 'parallel'")
        if self.graph_optimization not in _GRAPH_OPT:
            raise ProviderError(f"profile {self.name!r}: graph_optimization must be one of {', '.join(_GRAPH_OPT)}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ProviderError(f"profile {self.name!r}: intra_op_threads must be >= 1 or None (all cores)")


# What a phone app can spend on one model's process memory without the OS killing it in the background:
# Android's low-memory killer and iOS's jetsam act at a few hundred MB on 3-4 GB phones, and an app has more than
# a model to hold. 256 MB leaves the rest of the app its share; the MiniLM int8 target is 120 MB.
MOBILE_MEMORY_CAP_MB = 256


def _trt_cache_dir() -> str:
    return os.environ.get("DYNALORA_TRT_CACHE", str(Path.home() / ".cache" / "dynalora" / "trt-engines"))


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "mobile-cpu", "phone / small ARM board: 1-2 threads, no arena, no spinning (battery, RSS), peak RSS "
            f"cap {MOBILE_MEMORY_CAP_MB} MB",
            intra_op_threads=2, enable_cpu_mem_arena=False, allow_spinning=False,
            memory_cap_mb=MOBILE_MEMORY_CAP_MB, bench_threads=(1, 2)),
        DeviceProfile("desktop-cpu", "laptop / server CPU: all physical cores, arena on", intra_op_threads=None),
        DeviceProfile(
            "jetson-cuda", "NVIDIA Jetson with the CUDA EP; export with --quantize fp16",
            provider="CUDAExecutionProvider", intra_op_threads=2, expected_precision="fp16",
            provider_options={"CUDAExecutionProvider": {
                "device_id": "0",
                "cudnn_conv_algo_search": "HEURISTIC",  # EXHAUSTIVE probing costs seconds at start-up
                "arena_extend_strategy": "kSameAsRequested",  # don't double the arena on shared memory
                "gpu_mem_limit": str(2 * 1024**3),  # Jetson shares RAM between CPU and GPU
            }}),
        DeviceProfile(
            "jetson-trt", "NVIDIA Jetson with TensorRT fp16 + engine cache; CUDA then CPU as fallback",
            provider="TensorrtExecutionProvider", intra_op_threads=2, expected_precision="fp16",
            provider_options={
                "TensorrtExecutionProvider": {
                    "device_id": "0",
                    "trt_fp16_enable": "True",
                    "trt_engine_cache_enable": "True",  # engine builds take minutes: build once
                    "trt_engine_cache_path": _trt_cache_dir(),
                    "trt_max_workspace_size": str(1024**3),
                },
                "CUDAExecutionProvider": {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC",
                                          "arena_extend_strategy": "kSameAsRequested"},
            }),
        DeviceProfile(
            "android-nnapi", "Android phone through NNAPI (GPU/NPU), CPU for unsupported nodes",
            provider="NnapiExecutionProvider", intra_op_threads=2, enable_cpu_mem_arena=False,
            allow_spinning=False, expected_precision="fp32"),
        DeviceProfile(
            "qualcomm-qnn", "Qualcomm Snapdragon HTP (NPU) through QNN; needs an int8 (QDQ) export",
            provider="QNNExecutionProvider", intra_op_threads=2, enable_cpu_mem_arena=False,
            allow_spinning=False, expected_precision="int8",
            provider_options={"QNNExecutionProvider": {"backend_path": "libQnnHtp.so",
                                                       "htp_performance_mode": "burst"}}),
        DeviceProfile(
            "apple-coreml", "Apple silicon through CoreML (ANE / GPU / CPU as CoreML decides)",
            provider="CoreMLExecutionProvider", intra_op_threads=2,
            provider_options={"CoreMLExecutionProvider": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}}),
    )
}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ProviderError(f"unknown device profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def session_options(profile: DeviceProfile | None = None, threads: int | None = None) -> ort.SessionOptions:
    """ort.SessionOptions for `profile` (default desktop-cpu); `threads` overrides its intra-op threads."""
    profile = profile or PROFILES["desktop-cpu"]
    if threads is not None and threads < 1:
        raise ProviderError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or profile.intra_op_threads or physical_cores()
    opts.inter_op_num_threads = profile.inter_op_threads
    opts.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if profile.execution_mode == "sequential"
                           else ort.ExecutionMode.ORT_PARALLEL)
    opts.graph_optimization_level = _GRAPH_OPT[profile.graph_optimization]
    opts.enable_cpu_mem_arena = profile.enable_cpu_mem_arena
    opts.enable_mem_pattern = profile.enable_mem_pattern
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if profile.allow_spinning else "0")
    return opts


def provider_options_for(providers: list[str], profile: DeviceProfile | None) -> list[dict[str, Any]]:
    """One options dict per provider (empty where the profile sets none), as InferenceSession expects."""
    table = profile.provider_options if profile else {}
    return [dict(table.get(p, {})) for p in providers]
