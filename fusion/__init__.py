"""dynalora.fusion: several finished task adapters of one base model behind a router (DLP-LoRA style).

Sits on top of `dynalora.core` (it reads run folders, loads base models and trains the optional multi-task
baseline through it); `core/` never imports it. `dynalora.export` exports a fusion folder as one ONNX graph
(`dynalora export fused`).

    dynalora fuse train --runs runs/rt runs/bbc runs/intent --out fuse/ [--top-p 0.6] [--multitask-steps 600]
    dynalora fuse eval  fuse/ [--max-eval 500] [--json eval.json]

    from dynalora.fusion import FuseConfig, RouterConfig, train_fusion, load_fusion, evaluate_fusion
    train_fusion(FuseConfig(runs=["runs/rt", "runs/bbc"], out="fuse/", router=RouterConfig(epochs=20)))
    fusion = load_fusion("fuse/")                        # .model (FusedModel), .tokenizer (also dynalora.load_fusion)
    results = evaluate_fusion(fusion, max_eval=500)

Modules: `config.py` (FuseConfig, RouterConfig, top-p check; torch-free), `adapters.py` (read a run's adapter,
compatibility checks), `model.py` (stacked fused layers, FusedModel, FusedGraph), `router.py` (sentence
features, router MLP, top-p weights, router training), `train.py` (train / write / load fusion folders),
`evaluate.py` (fused vs oracle vs base vs multi-task accuracy), `cli.py` (`dynalora fuse train|eval`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynalora.fusion.config import DEFAULT_P, FuseConfig, RouterConfig, check_p

if TYPE_CHECKING:
    from dynalora.fusion.adapters import AdapterSpec, FusionError, check_compatible, read_adapter
    from dynalora.fusion.evaluate import evaluate_fusion
    from dynalora.fusion.model import FusedGraph, FusedLoRALayer, FusedModel, FusedOutput, build_fused_model
    from dynalora.fusion.router import Router, sentence_features, top_p_weights, train_router
    from dynalora.fusion.train import LoadedFusion, load_fusion, train_fusion

# name -> module holding it; imported on first use: importing the package must not import torch
_LAZY = {
    "AdapterSpec": "adapters", "FusionError": "adapters", "check_compatible": "adapters", "read_adapter": "adapters",
    "evaluate_fusion": "evaluate",
    "FusedGraph": "model", "FusedLoRALayer": "model", "FusedModel": "model", "FusedOutput": "model",
    "build_fused_model": "model",
    "Router": "router", "sentence_features": "router", "top_p_weights": "router", "train_router": "router",
    "LoadedFusion": "train", "load_fusion": "train", "train_fusion": "train",
}

__all__ = [
    "DEFAULT_P", "AdapterSpec", "FuseConfig", "FusedGraph", "FusedLoRALayer", "FusedModel", "FusedOutput", "FusionError",
    "LoadedFusion", "Router", "RouterConfig", "build_fused_model", "check_compatible", "check_p", "evaluate_fusion",
    "load_fusion", "read_adapter", "sentence_features", "top_p_weights", "train_fusion", "train_router",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
