"""RankController: turns statistics into rank moves during training.

Per optimizer step the training loop calls

    controller.after_backward()                       # saliency of this step's gradients
    optimizer.step()
    event = controller.step_end(step, optimizer, collective)

and `step_end`, at the schedule's events, applies `collective.reduce` **once** to the flat
statistics buffer (sum over workers; identity in one process), computes scores
(`importance.py`), allocates (`allocation.py`), applies the moves to the layers, and checks via
`collective.gather` that every worker made the same allocation (digest of the kept masks).
Nothing here imports torch.distributed: the collective is passed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Protocol

import torch

from dynalora.core import importance
from dynalora.core.allocation import allocate_ranks, check_budget, largest_average_rank, plan_layer
from dynalora.core.config import DynamicConfig, LoRAConfig
from dynalora.errors import ConfigError, DynaloraError
from dynalora.core.layer import AdapterContext, DynamicLoRALayer
from dynalora.core.schedule import RankSchedule
from dynalora.core.statistics import StatsBuffer


class Collective(Protocol):
    """What the loop needs from its launcher (see dynalora.distributed for the all-reduce one)."""

    rank: int
    world_size: int

    def reduce(self, flat: torch.Tensor) -> None:
        """Sum `flat` over all workers, in place, in one collective."""

    def gather(self, text: str) -> list[str]:
        """Every worker's `text`, in worker order."""


class LocalCollective:
    """Single process: reduce is the identity."""

    rank = 0
    world_size = 1

    def reduce(self, flat: torch.Tensor) -> None:
        return None

    def gather(self, text: str) -> list[str]:
        return [text]


class AllocationMismatchError(DynaloraError):
    """Workers disagree on the rank allocation (their statistics were not reduced identically)."""


class RankController:
    def __init__(
        self,
        layers: dict[str, DynamicLoRALayer],
        context: AdapterContext,
        lora: LoRAConfig,
        dynamic: DynamicConfig,
        total_steps: int,
        *,
        seed: int = 0,
    ) -> None:
        self.names = list(layers)
        self.layers = [layers[n] for n in self.names]
        self.context = context
        self.cfg = dynamic
        self.seed = seed
        self.budget = lora.rank * len(self.layers)  # the target live budget (reached by the last reallocation)
        self.min_rank = lora.min_rank
        self.max_rank = lora.resolved_max_rank(not dynamic.is_static)
        # a layer's rank never exceeds its capacity nor its width min(in_features, out_features)
        self.caps = [min(l.capacity, l.width) for l in self.layers]
        self.schedule = RankSchedule.from_config(dynamic, total_steps)
        self.start_budget = self.budget
        if dynamic.reallocate and dynamic.budget_start > 1.0:
            room = sum(min(self.max_rank, c) for c in self.caps)
            self.start_budget = min(round(dynamic.budget_start * self.budget), room)
        self.per_example = dynamic.input_adaptive == "per-example"
        self.input_weight = dynamic.input_weight if dynamic.uses_input_stats else 0.0
        self.active = dynamic.reallocate or self.per_example
        _check_widths(self.layers, lora, not dynamic.is_static, self.caps)
        check_budget(len(self.layers), self.budget, self.min_rank, self.max_rank, self.caps)
        context.per_example = self.per_example
        context.example_gamma = dynamic.example_gamma
        context.example_min_frac = dynamic.example_min_frac
        for i, layer in enumerate(self.layers):
            layer.stats_index = i
            layer.static = dynamic.is_static
        device = self.layers[0].lora_A.device
        self.stats: StatsBuffer | None = None
        if self.active:
            self.stats = StatsBuffer(
                [(l.capacity, l.in_features) for l in self.layers],
                sketch_dim=dynamic.sketch_dim,
                stat_stride=dynamic.stat_stride,
                collect_inputs=dynamic.reallocate and self.input_weight > 0,
                per_example=self.per_example,
                seed=seed,
                device=device,
            )
        context.stats = self.stats
        # smoothed scores, identical on every worker (derived from reduced statistics only)
        self.component_scores = [torch.zeros(l.capacity, dtype=torch.float64) for l in self.layers]
        self.complexity = [math.nan] * len(self.layers)
        self.events = 0
        self._fading = False
        if self.start_budget > self.budget:  # start high: grow every layer evenly (exact: new B columns are 0)
            start = allocate_ranks([1.0] * len(self.layers), self.start_budget, self.min_rank, self.max_rank, caps=self.caps)
            with torch.no_grad():
                for i, (layer, target) in enumerate(zip(self.layers, start, strict=True)):
                    self._apply(i, layer, target, 0, None, 0.0)
                    self._reorder(i, layer)
            self._fading = False  # growing is instant; nothing fades

    def budget_at(self, step: int) -> int:
        """Live budget after the reallocation at `step`: the start budget pruned to the target on a cubic
        schedule (AdaLoRA's), reaching the target exactly at the last reallocation event."""
        if self.start_budget == self.budget:
            return self.budget
        sch = self.schedule
        last = sch.warmup + (sch.final - sch.warmup) // sch.interval * sch.interval
        if step >= last:
            return self.budget
        progress = max(0.0, (step - sch.warmup) / max(1, last - sch.warmup))
        return self.budget + round((self.start_budget - self.budget) * (1.0 - progress) ** 3)

    # ---- per step --------------------------------------------------------------------------
    def after_backward(self) -> None:
        if self.stats is not None and self.context.stats is not None:
            for i, layer in enumerate(self.layers):
                self.stats.observe_gradients(i, layer.lora_A, layer.lora_B)

    def step_end(self, step: int, optimizer: torch.optim.Optimizer | None, collective: Collective) -> dict[str, Any] | None:
        """Call after optimizer step `step` (1-based). Returns the allocation event, if one happened."""
        self.fade()
        return self.maybe_reallocate(step, optimizer, collective)

    def maybe_reallocate(
        self, step: int, optimizer: torch.optim.Optimizer | None, collective: Collective
    ) -> dict[str, Any] | None:
        """At a schedule event: reduce, score, allocate, apply. The model's output does not change."""
        if not self.active or not self.schedule.is_event(step) or self.stats is None:
            return None
        collective.reduce(self.stats.flat)  # the one collective per reallocation
        event = self._reallocate(step, optimizer)
        digests = collective.gather(event["digest"])
        if len(set(digests)) != 1:
            raise AllocationMismatchError(
                f"workers made different rank allocations at step {step} (digests {digests}); "
                "their statistics were not all-reduced identically"
            )
        event["worker_digests"] = digests
        event["world_size"] = collective.world_size
        self.stats.zero_()
        if step + self.schedule.interval > self.schedule.final:
            self.context.stats = None  # ranks are frozen from here: stop paying for statistics
        return event

    # ---- the reallocation ------------------------------------------------------------------
    @torch.no_grad()
    def _reallocate(self, step: int, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        assert self.stats is not None
        first = self.events == 0
        decay = self.cfg.ema
        densities: list[float] = []
        for i, layer in enumerate(self.layers):
            slots = self.stats.layers[i]
            sal = importance.component_sensitivity(slots.sens.double().cpu(), float(slots.steps))
            self.component_scores[i] = importance.ema(self.component_scores[i], sal, decay, first)
            if self.stats.collect_inputs:
                pr = importance.participation_ratio(
                    float(slots.tokens), slots.z_sum.cpu(), slots.z_sq.cpu(), layer.in_features
                )
                old = self.complexity[i]
                self.complexity[i] = pr if math.isnan(old) else float(importance.ema(old, pr, decay, False))
            if self.per_example and float(slots.v_n) > 0:
                v = float(slots.v_sum) / float(slots.v_n)
                old_v = float(layer.v_ref)
                layer.v_ref.fill_(v if old_v == 0.0 else float(importance.ema(old_v, v, decay, False)))
            densities.append(importance.layer_density(self.component_scores[i], layer.kept.cpu()))
        self.events += 1

        scores = importance.mix_scores(densities, self.complexity, self.input_weight)
        if self.cfg.reallocate:
            current = [l.rank for l in self.layers]
            caps = self.caps
            if self.start_budget > self.budget:  # pruning from above (AdaLoRA-style): layers only shrink, so no
                caps = [min(c, r) for c, r in zip(caps, current, strict=True)]  # component starts cold late in training
            targets = allocate_ranks(scores, self.budget_at(step), self.min_rank, self.max_rank, current=current, caps=caps)
            for i, (layer, target) in enumerate(zip(self.layers, targets, strict=True)):
                self._apply(i, layer, target, step, optimizer, densities[i])
        for i, layer in enumerate(self.layers):
            self._reorder(i, layer)
        ranks = {n: l.rank for n, l in zip(self.names, self.layers, strict=True)}
        return {
            "step": step,
            "ranks": ranks,
            "scores": {n: round(s, 6) for n, s in zip(self.names, scores, strict=True)},
            "sensitivity": {n: d for n, d in zip(self.names, densities, strict=True)},
            "complexity": {n: c for n, c in zip(self.names, self.complexity, strict=True)},
            "budget": sum(ranks.values()),
            "digest": self.digest(),
        }

    def _apply(
        self, i: int, layer: DynamicLoRALayer, target: int, step: int, optimizer: torch.optim.Optimizer | None,
        density: float,
    ) -> None:
        plan = plan_layer(
            layer.kept.tolist(), layer.gate.tolist(), self.component_scores[i].tolist(), target
        )
        if plan.prune:
            layer.kept[list(plan.prune)] = False
            self._fading = True
        if plan.revive:
            layer.kept[list(plan.revive)] = True
            self._fading = True
        if plan.grow:
            idx = torch.tensor(plan.grow, dtype=torch.long)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + i)
            self._fresh(layer, idx, gen)
            layer.kept[idx] = True
            layer.gate[idx] = 1.0  # exact: the new component's B column is zero
            self.component_scores[i][idx] = density  # neutral prior until it has been trained
            if optimizer is not None:
                _reset_optimizer_slots(optimizer, layer, idx)

    @staticmethod
    def _fresh(layer: DynamicLoRALayer, idx: torch.Tensor, gen: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) bound, as PEFT
        a = (torch.rand(len(idx), layer.in_features, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        layer.lora_A[idx.to(layer.lora_A.device)] = a.to(layer.lora_A)
        layer.lora_B[:, idx.to(layer.lora_B.device)] = 0.0

    def _reorder(self, i: int, layer: DynamicLoRALayer) -> None:
        cap = layer.capacity
        kept = layer.kept.cpu().tolist()
        gate = layer.gate.cpu().tolist()
        sc = self.component_scores[i].tolist()
        order = sorted(range(cap), key=lambda j: (not kept[j], -gate[j], -sc[j], j))
        pos = torch.empty(cap, dtype=torch.long)
        pos[torch.tensor(order)] = torch.arange(cap)
        layer.order.copy_(pos)

    @torch.no_grad()
    def fade(self) -> None:
        """Move fading gates one step (1 / interval) towards their target; part of each optimizer step."""
        if not self._fading:
            return
        step = 1.0 / self.schedule.interval
        any_left = False
        for layer in self.layers:
            target = layer.kept.to(layer.gate.dtype)
            if torch.equal(layer.gate, target):
                continue
            up = (layer.gate + step).clamp_max(1.0)
            down = (layer.gate - step).clamp_min(0.0)
            layer.gate.copy_(torch.where(layer.kept, up, down))
            any_left = any_left or not torch.equal(layer.gate, target)
        self._fading = any_left

    def consolidate_statistics(self, collective: Collective) -> None:
        """Sum the window statistics onto rank 0 and zero them elsewhere (before a checkpoint).

        The next reallocation's reduce then still sums to the global window, and rank 0's
        buffer alone is a complete record of it.
        """
        if self.stats is None or collective.world_size == 1:
            return
        collective.reduce(self.stats.flat)
        if collective.rank != 0:
            self.stats.zero_()

    # ---- bookkeeping -------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        return {n: l.rank for n, l in zip(self.names, self.layers, strict=True)}

    def digest(self) -> str:
        h = hashlib.sha256()
        for n, l in zip(self.names, self.layers, strict=True):
            h.update(n.encode())
            h.update(bytes(l.kept.cpu().to(torch.uint8).tolist()))
        return h.hexdigest()[:16]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"component_scores.{i}": s.clone() for i, s in enumerate(self.component_scores)}
        out["complexity"] = torch.tensor(self.complexity, dtype=torch.float64)
        out["events"] = torch.tensor(self.events)
        out["fading"] = torch.tensor(int(self._fading))
        out["collecting"] = torch.tensor(int(self.context.stats is not None))
        if self.stats is not None:
            out["stats_flat"] = self.stats.flat.detach().cpu().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i in range(len(self.layers)):
            self.component_scores[i] = state[f"component_scores.{i}"].clone()
        self.complexity = [float(x) for x in state["complexity"].tolist()]
        self.events = int(state["events"])
        self._fading = bool(int(state["fading"]))
        if self.stats is not None:
            self.stats.flat.copy_(state["stats_flat"].to(self.stats.flat.device))
            self.context.stats = self.stats if int(state["collecting"]) else None


def _check_widths(layers: list[DynamicLoRALayer], lora: LoRAConfig, dynamic: bool, caps: list[int]) -> None:
    """Refuse an average --rank that the layers' widths cannot hold, naming the largest one that fits."""
    n = len(layers)
    fits = sum(min(lora.resolved_max_rank(dynamic), c) for c in caps)
    if not layers or lora.rank * n <= fits:
        return
    widths = [l.width for l in layers]

    def max_rank_for(r: int) -> int:
        return dataclasses.replace(lora, rank=r).resolved_max_rank(dynamic)

    best = largest_average_rank(widths, max_rank_for)
    span = f"{min(widths)}" if min(widths) == max(widths) else f"{min(widths)}..{max(widths)}"
    raise ConfigError(
        f"impossible budget: --rank {lora.rank} over {n} adapted layers needs {lora.rank * n} ranks, but a layer's rank "
        f"is capped by its width min(in_features, out_features) = {span} (and by the max rank): {fits} in all; "
        f"the largest possible average rank is {best}: lower --rank"
    )


def _reset_optimizer_slots(optimizer: torch.optim.Optimizer, layer: DynamicLoRALayer, idx: torch.Tensor) -> None:
    """Zero Adam moments of re-initialised components so stale momentum cannot move them."""
    for param, sl in ((layer.lora_A, (idx, slice(None))), (layer.lora_B, (slice(None), idx))):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
