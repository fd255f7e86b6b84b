"""`dynalora export fused` of a causal-LM fusion (export/genai_fused.py): router.onnx + a fused genai decoder.

Three generation runs of different ranks on a tiny genai-compatible Llama, fused with a router; the export is
checked against `load_fusion` (logits under mixed per-sequence weights, routed greedy generations) in
dynalora's runtime and in onnxruntime-genai, and its refusals are one line.
Run: .venv/bin/python -m pytest tests/export/test_genai_fused.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

og = pytest.importorskip("onnxruntime_genai",
                         reason="onnxruntime-genai is not installed (pip install onnxruntime-genai)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_genai import genai_llama  # noqa: E402
from tiny_data import write_generation_file  # noqa: E402

TASKS = (("repeat", 8), ("copy", 4), ("echo", 6))  # verb, LoRA rank


@pytest.fixture(scope="module")
def fuse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynalora.core.config import LoRAConfig, TrainConfig
    from dynalora.core.train import train
    from dynalora.fusion import FuseConfig, RouterConfig, train_fusion

    root = tmp_path_factory.mktemp("genai_fused")
    llama = genai_llama(root / "llama")
    for seed, (verb, rank) in enumerate(TASKS):
        data = write_generation_file(root / f"{verb}.jsonl", 96, seed, verb)
        train(TrainConfig(model=str(llama), task=None, train_file=str(data), out=str(root / verb), steps=8,
                          batch_size=8, lr=5e-3, progress=False, threads=1, eval_size=8, max_new_tokens=6,
                          lora=LoRAConfig(rank=rank, max_rank=2 * rank)))
    train_fusion(FuseConfig(runs=[str(root / v) for v, _ in TASKS], out=str(root / "fuse"), multitask_steps=0,
                            router=RouterConfig(epochs=40)))
    return root / "fuse"


@pytest.fixture(scope="module")
def exported(fuse_dir: Path) -> Path:
    from dynalora.cli import main

    out = fuse_dir.parent / "exp"
    assert main(["export", "fused", "--fuse", str(fuse_dir), "--out", str(out)]) == 0
    return out


def _fused_logits(fusion, ids: list[int], weights: np.ndarray) -> np.ndarray:  # noqa: ANN001
    fused = fusion.model
    fused.context.weights = torch.from_numpy(weights)
    try:
        with torch.no_grad():
            return fused.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    finally:
        fused.context.weights = None


def test_export_is_verified_and_loads_in_both_runtimes(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["kind"] == "fused" and manifest["router_graph"] == "router.onnx"
    assert "fusion_weights" in manifest["inputs"]
    v = manifest["verification"]
    assert v["router"]["max_abs_diff"] <= 1e-4 and v["router"]["mixed_tasks"]["same_top1_task"]
    gen = v["generation"]
    assert gen["prompts"] == 6 and gen["ours"]["identical_sequences"] == 6 and gen["genai"]["identical_sequences"] == 6
    # every adapter keeps its own (dynamic) ranks: the stacked rank is their sum, per projection
    for ranks in manifest["fusion"]["ranks"].values():
        assert ranks["total"] == sum(ranks["per_adapter"]) and min(ranks["per_adapter"]) > 0
    # router.onnx runs the decoder's own embedding lookup on the decoder's data file: no second copy of the table
    import onnx

    shared = manifest["fusion"]["router_embedding"]
    assert shared["shared"] is True and shared["ops"] == ["Gather"] and shared["bytes_in_model_data"] == 1000 * 64 * 4
    router = onnx.load(str(exported / "router.onnx"), load_external_data=False)
    table = [i for i in router.graph.initializer if list(i.dims) == [1000, 64]]
    assert len(table) == 1 and table[0].data_location == onnx.TensorProto.EXTERNAL
    assert {e.key: e.value for e in table[0].external_data}["location"] == "model.onnx.data"
    assert (exported / "router.onnx").stat().st_size < 1000 * 64 * 4 // 2
    og.Model(str(exported))


@pytest.mark.parametrize("weights", [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.7, 0.0], [0.5, 0.25, 0.25],
                                     [0.0, 0.0, 0.0]])
def test_decoder_mixes_adapters_like_the_fused_model(exported: Path, fuse_dir: Path, weights: list[float]) -> None:
    """Prefill logits under any (B, K) weights equal FusedModel's, and greedy tokens in both runtimes too."""
    from dynalora.edge_runtime import load
    from dynalora.edge_runtime.feeds import ort_feeds
    from dynalora.export.genai import GenaiModel
    from dynalora.fusion import load_fusion

    fusion = load_fusion(fuse_dir)
    runtime = load(exported)
    ids = runtime.prompt_ids("repeat number 7 : red blue")
    w = np.asarray([weights], dtype=np.float32)
    feeds = ort_feeds(runtime.session.get_inputs(), {"input_ids": np.asarray([ids])}, runtime.head_dim)
    feeds["fusion_weights"] = w
    got = runtime.run_raw(feeds)[runtime.output_names.index("logits")][0]
    want = _fused_logits(fusion, ids, w)
    assert np.max(np.abs(got - want)) < 1e-4
    if weights != [1.0, 0.0, 0.0]:  # the weights matter: not every mix is the first adapter
        assert np.max(np.abs(want - _fused_logits(fusion, ids, np.asarray([[1.0, 0, 0]], np.float32)))) > 1e-3
    new, _ = fusion.model.generate(fusion.tokenizer, [ids], torch.tensor([ids]), None, torch.from_numpy(w),
                                   max_new_tokens=8)
    ours = runtime.greedy_decode(np.asarray([ids]), 8, stop_at_eos=True, fusion_weights=w)["tokens"][0].tolist()
    theirs = GenaiModel(exported).greedy(ids, 8, inputs={"fusion_weights": w})
    assert ours[: len(new[0])] == new[0] and theirs[: len(new[0])] == new[0]


def test_generate_is_router_plus_decoder_in_one_call(exported: Path, fuse_dir: Path) -> None:
    from dynalora.core.choice import prompt_text
    from dynalora.core.generate import prompt_ids
    from dynalora.edge_runtime import load
    from dynalora.fusion import load_fusion
    from dynalora.fusion.train import encode_texts, task_data

    fusion = load_fusion(fuse_dir)
    runtime = load(exported)
    for k, spec in enumerate(fusion.specs):
        data = task_data(spec)
        e = data.eval[0]
        route = encode_texts(fusion.tokenizer, [e], fusion.max_length)
        new, weights = fusion.model.generate(fusion.tokenizer, [prompt_ids(fusion.tokenizer, data.spec, e)],
                                             route["input_ids"], route["attention_mask"], max_new_tokens=6)
        routed = runtime.route([e.text])
        assert routed["tasks"] == [spec.name] and int(weights.argmax()) == k
        assert np.max(np.abs(routed["fusion_weights"] - weights.numpy())) < 1e-5
        want = fusion.tokenizer.decode(new[0], skip_special_tokens=True)
        assert runtime.generate(prompt_text(data.spec, e), 6, route_text=e.text) == want


def test_refusals_are_one_line(exported: Path, fuse_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from dynalora.cli import main
    from dynalora.edge_runtime import load
    from dynalora.edge_runtime.predictor import RuntimeLoadError

    runtime = load(exported)
    with pytest.raises(RuntimeLoadError, match="needs fusion_weights"):
        runtime.greedy_decode(np.asarray([[2, 40, 41]]), 4)
    with pytest.raises(RuntimeLoadError, match=r"fusion_weights must be \(1, 3\)"):
        runtime.greedy_decode(np.asarray([[2, 40, 41]]), 4, fusion_weights=np.ones((1, 2), np.float32))
    capsys.readouterr()
    assert main(["export", "fused", "--fuse", str(fuse_dir), "--target", "android", "--out", str(tmp_path / "a")]) == 2
    assert main(["export", "fused", "--fuse", str(fuse_dir), "--out", str(exported)]) == 2  # exists, no --overwrite
    assert main(["export", "fused", "--fuse", str(fuse_dir), "--block-size", "16", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--target does not apply" in err[0] and "exists" in err[1]
    assert "int8 / int4 exports only" in err[2] and not (tmp_path / "b").exists()
    assert not (tmp_path / "a").exists()
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(exported, copy)
    raw = bytearray((copy / "router.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "router.onnx").write_bytes(bytes(raw))
    with pytest.raises(Exception, match="router.onnx") as info:
        load(copy)
    assert "\n" not in str(info.value)


def test_int4_decoder_keeps_adapters_in_float(fuse_dir: Path, tmp_path: Path) -> None:
    from dynalora.export.genai import describe_graph
    from dynalora.export.genai_fused import export_genai_fused

    manifest = export_genai_fused(fuse_dir, tmp_path / "int4", quantize="int4", block_size=16)
    graph = describe_graph(tmp_path / "int4")
    assert graph["matmul_nbits"] == [{"bits": 4, "block_size": 16, "accuracy_level": 4}]  # --block-size 16
    import onnx

    nodes = onnx.load(str(tmp_path / "int4" / "model.onnx"), load_external_data=False).graph.node
    fused = [n for n in nodes if n.name.endswith("/fusion/Mul")]
    lora = [n for n in nodes if "/lora_" in n.name]
    assert len(fused) == len(manifest["fusion"]["ranks"]) == 4  # q and v of 2 layers, one mix each
    assert len(lora) == 8 and {n.op_type for n in lora} == {"MatMul"}  # A / B: plain fp32 MatMuls
    v = manifest["verification"]
    assert v["generation"]["prompts"] == 6 and 0.0 <= v["generation"]["ours"]["token_agreement"] <= 1.0
    assert v["quality"]["top1_agreement"] >= v["quality"]["floor_top1"]


def test_bench_times_router_plus_decoder_in_both_runtimes(exported: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`dynalora bench EXPORT --genai`: our runtime and onnxruntime-genai on the same fused folder, side by side."""
    from dynalora.cli import main

    report = tmp_path / "bench.json"
    assert main(["bench", str(exported), "--genai", "--batch", "1,4", "--seq", "8", "--repeats", "2", "--warmup", "1",
                 "--decode-tokens", "6", "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "TTFT ms" in table and "decode vs genai" in table
    records = json.loads(report.read_text())["records"]
    assert sorted((r["engine"], r["batch"]) for r in records) == [("onnxruntime", 1), ("onnxruntime", 4),
                                                                  ("onnxruntime-genai", 1), ("onnxruntime-genai", 4)]
    for r in records:
        assert r["decode_tokens_per_s"] > 0 and r["ttft_ms"] >= r["prefill_ms"] > 0 and r["peak_rss_mb"] > 0
        assert r["model_mb"] * 2**20 >= (exported / "model.onnx.data").stat().st_size  # graph + data + router
    assert all(r["decode_vs_genai"] > 0 for r in records if r["engine"] == "onnxruntime")
    assert main(["bench", str(tmp_path), "--genai"]) == 2  # not an export folder: one line
