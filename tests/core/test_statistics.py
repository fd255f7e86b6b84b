"""StatsBuffer: layers that read the same input tensor (query / key / value) get the statistics computed once,
bit-identical to computing them per layer; a changed tensor or mask is computed afresh."""

from __future__ import annotations

import pytest
import torch

from dynalora.core.config import DynamicConfig
from dynalora.core.statistics import StatsBuffer


def _buffer(**kw) -> StatsBuffer:
    return StatsBuffer([(4, 16), (4, 16), (4, 16)], sketch_dim=8, stat_stride=2, per_example=True, seed=1, **kw)


def _x(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 10, 16, generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return x, mask


def test_a_shared_input_adds_identical_statistics_to_each_layer() -> None:
    x, mask = _x()
    shared, fresh = _buffer(), _buffer()
    for i in range(3):
        shared.observe_input(i, x, mask)  # the same tensor three times: computed once
        fresh.observe_input(i, x.clone(), mask)  # a new tensor each time: computed three times
    assert torch.equal(shared.flat, fresh.flat)
    assert torch.equal(shared.layers[0].z_sq, shared.layers[2].z_sq) and shared.layers[0].tokens.item() == 5 + 3 + 5  # tokens 0, 2, .. 8; row 1 masked from 6
    assert shared.layers[1].v_n.item() == 3


def test_a_changed_tensor_or_mask_is_computed_afresh() -> None:
    x, mask = _x()
    buf, ref = _buffer(), _buffer()
    buf.observe_input(0, x, mask)
    ref.observe_input(0, x.clone(), mask)
    x.mul_(2.0)  # in place: same storage, new version
    buf.observe_input(1, x, mask)
    ref.observe_input(1, x.clone(), mask)
    other = mask.clone()
    other[0, 8:] = 0
    buf.observe_input(2, x, other)  # same tensor, another mask
    ref.observe_input(2, x.clone(), other)
    assert torch.equal(buf.flat, ref.flat)
    assert not torch.equal(buf.layers[0].z_sum, buf.layers[1].z_sum)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_training_statistics_and_allocation_are_unchanged_by_the_shared_input_path(arch, monkeypatch) -> None:
    from test_controller import _train

    dyn = DynamicConfig(input_adaptive="per-example")
    _, _, ctrl_a, events_a, _, _ = _train(arch, dyn)
    monkeypatch.setattr(StatsBuffer, "_same_input", lambda self, x, mask: None)  # every layer computes its own
    _, _, ctrl_b, events_b, _, _ = _train(arch, dyn)
    assert events_a == events_b
    assert torch.equal(ctrl_a.stats.flat, ctrl_b.stats.flat)
