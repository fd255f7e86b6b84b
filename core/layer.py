"""The dynamic LoRA layer: a frozen base projection plus a rank-masked low-rank update.

    y = base(x) + scaling * ((x A^T) * g) B^T                      A: (R, in), B: (out, R), g: (R,)

R is the layer's *capacity* (max rank). The gate `g` says which rank components are live:
shapes never change while training, so the optimizer state stays valid, and the rank a layer
holds is the number of `kept` components. Reallocation (see `controller.py`) flips `kept`:

* grow: a free slot gets a fresh A row, a zero B column, and gate 1 -> the output does not
  change at that step (the new component contributes B[:, i] = 0);
* prune: the component stops being kept and its gate fades linearly to 0 over the next
  reallocation interval -> the output does not jump at that step either.

Per-example mode (`input_adaptive="per-example"`) multiplies the gate by a per-example mask
that keeps the `r_b` most important live components, where

    v_b  = mean_d Var_t x[b, t, d]         (token-to-token variance of example b, padding masked)
    r_b  = clamp(ceil(k * (v_b / v_ref)^gamma), ceil(k * min_frac), k)     k = live rank

written with tensor ops only (no Python branching on data), so it exports to ONNX.

`scaling` is fixed for the run (alpha / average rank): growing or pruning one layer never
rescales the components that stay. It is written to PEFT as alpha_l = scaling * r_l.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dynalora.core.statistics import StatsBuffer

try:  # GPT-2 style fused projection: weight is (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment,misc]


@dataclass
class AdapterContext:
    """Per-model state shared by all adapted layers (set by hooks, read by layers)."""

    attention_mask: torch.Tensor | None = None  # (B, T) of the current forward, if the model got one
    stats: StatsBuffer | None = None  # where training statistics go; None = do not collect
    per_example: bool = False
    example_gamma: float = 1.0
    example_min_frac: float = 0.25


def base_shape(base: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a supported base layer."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if Conv1D and isinstance(base, Conv1D):
        in_f, out_f = base.weight.shape
        return in_f, out_f, True
    raise TypeError(f"cannot adapt {type(base).__name__}: only nn.Linear and transformers Conv1D")


def example_variance(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """v_b = mean over features of the variance over (unpadded) tokens of example b; (B,) float32."""
    xf = x.float()
    if xf.dim() == 2:  # (B, in): a single token per example has no token-to-token variance
        return torch.zeros(xf.shape[0], dtype=xf.dtype, device=xf.device)
    xf = xf.reshape(xf.shape[0], -1, xf.shape[-1])  # (B, T, in)
    if attention_mask is not None and attention_mask.shape == xf.shape[:2]:
        m = attention_mask.to(xf.dtype).unsqueeze(-1)  # (B, T, 1)
    else:
        m = torch.ones_like(xf[..., :1])
    n = m.sum(dim=1).clamp_min(1.0)  # (B, 1)
    mean = (xf * m).sum(dim=1) / n  # (B, in)
    var = (((xf - mean.unsqueeze(1)) ** 2) * m).sum(dim=1) / n  # (B, in)
    return var.mean(dim=-1)  # (B,)


def per_example_gate(
    v: torch.Tensor, v_ref: torch.Tensor, k: torch.Tensor, order: torch.Tensor, gamma: torch.Tensor | float,
    min_frac: torch.Tensor | float, dtype: torch.dtype,
) -> torch.Tensor:
    """(B, R) 0/1 gate: example b keeps its r_b most important live components, where

        r_b = clamp(ceil(k * (v_b / v_ref)^gamma), ceil(k * min_frac), k)

    v: (B,) example variances; v_ref: the run's reference variance; k: live rank; order: (R,) importance
    rank of each component (0 = most important). Tensor ops only: the same function runs in the layer
    and inside the exported ONNX graph (export/adapters.py), so both compute the same gate.
    """
    ratio = (v / v_ref.clamp_min(1e-12)).clamp_min(1e-6)
    r_b = torch.ceil(k * ratio.pow(gamma))
    floor = torch.ceil(k * min_frac)
    r_b = torch.minimum(torch.maximum(r_b, floor), k)  # (B,)
    return (order.unsqueeze(0).to(v.dtype) < r_b.unsqueeze(1)).to(dtype)  # (B, R)


class DynamicLoRALayer(nn.Module):
    """Wraps `base` (nn.Linear or Conv1D); the base parameters are frozen."""

    def __init__(
        self,
        base: nn.Module,
        *,
        capacity: int,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        context: AdapterContext | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if not 0 <= rank <= capacity or capacity < 1:
            raise ValueError(f"need 0 <= rank <= capacity and capacity >= 1, got {rank}, {capacity}")
        in_f, out_f, self.fan_in_fan_out = base_shape(base)
        self.in_features, self.out_features = in_f, out_f
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.name = name
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context if context is not None else AdapterContext()
        w = self.base.weight
        self.lora_A = nn.Parameter(torch.empty(capacity, in_f, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, capacity, dtype=w.dtype, device=w.device))
        self.reset_components(torch.arange(capacity))
        live = torch.arange(capacity) < rank
        self.register_buffer("kept", live.clone())  # (R,) bool: counts towards the layer's rank
        self.register_buffer("gate", live.to(w.dtype))  # (R,) in [0, 1]: what the forward uses
        # position of each component in importance order (kept first); per-example mode keeps the top r_b
        self.register_buffer("order", torch.arange(capacity))
        # reference variance for per-example mode (running mean of v_b, fixed after training)
        self.register_buffer("v_ref", torch.zeros((), dtype=torch.float32))  # 0: uncalibrated -> full rank
        self.merged = False
        self.static = False  # static LoRA: all gates 1 forever, the forward skips the gate multiply
        self.stats_index = -1  # slot in the StatsBuffer, set by the controller

    # ---- properties ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.lora_A.shape[0]

    @property
    def width(self) -> int:
        """min(in_features, out_features): the largest rank an update of this layer can have."""
        return min(self.in_features, self.out_features)

    @property
    def rank(self) -> int:
        return int(self.kept.sum())

    @property
    def weight(self) -> torch.Tensor:  # lets code that inspects `module.weight` keep working
        return self.base.weight

    # ---- maths ----------------------------------------------------------------------------
    def reset_components(self, idx: torch.Tensor) -> None:
        """Fresh A rows (Kaiming-uniform, as PEFT/loralib) and zero B columns for components `idx`."""
        with torch.no_grad():
            a = torch.empty(len(idx), self.in_features, dtype=self.lora_A.dtype, device=self.lora_A.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[idx] = a
            self.lora_B[:, idx] = 0.0

    def example_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, R) per-example gate for per-example mode; tensor ops only (ONNX-exportable)."""
        v = example_variance(x, self.context.attention_mask)  # (B,)
        k = self.kept.to(v.dtype).sum()
        return per_example_gate(v, self.v_ref, k, self.order, self.context.example_gamma,
                                self.context.example_min_frac, x.dtype)  # (B, R)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        ctx = self.context
        if ctx.stats is not None and self.training:
            ctx.stats.observe_input(self.stats_index, x.detach(), ctx.attention_mask)
        h = F.linear(self.dropout(x), self.lora_A)  # (..., R)
        if ctx.per_example:
            g = self.gate * self.example_gate(x)  # (B, R)
            g = g.view(g.shape[0], *([1] * (h.dim() - 2)), g.shape[-1])
            h = h * g
        elif not self.static:
            h = h * self.gate
        # y + s * h B^T as one fused addmm on 2-D views (no separate scale and add kernels)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.t(), alpha=self.scaling)
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B diag(g) A, in the base weight's layout ((out, in), or (in, out) for Conv1D)."""
        delta = (self.lora_B * self.gate) @ self.lora_A * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError(f"{self.name or 'layer'} is already merged")
        if self.context.per_example:
            raise RuntimeError("a per-example input-adaptive layer cannot be merged: its update depends on the input")
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError(f"{self.name or 'layer'} is not merged")
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    # ---- compaction (for saving / export) ---------------------------------------------
    def compact(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_r, B_r) holding only components with a non-zero gate, in importance order, gate folded into B."""
        idx = torch.nonzero(self.gate > 0).flatten()
        idx = idx[torch.argsort(self.order[idx], stable=True)]
        a = self.lora_A.detach()[idx].clone()
        b = (self.lora_B.detach()[:, idx] * self.gate[idx]).clone()
        return a, b

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}/{self.capacity}, scaling={self.scaling:g}"
