"""Budget split: module type and depth parsed from BERT / Llama / GPT-2 names; the summary adds up."""

from dynalora.core.budget import layer_type, split, summary_lines


def test_layer_type_and_depth_across_architectures() -> None:
    assert layer_type("bert.encoder.layer.3.attention.output.dense") == ("attention.output.dense", 3)
    assert layer_type("bert.encoder.layer.11.output.dense") == ("output.dense", 11)
    assert layer_type("model.layers.0.self_attn.q_proj") == ("self_attn.q_proj", 0)
    assert layer_type("transformer.h.2.attn.c_attn") == ("attn.c_attn", 2)
    assert layer_type("bert.pooler.dense") == ("bert.pooler.dense", None)


def test_split_and_summary() -> None:
    ranks = {"m.layers.0.q": 1, "m.layers.0.v": 3, "m.layers.1.q": 0, "m.layers.1.v": 4, "m.pool": 2}
    s = split(ranks)
    assert s["by_type"] == {"q": 0.5, "v": 3.5, "m.pool": 2.0}
    assert list(s["by_depth"]) == ["0", "1", "m.pool"] and s["by_depth"]["1"] == 2.0
    lines = summary_lines(ranks, average=2)
    assert lines[0] == "live budget: 10 rank units over 5 layers (average 2.00; target 2 x 5 = 10), 1 switched off (rank 0)"
    assert lines[1] == "by module: q=0.50  v=3.50  m.pool=2.00"
