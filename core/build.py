"""Building what a run trains: device, base model with injected adapters, rank controller, optimizer.

    device = resolve_device(cfg.device)
    model, tokenizer, controller, model_path = build_model(cfg, data, steps, device)
    optimizer, scheduler, names = build_optimizer(model, cfg, steps)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from dynalora.core.config import TrainConfig
from dynalora.core.controller import RankController
from dynalora.core.data import TaskData
from dynalora.core.task import GENERATION
from dynalora.errors import ConfigError
from dynalora.core.inject import head_modules, inject_adapters
from dynalora.core.models import load_task_model, load_tokenizer, resolve_model_path


def resolve_device(name: str) -> torch.device:
    """'auto' -> this worker's CUDA device when one is present (LOCAL_RANK under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def build_model(
    cfg: TrainConfig, data: TaskData, steps: int, device: torch.device | None = None
) -> tuple[nn.Module, Any, RankController, str]:
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    if data.spec.problem == GENERATION:
        check_generation(cfg, data, tokenizer)
    model = load_task_model(model_path, data.spec.num_labels, data.spec.problem, seed=cfg.seed)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)  # adapter init is seeded independently of the model load
    dynamic = not cfg.dynamic.is_static
    layers, ctx = inject_adapters(
        model,
        targets=cfg.lora.target_modules,
        capacity=cfg.lora.resolved_max_rank(dynamic),
        rank=cfg.lora.rank,
        scaling=cfg.lora.alpha / cfg.lora.rank,
        dropout=cfg.lora.dropout,
    )
    if device is not None:
        model.to(device)  # before the controller: its statistics buffer lives on the layers' device
    controller = RankController(layers, ctx, cfg.lora, cfg.dynamic, steps, seed=cfg.seed)
    return model, tokenizer, controller, model_path


def check_generation(cfg: TrainConfig, data: TaskData, tokenizer: Any) -> None:
    """What a generation run cannot do, refused before the model loads or anything is written."""
    from dynalora.core.generate import check_lengths

    if cfg.dynamic.input_adaptive == "per-example":
        raise ConfigError("--input-adaptive per-example does not apply to generation: the gate is computed per "
                          "forward, and with a KV cache each decoding step sees one token; use layer (default) or off")
    check_lengths(tokenizer, data.spec, data.train, cfg.max_length, "training")
    check_lengths(tokenizer, data.spec, data.eval, cfg.max_length, "evaluation")


# The peak learning rate when --lr is not given, from the rank study (benchmarks/results/rank_study.md, MiniLM,
# sweeps of 3e-4 / 1e-3 / 3e-3 on validation files): with the default targets (query / value, rank 8, 100 steps)
# 3e-3 was the best for static LoRA, static at twice the rank and dynamic alike (1e-3 under-trained static:
# Rotten Tomatoes validation 0.61 vs 0.74-0.75); on every projection at average rank 1-2 over 3 epochs 1e-3 was
# the best and 3e-3 collapsed runs to the majority class. Causal LMs were not swept: 1e-3.
LR_ENCODER_DEFAULT_TARGETS = 3e-3
LR_OTHERWISE = 1e-3


def default_lr(cfg: TrainConfig, model_type: str) -> float:
    """--lr, or the measured default for this model kind and target modules (see above)."""
    from dynalora.core.models import ENCODER_FAMILIES

    if cfg.lr is not None:
        return float(cfg.lr)
    if model_type in ENCODER_FAMILIES and cfg.lora.target_modules is None:
        return LR_ENCODER_DEFAULT_TARGETS
    return LR_OTHERWISE


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any, dict[int, str]]:
    """AdamW over the trainable tensors, linear warm-up then linear decay to 0 at `steps`.

    With `cfg.head_lr` the task head's tensors are a second parameter group at that peak rate (the
    schedule scales both groups alike); the adapters' group comes first, so it is what logs report.
    Returns (optimizer, scheduler, {id(param): name}); the names key the optimizer state in checkpoints.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = {id(p): n for n, p in trainable}
    lr = default_lr(cfg, str(getattr(getattr(model, "config", None), "model_type", "")))
    groups: list[dict[str, Any]] = [{"params": [p for _, p in trainable]}]
    if cfg.head_lr is not None:
        heads = set(head_modules(model))
        if not heads:
            raise ConfigError("--head-lr needs a task head (a classifier or regression head); this model has none")
        in_head = {id(p) for n, p in trainable if n.split(".")[0] in heads}
        groups = [{"params": [p for _, p in trainable if id(p) not in in_head]},
                  {"params": [p for _, p in trainable if id(p) in in_head], "lr": float(cfg.head_lr)}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * steps)) if cfg.warmup_ratio > 0 else 0

    def lr_lambda(s: int) -> float:
        if warm and s < warm:
            return (s + 1) / warm
        return max(0.0, (steps - s) / max(1, steps - warm))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), names
