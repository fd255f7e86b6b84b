"""One flat buffer holding every statistic that feeds rank allocation.

Per adapted layer l (capacity R_l, sketch size k_l = min(in_l, sketch_dim)) the buffer holds

    sens   (R_l,)      sum over optimizer steps of per-component saliency |theta * grad|
    steps  (1,)        number of optimizer steps summed into `sens`
    tokens (1,)        input tokens observed (every stat_stride-th token of each example)
    z_sum  (k_l,)      sum of sketched inputs z = x P
    z_sq   (k_l*k_l,)  sum of z z^T
    v_sum  (1,)        sum of per-example token variances v_b (per-example mode)
    v_n    (1,)        examples observed

Everything is a *sum*, so summing the buffers of all workers (one all-reduce, see
`dynalora.distributed`) gives exactly the statistics of the global batch; the controller then
divides by the counts. The buffer is zeroed after each reallocation (window statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynalora.core.layer import example_variance


@dataclass(frozen=True)
class LayerSlots:
    """Views into the flat buffer for one layer."""

    sens: torch.Tensor
    steps: torch.Tensor
    tokens: torch.Tensor
    z_sum: torch.Tensor
    z_sq: torch.Tensor  # (k, k) view
    v_sum: torch.Tensor
    v_n: torch.Tensor


class StatsBuffer:
    def __init__(
        self,
        shapes: list[tuple[int, int]],
        *,
        sketch_dim: int = 64,
        stat_stride: int = 4,
        collect_inputs: bool = True,
        per_example: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        """`shapes[l] = (capacity, in_features)` for layer l, in the controller's layer order."""
        self.stat_stride = stat_stride
        self.collect_inputs = collect_inputs
        self.per_example = per_example
        sizes: list[list[int]] = []
        for cap, in_f in shapes:
            k = min(in_f, sketch_dim)
            sizes.append([cap, 1, 1, k, k * k, 1, 1])
        self.flat = torch.zeros(sum(sum(s) for s in sizes), dtype=torch.float64, device=device)
        self.layers: list[LayerSlots] = []
        off = 0
        for s in sizes:
            views = []
            for n in s:
                views.append(self.flat[off : off + n])
                off += n
            k = s[3]
            views[4] = views[4].view(k, k)
            self.layers.append(LayerSlots(*views))
        # fixed Gaussian sketch per input width; identical on every worker (seeded)
        self.sketches: dict[int, torch.Tensor] = {}
        for _, in_f in shapes:
            if in_f not in self.sketches:
                k = min(in_f, sketch_dim)
                g = torch.Generator().manual_seed(seed * 1_000_003 + in_f)
                self.sketches[in_f] = (torch.randn(in_f, k, generator=g) / k**0.5).to(device)

        # the last input observed and what it added: layers that read the same tensor (query / key / value, or
        # gate / up) add the same statistics, computed once (see observe_input)
        self._last: tuple[torch.Tensor, int, torch.Tensor | None, dict[str, torch.Tensor | float]] | None = None

    def zero_(self) -> None:
        self.flat.zero_()
        self._last = None

    def _same_input(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor | float] | None:
        """What the last observed input added, if `x` is that same tensor (same storage, layout and version) under
        the same mask. Holding the last tensor keeps its storage alive, so an address cannot be reused meanwhile."""
        last = self._last
        if last is None:
            return None
        px, version, pmask, added = last
        if (x.data_ptr() == px.data_ptr() and x.shape == px.shape and x.stride() == px.stride()
                and x.dtype == px.dtype and x._version == version and mask is pmask):
            return added
        return None

    # ---- observers (called from the training forward / after backward) --------------------
    @torch.no_grad()
    def observe_input(self, index: int, x: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        slots = self.layers[index]
        added = self._same_input(x, attention_mask)
        if added is None:
            added = self._input_statistics(x, attention_mask)
            self._last = (x, x._version, attention_mask, added)
        for name, value in added.items():
            getattr(slots, name).add_(value)

    def _input_statistics(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor | float]:
        """What one input adds to a layer's slots (slot name -> value)."""
        added: dict[str, torch.Tensor | float] = {}
        if self.per_example and x.dim() >= 2:
            v = example_variance(x, attention_mask)
            added["v_sum"] = v.sum().double()
            added["v_n"] = float(v.numel())
        if not self.collect_inputs:
            return added
        # every `stat_stride`-th token of each example: the sample depends on the example alone, not on
        # the micro-batch it landed in or its padding, so 1 worker and N workers see the same tokens
        mask = attention_mask if (x.dim() == 3 and attention_mask is not None and attention_mask.shape == x.shape[:2]) else None
        if x.dim() == 3:
            rows = x[:, :: self.stat_stride, :]  # (B, T', in)
            m = mask[:, :: self.stat_stride] if mask is not None else None
        else:
            rows, m = x.reshape(-1, x.shape[-1])[:: self.stat_stride], None
        rows = rows.reshape(-1, rows.shape[-1])
        if rows.shape[0] == 0:
            return added
        z = rows.float() @ self.sketches[rows.shape[-1]]  # (n, k)
        if m is not None:
            mf = m.reshape(-1).to(z.dtype)
            z = z * mf.unsqueeze(1)  # padding tokens contribute nothing
            added["tokens"] = mf.sum().double()
        else:
            added["tokens"] = float(z.shape[0])
        added["z_sum"] = z.sum(0).double()
        added["z_sq"] = (z.T @ z).double()
        return added

    @torch.no_grad()
    def observe_gradients(self, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add one optimizer step's per-component saliency (A: (R, in), B: (out, R), grads set)."""
        if a.grad is None or b.grad is None:
            return
        sal = (a * a.grad).abs().sum(1) + (b * b.grad).abs().sum(0)  # (R,)
        slots = self.layers[index]
        slots.sens.add_(sal.double())
        slots.steps.add_(1)
