"""Moved to `dynalora.fusion` (adapters.py, model.py); this alias re-exports it for one release."""

from dynalora.fusion.adapters import FUSABLE, AdapterSpec, FusionError, check_compatible, read_adapter
from dynalora.fusion.model import (
    MASKED_LOGIT,
    FusedGraph,
    FusedLoRALayer,
    FusedModel,
    FusedOutput,
    FusionContext,
    build_fused_model,
)

__all__ = ["FUSABLE", "MASKED_LOGIT", "AdapterSpec", "FusedGraph", "FusedLoRALayer", "FusedModel", "FusedOutput",
           "FusionContext", "FusionError", "build_fused_model", "check_compatible", "read_adapter"]
