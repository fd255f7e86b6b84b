"""Put dynamic LoRA layers into a Hugging Face model, by target module names.

`inject_adapters(model, ...)` replaces every matching `nn.Linear` / GPT-2 `Conv1D` with a
`DynamicLoRALayer` wrapping it, freezes the base model, leaves the task head trainable, and
installs a forward pre-hook that hands the attention mask to the layers (per-example mode and
input statistics ignore padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynalora.core.allocation import allocate_ranks
from dynalora.errors import ModelError
from dynalora.core.layer import AdapterContext, Conv1D, DynamicLoRALayer, base_shape

# model_type -> default target leaf names (the attention query/value projections, as LoRA's paper)
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
}

# task heads: trained in full and saved with the adapter (PEFT's modules_to_save)
HEAD_NAMES = ("classifier", "score")


def default_targets(model: nn.Module) -> tuple[str, ...]:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type not in DEFAULT_TARGETS:
        raise ModelError(
            f"no default target modules for model type {model_type!r}; pass --target-modules "
            f"(candidates: {', '.join(candidate_names(model))})"
        )
    return DEFAULT_TARGETS[model_type]


def candidate_names(model: nn.Module) -> list[str]:
    """Leaf names of every adaptable layer (excluding the task head)."""
    names = set()
    for full, mod in model.named_modules():
        leaf = full.rsplit(".", 1)[-1]
        if _adaptable(mod) and leaf not in HEAD_NAMES and not full.split(".")[0] in HEAD_NAMES:
            names.add(leaf)
    return sorted(names)


def _adaptable(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or bool(Conv1D and isinstance(mod, Conv1D))


def find_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full names of modules whose name equals a target or ends with '.' + target."""
    found = []
    for full, mod in model.named_modules():
        if not _adaptable(mod):
            continue
        if any(full == t or full.endswith("." + t) for t in targets):
            found.append(full)
    if not found:
        raise ModelError(
            f"target modules {list(targets)} match no Linear/Conv1D layer; candidates: "
            f"{', '.join(candidate_names(model))}"
        )
    return found


def head_modules(model: nn.Module) -> list[str]:
    """Names of the task-head modules (trainable, saved in full)."""
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def inject_adapters(
    model: nn.Module,
    *,
    targets: Sequence[str] | None,
    capacity: int | dict[str, int],
    rank: int | dict[str, int],
    scaling: float,
    dropout: float = 0.0,
) -> tuple[dict[str, DynamicLoRALayer], AdapterContext]:
    """Wrap the target layers in place; returns ({full name: layer}, shared context).

    `capacity` / `rank` are one int for every layer or a {full name: int} map (used when a saved
    run with per-layer ranks is restored: taken as given). One int is capped, per layer, by the
    layer's width min(in_features, out_features); one int rank is the average: a layer narrower
    than it holds its width and the rest is shared evenly by the others (see `initial_ranks`).
    """
    targets = tuple(targets) if targets else default_targets(model)
    names = find_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    bases = {full: model.get_submodule(full) for full in names}
    if isinstance(capacity, dict):
        caps = {full: max(capacity[full], 1) for full in names}
    else:
        caps = {full: max(min(capacity, layer_width(bases[full])), 1) for full in names}
    ranks = rank if isinstance(rank, dict) else dict(zip(names, initial_ranks(rank, [caps[n] for n in names]), strict=True))
    ctx = AdapterContext()
    layers: dict[str, DynamicLoRALayer] = {}
    for full in names:
        parent_name, _, leaf = full.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = DynamicLoRALayer(
            bases[full], capacity=caps[full], rank=ranks[full], scaling=scaling, dropout=dropout, context=ctx, name=full
        )
        setattr(parent, leaf, layer)
        layers[full] = layer
    for head in head_modules(model):
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    model.register_forward_pre_hook(_mask_hook(ctx), with_kwargs=True)
    model.dynalora_context = ctx  # type: ignore[attr-defined]
    return layers, ctx


def layer_width(base: nn.Module) -> int:
    """min(in_features, out_features) of an adaptable layer: the largest useful LoRA rank."""
    in_f, out_f, _ = base_shape(base)
    return min(in_f, out_f)


def initial_ranks(rank: int, caps: Sequence[int]) -> list[int]:
    """Average `rank` per layer under per-layer caps: the budget rank x L, spread evenly (water-filled).

    Equal to `rank` everywhere when every cap allows it. When the caps cannot hold the budget, each
    layer gets min(rank, cap) and the RankController refuses the budget with a clear message.
    """
    total = rank * len(caps)
    if not caps or total > sum(caps):
        return [min(rank, c) for c in caps]
    return allocate_ranks([1.0] * len(caps), total, 0, max(caps), caps=caps)


def _mask_hook(ctx: AdapterContext):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        ctx.attention_mask = mask if isinstance(mask, torch.Tensor) else None

    hook.dynalora_mask_hook = True  # type: ignore[attr-defined]  # how eject_adapters finds it (also in a deep copy)
    return hook


def eject_adapters(model: nn.Module, *, merge: bool) -> nn.Module:
    """The inverse of `inject_adapters`, in place: every adapter layer is replaced by its base layer.

    merge=True adds each adapter's update into its base weight first (`DynamicLoRALayer.merge`, the
    one implementation of merging: a per-example layer refuses); merge=False drops the adapters and
    restores the base model exactly. The attention-mask pre-hook and the context go too, so the
    result is a plain Hugging Face model. Returns `model`.
    """
    for name, layer in adapter_layers(model).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, layer.base)
    # nn.Module exposes no public way to remove a hook except through the handle registration
    # returned, which a deep copy of the model does not carry: find ours by its mark instead.
    for key, hook in list(model._forward_pre_hooks.items()):
        if getattr(hook, "dynalora_mask_hook", False):
            del model._forward_pre_hooks[key]
            model._forward_pre_hooks_with_kwargs.pop(key, None)
    if hasattr(model, "dynalora_context"):
        del model.dynalora_context
    return model


def adapter_layers(model: nn.Module) -> dict[str, DynamicLoRALayer]:
    """{full name: layer} of an adapted model, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLoRALayer)}
