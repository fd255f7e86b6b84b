"""dynalora: dynamic-rank LoRA from training to the edge.

Sub-packages (folders at the repository root, imported under this name):
    dynalora.core          adapters, importance statistics, rank allocation, training loop, data
    dynalora.fusion        several task adapters behind a router (DLP-LoRA style): `dynalora fuse`
    dynalora.distributed   torchrun / Ray Train launchers and the all-reduce for the statistics
    dynalora.export        merge adapters, ONNX export (fused graphs too), quantisation
    dynalora.edge_runtime  onnxruntime predictor and latency/memory benchmark
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_fusion", "load_run"]


def load_run(path):  # noqa: ANN001, ANN201 - thin lazy re-export, see dynalora.core.run_io
    """Load a training run folder: returns an object with ``.model`` and ``.tokenizer``."""
    from dynalora.core.run_io import load_run as _load_run

    return _load_run(path)


def load_fusion(path):  # noqa: ANN001, ANN201 - thin lazy re-export, see dynalora.fusion.train
    """Load a fusion folder (`dynalora fuse train`): returns an object with ``.model`` and ``.tokenizer``."""
    from dynalora.fusion.train import load_fusion as _load_fusion

    return _load_fusion(path)
