"""Merge a run's adapters into its base weights: a pure transform, checked before it returns.

    from dynalora.core.run_io import load_run
    from dynalora.export.merge import merged_model
    plain = merged_model(load_run("runs/rt"))      # a plain HF *ForSequenceClassification

The run's model is not touched: the model is deep-copied, and `eject_adapters(copy, merge=True)` (the
inverse of injection) replaces every `DynamicLoRALayer` of the copy by its base layer with the layer's own
`merge()` applied (scaling * B diag(g) A, gate folded in). The
result has no dynalora modules or hooks, so `save_pretrained` / optimum export it like any checkpoint.
A per-example input-adaptive run has no single merged weight (its update depends on the input): it is
refused, pointing to `dynalora export adapters`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dynalora.core.inject import adapter_layers, eject_adapters
from dynalora.edge_runtime.tolerances import MERGE_ATOL, MERGE_ATOL_CAUSAL_LM, MERGE_CAUSAL_LM_OUTLIERS
from dynalora.export.errors import ExportError


def check_inputs(model: nn.Module, batch: int = 4, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random token batch with right padding, for checks when no real texts are given."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab), (batch, length), generator=gen)  # skip the special-token ids
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        mask[b, length - 2 * b :] = 0  # (B, T): different padding per row
    pad = getattr(model.config, "pad_token_id", None)
    ids = ids.masked_fill(mask == 0, pad if pad is not None else 0)
    return {"input_ids": ids, "attention_mask": mask}


def merged_model(run: Any, inputs: dict[str, torch.Tensor] | None = None, atol: float | None = None) -> nn.Module:
    """A deep copy of `run.model` (a `LoadedRun`) with every adapter merged into its base layer.

    `inputs`: the batch the check runs on (default: `check_inputs`). Raises `ExportError` if the merged
    logits differ from the adapted model's by more than `atol` (default: MERGE_ATOL, or MERGE_ATOL_CAUSAL_LM for
    a causal-LM run: see edge_runtime/tolerances.py).
    """
    causal = run.info["task"]["problem"] in ("multiple_choice", "generation")
    if atol is None:
        atol = MERGE_ATOL_CAUSAL_LM if causal else MERGE_ATOL
    if run.mode == "per-example":
        raise ExportError(
            f"{run.path} is a per-example input-adaptive run: its low-rank update depends on each input, so it "
            "has no merged weight; export it with `dynalora export adapters --runs RUN ...` instead"
        )
    source: nn.Module = run.model
    merged = eject_adapters(copy.deepcopy(source).eval(), merge=True)  # layer.merge(), then the base layers back
    if adapter_layers(merged):
        raise ExportError(f"merging {run.path} left adapter layers behind; this model layout is not supported")

    inputs = inputs if inputs is not None else check_inputs(source)
    with torch.no_grad():
        want = source(**inputs).logits
        got = merged(**inputs).logits
    if causal:  # per real position (tolerances.py: a few ill-conditioned positions of random tokens)
        real = inputs["attention_mask"].bool()
        per_position = (want - got).abs().amax(-1)[real]
        over = float((per_position > atol).double().mean())
        same = bool((want.argmax(-1) == got.argmax(-1))[real].all())
        worst = float(per_position.max())
        if not (over <= MERGE_CAUSAL_LM_OUTLIERS and worst <= 100 * atol and same):
            raise ExportError(f"merged model of {run.path} differs from the adapted model: {100 * over:.0f}% of positions "
                              f"beyond {atol:g} (max {worst:.3g}), same next token everywhere: {same}")
        return merged
    diff = float((want - got).abs().max())
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"merged model of {run.path} differs from the adapted model by {diff:.3g} (> {atol:g})")
    return merged
