"""Moved to `dynalora.fusion.train` (FuseConfig: `.config`, evaluate_fusion: `.evaluate`); an alias for one release."""

from dynalora.fusion.config import FuseConfig
from dynalora.fusion.evaluate import evaluate_fusion
from dynalora.fusion.train import (
    FORMAT,
    FORMAT_VERSION,
    LoadedFusion,
    balanced,
    encode_texts,
    features,
    folder_name,
    load_fusion,
    load_router,
    router_accuracy,
    task_data,
    train_fusion,
    train_multitask,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "FuseConfig", "LoadedFusion", "balanced", "encode_texts", "evaluate_fusion",
           "features", "folder_name", "load_fusion", "load_router", "router_accuracy", "task_data", "train_fusion",
           "train_multitask"]
