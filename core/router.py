"""Moved to `dynalora.fusion.router` (RouterConfig, check_p: `.config`); this alias re-exports it for one release."""

from dynalora.fusion.config import DEFAULT_P, RouterConfig, check_p
from dynalora.fusion.router import Router, dlp_lora_weights, sentence_features, top_p_weights, train_router

__all__ = ["DEFAULT_P", "Router", "RouterConfig", "check_p", "dlp_lora_weights", "sentence_features", "top_p_weights",
           "train_router"]
