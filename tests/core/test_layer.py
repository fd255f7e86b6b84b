"""DynamicLoRALayer maths: forward = base + scaling * B diag(g) A x; merge / unmerge; compaction."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dynalora.core.layer import AdapterContext, DynamicLoRALayer, example_variance


def _layer(base: nn.Module, rank: int = 3, cap: int = 6, seed: int = 0) -> DynamicLoRALayer:
    torch.manual_seed(seed)
    layer = DynamicLoRALayer(base, capacity=cap, rank=rank, scaling=2.0)
    with torch.no_grad():
        layer.lora_B.normal_()  # non-zero update so the maths is visible
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_is_base_plus_masked_low_rank_update(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 5) if kind == "linear" else Conv1D(5, 8)
    layer = _layer(base)
    x = torch.randn(2, 4, 8)
    g = layer.gate
    expected = base(x) + 2.0 * ((x @ layer.lora_A.T) * g) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    # only the first `rank` components are live
    assert g.tolist() == [1, 1, 1, 0, 0, 0]
    # the masked components contribute nothing
    with torch.no_grad():
        layer.lora_A[3:] += 100.0
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_unmerge_round_trip(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 5) if kind == "linear" else Conv1D(5, 8)
    layer = _layer(base)
    w0 = base.weight.detach().clone()
    x = torch.randn(3, 8)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    assert not torch.equal(base.weight, w0)
    with pytest.raises(RuntimeError):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)


def test_delta_weight_layout_matches_base() -> None:
    lin = _layer(nn.Linear(8, 5))
    conv = _layer(Conv1D(5, 8))
    assert lin.delta_weight().shape == lin.base.weight.shape == (5, 8)
    assert conv.delta_weight().shape == conv.base.weight.shape == (8, 5)


def test_compact_keeps_live_components_with_gate_folded_in() -> None:
    layer = _layer(nn.Linear(8, 5))
    with torch.no_grad():
        layer.gate[1] = 0.5  # a component fading out
    a, b = layer.compact()
    assert a.shape == (3, 8) and b.shape == (5, 3)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), layer.base(x) + 2.0 * (x @ a.T) @ b.T)


def test_frozen_base_and_trainable_adapter() -> None:
    layer = _layer(nn.Linear(8, 5))
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_per_example_rank_follows_token_variance() -> None:
    """r_b = clamp(ceil(k (v_b / v_ref)^gamma), ceil(k min_frac), k) as documented."""
    ctx = AdapterContext(per_example=True, example_gamma=1.0, example_min_frac=0.25)
    torch.manual_seed(0)
    layer = DynamicLoRALayer(nn.Linear(16, 4), capacity=8, rank=8, scaling=1.0, context=ctx)
    layer.v_ref.fill_(1.0)
    base = torch.randn(1, 64, 16)
    base = (base - base.mean(1, keepdim=True)) / base.std(1, keepdim=True, unbiased=False)  # var exactly 1
    scales = torch.tensor([0.1, 0.5, 0.75, 2.0])  # variance 0.01, 0.25, 0.5625, 4
    x = base * scales.view(4, 1, 1)
    v = example_variance(x, None)
    torch.testing.assert_close(v, scales**2, rtol=1e-4, atol=1e-6)
    ranks = layer.example_gate(x).sum(1)
    # k=8: 8*0.01 -> floor 2; 8*0.25 = 2; ceil(8*0.5625)=5; 8*4 -> capped at 8
    assert ranks.tolist() == [2, 2, 5, 8]
    # padding is ignored: appending padded junk tokens leaves an example's rank unchanged
    junk = torch.cat([x, 50 * torch.randn(4, 8, 16)], dim=1)
    mask = torch.cat([torch.ones(4, 64), torch.zeros(4, 8)], dim=1)
    ctx.attention_mask = mask
    assert layer.example_gate(junk).sum(1).tolist() == [2, 2, 5, 8]


def test_per_example_keeps_the_most_important_components() -> None:
    ctx = AdapterContext(per_example=True, example_min_frac=0.25)
    layer = DynamicLoRALayer(nn.Linear(16, 4), capacity=4, rank=4, scaling=1.0, context=ctx)
    layer.v_ref.fill_(1.0)
    layer.order.copy_(torch.tensor([3, 1, 0, 2]))  # component 2 is the most important
    x = torch.randn(1, 32, 16)
    x = 0.3 * (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True, unbiased=False)  # v = 0.09 -> floor 1
    gate = layer.example_gate(x)
    assert gate.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_uncalibrated_per_example_layer_uses_full_rank() -> None:
    ctx = AdapterContext(per_example=True)
    layer = DynamicLoRALayer(nn.Linear(16, 4), capacity=4, rank=3, scaling=1.0, context=ctx)
    assert float(layer.v_ref) == 0.0
    assert layer.example_gate(torch.randn(2, 5, 16) * 0.01).sum(1).tolist() == [3, 3]


def test_per_example_layer_refuses_merge() -> None:
    ctx = AdapterContext(per_example=True)
    layer = DynamicLoRALayer(nn.Linear(16, 4), capacity=4, rank=3, scaling=1.0, context=ctx)
    with pytest.raises(RuntimeError, match="per-example"):
        layer.merge()


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_eject_adapters_is_the_inverse_of_injection(arch: str) -> None:
    """eject(merge=False) gives the base model back exactly; eject(merge=True) keeps the adapted outputs."""
    import copy

    from tiny_models import tiny_model

    from dynalora.core.inject import adapter_layers, eject_adapters, inject_adapters

    base = tiny_model(arch).eval()
    ids = torch.randint(5, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        want_base = base(input_ids=ids, attention_mask=mask).logits
    adapted = copy.deepcopy(base)
    torch.manual_seed(1)
    inject_adapters(adapted, targets=None, capacity=4, rank=2, scaling=2.0)
    for layer in adapter_layers(adapted).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    with torch.no_grad():
        want_adapted = adapted(input_ids=ids, attention_mask=mask).logits
    assert float((want_adapted - want_base).abs().max()) > 1e-3  # the adapters do something

    restored = eject_adapters(copy.deepcopy(adapted), merge=False)
    merged = eject_adapters(copy.deepcopy(adapted), merge=True)
    for model in (restored, merged):
        assert not adapter_layers(model) and not hasattr(model, "dynalora_context")
        assert not any(getattr(h, "dynalora_mask_hook", False) for h in model._forward_pre_hooks.values())
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids, attention_mask=mask).logits, want_base, atol=0, rtol=0)
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, want_adapted, atol=1e-5, rtol=0)


def test_per_example_gate_formula() -> None:
    """r_b = clamp(ceil(k (v_b/v_ref)^gamma), ceil(k min_frac), k); the r_b most important components stay."""
    from dynalora.core.layer import per_example_gate

    v = torch.tensor([0.0, 0.25, 1.0, 9.0])
    order = torch.tensor([2, 0, 3, 1, 5, 4])  # importance rank of each of 6 slots (0 = most important)
    gate = per_example_gate(v, torch.tensor(1.0), torch.tensor(4.0), order, 0.5, 0.25, torch.float32)
    # r_b: floor ceil(4*0.25)=1; ceil(4*0.5)=2; ceil(4*1)=4; ceil(4*3)=12 -> capped at k=4
    assert gate.sum(dim=1).tolist() == [1.0, 2.0, 4.0, 4.0]
    assert gate[1].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # order 0 and 1
