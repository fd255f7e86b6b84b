"""RankController on tiny models: reallocation conserves the budget, leaves outputs unchanged at
the step it happens, follows input complexity as documented, and is deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynalora.core.config import DynamicConfig, LoRAConfig
from dynalora.core.controller import LocalCollective, RankController
from dynalora.core.inject import inject_adapters
from tiny_models import tiny_model


class _Recorder(LocalCollective):
    def __init__(self) -> None:
        self.reduced = 0

    def reduce(self, flat: torch.Tensor) -> None:
        self.reduced += 1


def _train(arch: str, dyn: DynamicConfig, steps: int = 40, seed: int = 0, lora: LoRAConfig | None = None):
    torch.manual_seed(seed)
    model = tiny_model(arch, seed=seed)
    lora = lora or LoRAConfig(rank=4, max_rank=8)
    layers, ctx = inject_adapters(model, targets=None, capacity=lora.resolved_max_rank(True), rank=4, scaling=2.0)
    ctrl = RankController(layers, ctx, lora, dyn, steps, seed=seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(5, 1000, (8, 12), generator=g)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[:4, 9:] = 0
    y = torch.randint(0, 2, (8,), generator=g)
    coll = _Recorder()
    events, jumps = [], []
    for step in range(1, steps + 1):
        model.train()
        model(input_ids=x, attention_mask=mask, labels=y).loss.backward()
        ctrl.after_backward()
        opt.step()
        opt.zero_grad()
        ctrl.fade()
        model.eval()
        with torch.no_grad():
            before = model(input_ids=x, attention_mask=mask).logits
        ev = ctrl.maybe_reallocate(step, opt, coll)
        with torch.no_grad():
            after = model(input_ids=x, attention_mask=mask).logits
        if ev is not None:
            events.append(ev)
            jumps.append(float((after - before).abs().max()))
    return model, layers, ctrl, events, jumps, coll


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_reallocation_conserves_budget_and_leaves_outputs_unchanged(arch: str) -> None:
    _, layers, ctrl, events, jumps, coll = _train(arch, DynamicConfig())
    lora_min = LoRAConfig().min_rank  # the default floor
    assert events, "the schedule must produce reallocations in a 40-step run"
    assert coll.reduced == len(events)  # exactly one reduce per reallocation
    budget = 4 * len(layers)
    moved = False
    for ev in events:
        assert sum(ev["ranks"].values()) == budget
        assert all(lora_min <= r <= 8 for r in ev["ranks"].values())
        moved = moved or len(set(ev["ranks"].values())) > 1
    assert moved, "ranks never moved between layers"
    assert max(jumps) == 0.0  # grow (zero B column) and prune (gate fades later) are exact at the step


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_rank_zero_switches_layers_off_exactly(arch: str) -> None:
    """--min-rank 0 --max-rank 4R (the study's rank-0 variant): layers may be switched off and others grow to 4R;
    the budget is conserved and no reallocation changes the outputs at the step it happens."""
    lora = LoRAConfig(rank=4, min_rank=0, max_rank=16)
    _, layers, _, events, jumps, _ = _train(arch, DynamicConfig(input_adaptive="off"), lora=lora)
    budget = 4 * len(layers)
    assert events and all(sum(ev["ranks"].values()) == budget for ev in events)
    assert all(0 <= r <= 16 for ev in events for r in ev["ranks"].values())
    final = events[-1]["ranks"]
    assert min(final.values()) == 0, f"no layer was switched off: {final}"
    assert max(final.values()) > 8, f"no layer grew past the default cap 2R: {final}"
    assert max(jumps) == 0.0
    assert sum(l.rank for l in layers.values()) == budget


def test_static_mode_never_moves_and_skips_statistics() -> None:
    _, layers, ctrl, events, _, coll = _train("bert", DynamicConfig(reallocate=False, input_adaptive="off"))
    assert events == [] and coll.reduced == 0 and ctrl.stats is None
    assert all(l.rank == 4 and l.static for l in layers.values())


def test_runs_are_deterministic() -> None:
    a = _train("bert", DynamicConfig(), seed=3)[3]
    b = _train("bert", DynamicConfig(), seed=3)[3]
    assert [e["ranks"] for e in a] == [e["ranks"] for e in b]
    assert [e["digest"] for e in a] == [e["digest"] for e in b]


def test_pruned_components_fade_out_within_one_interval() -> None:
    _, layers, ctrl, events, _, _ = _train("bert", DynamicConfig(), steps=60)
    for layer in layers.values():  # after the final freeze every fade has finished
        assert torch.equal(layer.gate, layer.kept.float())


class _TwoInputs(nn.Module):
    """Two adapted layers fed with inputs of very different complexity."""

    def __init__(self) -> None:
        super().__init__()
        self.simple = nn.Linear(32, 32)
        self.rich = nn.Linear(32, 32)

    def forward(self, xs: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        return self.simple(xs).pow(2).mean() + self.rich(xr).pow(2).mean()


def test_input_complexity_moves_rank_to_the_richer_input() -> None:
    """input_weight=1: rank follows the participation ratio of each layer's inputs."""
    torch.manual_seed(0)
    model = _TwoInputs()
    layers, ctx = inject_adapters(model, targets=["simple", "rich"], capacity=8, rank=4, scaling=1.0)
    ctrl = RankController(layers, ctx, LoRAConfig(rank=4, max_rank=8), DynamicConfig(input_adaptive="layer", input_weight=1.0), 20)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    direction = torch.randn(1, 32)
    ranks = None
    for step in range(1, 21):
        xs = torch.randn(64, 1) * direction + 0.01 * torch.randn(64, 32)  # ~rank-1: PR close to 1
        xr = torch.randn(64, 32)  # isotropic: PR close to 32
        model(xs, xr).backward()
        ctrl.after_backward()
        opt.step()
        opt.zero_grad()
        ev = ctrl.step_end(step, opt, LocalCollective())
        if ev:
            ranks = ev["ranks"]
            assert ev["complexity"]["rich"] > 5 * ev["complexity"]["simple"]
    assert ranks is not None and ranks["rich"] > ranks["simple"]
    assert ranks["rich"] + ranks["simple"] == 8


def test_sensitivity_only_ignores_inputs() -> None:
    torch.manual_seed(0)
    model = _TwoInputs()
    layers, ctx = inject_adapters(model, targets=["simple", "rich"], capacity=8, rank=4, scaling=1.0)
    ctrl = RankController(layers, ctx, LoRAConfig(rank=4, max_rank=8), DynamicConfig(input_adaptive="off"), 20)
    assert ctrl.stats is not None and not ctrl.stats.collect_inputs


def test_per_example_mode_calibrates_reference_variance() -> None:
    _, layers, ctrl, events, _, _ = _train("bert", DynamicConfig(input_adaptive="per-example"))
    assert events
    assert all(float(l.v_ref) > 0 for l in layers.values())
    assert ctrl.context.per_example


class _Narrow(nn.Module):
    """A 6-wide projection next to a 32-wide one: rank beyond a layer's width adds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Linear(32, 6)
        self.wide = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(x).pow(2).mean() + self.wide(x).pow(2).mean()


def test_ranks_are_capped_by_layer_width_and_stay_exact() -> None:
    torch.manual_seed(0)
    model = _Narrow()
    layers, ctx = inject_adapters(model, targets=["narrow", "wide"], capacity=16, rank=8, scaling=1.0)
    assert (layers["narrow"].capacity, layers["wide"].capacity) == (6, 16)
    assert (layers["narrow"].rank, layers["wide"].rank) == (6, 10)  # the budget 2 x 8 is kept from the start
    ctrl = RankController(layers, ctx, LoRAConfig(rank=8), DynamicConfig(input_weight=0.0), 40)
    assert ctrl.caps == [6, 16]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    x = torch.randn(16, 32)
    events = 0
    for step in range(1, 41):
        model(x).backward()
        ctrl.after_backward()
        opt.step()
        opt.zero_grad()
        ctrl.fade()
        with torch.no_grad():
            before = model(x)
        ev = ctrl.maybe_reallocate(step, opt, LocalCollective())
        with torch.no_grad():
            after = model(x)
        if ev is not None:
            events += 1
            assert float((after - before).abs()) == 0.0
            assert ev["ranks"]["narrow"] <= 6 and ev["ranks"]["wide"] <= 16 and sum(ev["ranks"].values()) == 16
    assert events


def test_budget_beyond_layer_widths_names_the_largest_rank() -> None:
    from dynalora.errors import ConfigError

    model = _Narrow()
    layers, ctx = inject_adapters(model, targets=["narrow", "wide"], capacity=40, rank=20, scaling=1.0)
    with pytest.raises(ConfigError, match=r"--rank 20 over 2 adapted layers needs 40 ranks.*6\.\.32.*"
                                          r"38 in all; the largest possible average rank is 19"):
        RankController(layers, ctx, LoRAConfig(rank=20), DynamicConfig(), 40)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_budget_start_prunes_to_the_target_exactly_and_monotonically(arch: str) -> None:
    """--budget-start 1.5: the run starts with 1.5x the live rank, every reallocation lowers (never raises) it on
    the cubic schedule, the last one lands exactly on the target, and no reallocation changes the outputs."""
    torch.manual_seed(0)
    model = tiny_model(arch, seed=0)
    layers, ctx = inject_adapters(model, targets=None, capacity=8, rank=4, scaling=2.0)
    ctrl = RankController(layers, ctx, LoRAConfig(rank=4, max_rank=8), DynamicConfig(budget_start=1.5), 40)
    target = 4 * len(layers)
    assert sum(l.rank for l in layers.values()) == ctrl.start_budget == round(1.5 * target)
    assert all(torch.equal(l.gate, l.kept.float()) for l in layers.values())  # grown at once, nothing fading
    _, layers, ctrl, events, jumps, _ = _train(arch, DynamicConfig(budget_start=1.5))
    budgets = [sum(ev["ranks"].values()) for ev in events]
    assert budgets[0] == round(1.5 * target) and budgets[-1] == target  # the first event starts the pruning
    assert any(target < b < budgets[0] for b in budgets)  # ... which goes down in steps, not in one jump
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert [ctrl.budget_at(ev["step"]) for ev in events] == budgets
    for a, b in zip(events, events[1:]):  # pruning from above: no layer ever grows (nothing starts cold late)
        assert all(b["ranks"][n] <= a["ranks"][n] for n in a["ranks"])
    assert max(jumps) == 0.0
    assert sum(l.rank for l in layers.values()) == target


def test_budget_start_needs_reallocation() -> None:
    from dynalora.errors import ConfigError

    with pytest.raises(ConfigError, match="budget-start"):
        DynamicConfig(reallocate=False, budget_start=1.5)
    with pytest.raises(ConfigError, match="budget-start"):
        DynamicConfig(budget_start=0.5)


def test_schedule_lets_the_last_fade_end_before_the_run_does() -> None:
    from dynalora.core.schedule import RankSchedule

    for total in range(1, 150):
        sch = RankSchedule.from_config(DynamicConfig(), total)
        assert all(e + sch.interval <= total for e in sch.events(total)), total
    assert RankSchedule.from_config(DynamicConfig(), 100).events(100)[-1] == 80  # normal runs keep their schedule


def test_saved_ranks_match_the_saved_components_while_a_fade_is_in_progress(tmp_path) -> None:
    """A pruned component still fading when the run is saved is saved (its gate folded into B): the
    dynalora.json ranks must count it too, or readers of the folder (fusion, load_run) see a mismatch."""
    import json

    from dynalora.core.run_io import read_adapter_files, save_adapter

    model = tiny_model("llama", seed=0)
    layers, _ = inject_adapters(model, targets=None, capacity=8, rank=4, scaling=2.0)
    name, layer = next(iter(layers.items()))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.kept[0] = False  # pruned, gate still 0.5: it still acts on the output
        layer.gate[0] = 0.5
    save_adapter(model, tmp_path / "adapter", base_model="tiny", extra={"problem": "classification"})
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    files = read_adapter_files(tmp_path / "adapter")
    assert layer.rank == 3  # kept components; the fading one is saved as well
    assert files.ranks[name] == cfg["rank_pattern"][name] == 4
    a, b = files.lora(name)
    assert a.shape[0] == b.shape[1] == 4
