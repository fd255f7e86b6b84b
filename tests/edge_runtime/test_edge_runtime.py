"""dynalora.edge_runtime: manifest checksums, providers, Predictor, native LoRA adapters, bench.

    .venv/bin/python -m pytest tests/edge_runtime/test_edge_runtime.py -q            # CPU, ~1 min on 2 cores
    .venv/bin/python -m pytest tests/edge_runtime/test_edge_runtime.py -m gpu        # CUDA EP (onnxruntime-gpu + a GPU)

The export folders are built here, not by dynalora.export: tiny random-init models (tests/tiny_models.py)
saved with save_pretrained, exported by optimum's `main_export` (BERT: text-classification, Llama:
text-generation-with-past), the PyTorch weights copied to EXPORT/torch, then `write_manifest`.
The adapters export is a hand-built ONNX graph whose LoRA A/B are graph inputs with empty defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tiny_models import save_tiny_model, tiny_config, tiny_tokenizer_dir
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast, LlamaForCausalLM

from dynalora.errors import DynaloraError
from dynalora.edge_runtime import load
from dynalora.edge_runtime.bench import add_bench_arguments, bench_main, markdown_table, parse_int_list, run_bench
from dynalora.edge_runtime.manifest import (
    ChecksumError,
    ExportFormatError,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from dynalora.edge_runtime.predictor import RuntimeLoadError
from dynalora.edge_runtime.providers import (
    ProviderError,
    ProviderFallbackWarning,
    get_profile,
    resolve_providers,
    session_options,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXTS = ["a gripping, funny film with a great cast", "dull and boring", "the plot was fine"]


def _manifest(problem: str, kind: str = "merged", **extra: object) -> dict:
    return {"kind": kind, "task": {"name": "tiny", "problem": problem, "label_names": ["rotten", "fresh"]},
            "model_type": "tiny", "inputs": [], "outputs": ["logits"], "opset": 18, "precision": "fp32",
            "max_length": 64, "dynalora_version": "0.1.0", "source_runs": [], "model_file": "model.onnx",
            "verification": {"max_abs_diff": 1e-6, "tolerance": 1e-4, "n_examples": 8}, **extra}


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp("bert")
    src = save_tiny_model("bert", root / "src")
    export = root / "export"
    main_export(str(src), output=export, task="text-classification")
    shutil.copytree(src, export / "torch")
    write_manifest(export, _manifest("classification"))
    return export


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimum.exporters.onnx import main_export

    root = tmp_path_factory.mktemp("llama")
    src = root / "src"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config("llama")).eval().save_pretrained(src)
    BertTokenizerFast.from_pretrained(tiny_tokenizer_dir(root, token_type_ids=False)).save_pretrained(src)
    export = root / "export"
    main_export(str(src), output=export, task="text-generation-with-past")
    shutil.copytree(src, export / "torch")
    write_manifest(export, _manifest("causal-lm"))
    return export


D, R = 8, 2  # hidden size and LoRA rank of the hand-built adapters model


def _lora_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(D, R)).astype(np.float32), rng.normal(size=(R, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def lora_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """logits = pooled @ W + (pooled @ lora_A) @ lora_B; lora_A/B default to empty (D, 0) / (0, 2)."""
    export = tmp_path_factory.mktemp("lora") / "export"
    rng = np.random.default_rng(0)
    emb, w = rng.normal(size=(1000, D)).astype(np.float32), rng.normal(size=(D, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"]),  # (B, T, D)
        helper.make_node("ReduceMean", ["h", "axis1"], ["pooled"], keepdims=0),  # (B, D)
        helper.make_node("MatMul", ["pooled", "W"], ["base"]),
        helper.make_node("MatMul", ["pooled", "lora_A"], ["down"]),  # (B, r)
        helper.make_node("MatMul", ["down", "lora_B"], ["delta"]),  # (B, 2)
        helper.make_node("Add", ["base", "delta"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.zeros((D, 0), np.float32), "lora_A"),
             numpy_helper.from_array(np.zeros((0, 2), np.float32), "lora_B")]
    graph = helper.make_graph(
        nodes, "tiny_lora",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("lora_A", TensorProto.FLOAT, [D, "r"]),
         helper.make_tensor_value_info("lora_B", TensorProto.FLOAT, ["r", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    (export / "adapters").mkdir(parents=True)
    onnx.save(model, export / "model.onnx")
    for name, seed in (("a", 1), ("b", 2)):
        a, b = _lora_arrays(seed)
        fmt = ort.AdapterFormat()
        fmt.set_parameters({"lora_A": ort.OrtValue.ortvalue_from_numpy(a), "lora_B": ort.OrtValue.ortvalue_from_numpy(b)})
        fmt.export_adapter(str(export / "adapters" / f"{name}.onnx_adapter"))
    for f in tiny_tokenizer_dir(export.parent / "tok", token_type_ids=False).iterdir():
        shutil.copy(f, export / f.name)
    write_manifest(export, _manifest("classification", kind="adapters",
                                     adapters={"a": "adapters/a.onnx_adapter", "b": "adapters/b.onnx_adapter"}))
    (export / "weights.npz").write_bytes(b"")  # not listed: must not matter
    np.savez(export.parent / "ref.npz", emb=emb, w=w)
    return export


def _copy(export: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export, tmp_path / "copy"))


# -- manifest ------------------------------------------------------------------------------------
def test_manifest_lists_every_file_and_verifies(bert_export: Path) -> None:
    manifest = read_manifest(bert_export)
    assert {"model.onnx", "tokenizer.json", "config.json", "torch/model.safetensors"} <= set(manifest.files)
    assert "manifest.json" not in manifest.files
    verify_checksums(bert_export, manifest)


def test_tampered_and_missing_files_are_named(bert_export: Path, tmp_path: Path) -> None:
    copy = _copy(bert_export, tmp_path)
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ChecksumError, match=r"checksum mismatch for model\.onnx"):
        load(copy)
    shutil.copy(bert_export / "model.onnx", copy / "model.onnx")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ChecksumError, match=r"tokenizer\.json is listed .* but missing"):
        verify_checksums(copy, read_manifest(copy))


def test_not_an_export_folder_and_unknown_version(tmp_path: Path, bert_export: Path) -> None:
    with pytest.raises(ExportFormatError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(ExportFormatError, match="not a folder"):
        read_manifest(tmp_path / "nope")
    copy = _copy(bert_export, tmp_path)
    data = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**data, "format_version": 7}))
    with pytest.raises(ExportFormatError, match="unknown format_version 7"):
        read_manifest(copy)
    (copy / "manifest.json").write_text(json.dumps({**data, "files": {"../../etc/passwd": "0"}, "model_file": "../../etc/passwd"}))
    with pytest.raises(ExportFormatError, match="unsafe path"):
        verify_checksums(copy, read_manifest(copy))


# -- providers -----------------------------------------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"])


def test_resolve_providers_priority_and_fallback(fake_cuda: None) -> None:
    assert resolve_providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("CPU") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match=r"TensorrtExecutionProvider is not available.*--allow-fallback"):
        resolve_providers("trt")
    with pytest.warns(ProviderFallbackWarning, match="falling back"):
        assert resolve_providers("qnn", allow_fallback=True) == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu'"):
        resolve_providers("tpu")


def test_profiles_build_session_options() -> None:
    mobile = session_options(get_profile("mobile-cpu"), threads=None)
    assert mobile.intra_op_num_threads == 2 and not mobile.enable_cpu_mem_arena
    assert mobile.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert mobile.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(get_profile("desktop-cpu"), threads=1).intra_op_num_threads == 1
    assert get_profile("jetson-cuda").provider_options["CUDAExecutionProvider"]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert get_profile("qualcomm-qnn").provider_options["QNNExecutionProvider"]["backend_path"] == "libQnnHtp.so"
    with pytest.raises(ProviderError, match="unknown device profile 'watch'"):
        get_profile("watch")


def test_load_unavailable_provider(bert_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
        load(bert_export, provider="cuda")
    with pytest.warns(ProviderFallbackWarning):
        predictor = load(bert_export, provider="cuda", allow_fallback=True, threads=1)
    assert predictor.providers == ["CPUExecutionProvider"] and predictor.load_seconds > 0


# -- predictor -----------------------------------------------------------------------------------
def test_predict_matches_torch(bert_export: Path) -> None:
    predictor = load(bert_export, provider="cpu", threads=1)
    out = predictor.predict(TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(bert_export / "torch").eval()
    enc = AutoTokenizer.from_pretrained(bert_export)(TEXTS, padding=True, truncation=True, max_length=64,
                                                     return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    np.testing.assert_allclose(out["logits"], expected, atol=1e-4)
    assert out["labels"] == [["rotten", "fresh"][i] for i in expected.argmax(-1)]
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
    assert predictor.predict([("a fine film", "it was fine")])["logits"].shape == (1, 2)
    with pytest.raises(RuntimeLoadError, match="causal-lm export"):
        predictor.generate("hello")


def test_predict_regression_values(bert_export: Path, tmp_path: Path) -> None:
    copy = _copy(bert_export, tmp_path)
    write_manifest(copy, _manifest("regression"))
    out = load(copy, threads=1).predict(TEXTS)
    assert set(out) == {"logits", "values"} and out["values"].shape == (3, 2)


def test_generate_uses_kv_cache_and_matches_torch(llama_export: Path) -> None:
    predictor = load(llama_export, threads=1)
    assert predictor.uses_kv_cache
    with pytest.raises(RuntimeLoadError, match="generate"):
        predictor.predict(["x"])
    prompt = "the movie was"
    text = predictor.generate(prompt, max_new_tokens=6)
    assert isinstance(text, str) and text

    class Recording:  # wraps the predictor's session: records the input_ids shape of every call
        def __init__(self, inner: ort.InferenceSession) -> None:
            self.inner, self.shapes = inner, []

        def run(self, names, feeds, run_options=None):  # noqa: ANN001, ANN201
            self.shapes.append(feeds["input_ids"].shape)
            return self.inner.run(names, feeds, run_options)

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.inner, name)

    spy = Recording(predictor.session)
    predictor.session = spy
    assert predictor.generate(prompt, max_new_tokens=6) == text
    prompt_len = spy.shapes[0][1]
    assert prompt_len > 1 and all(shape == (1, 1) for shape in spy.shapes[1:]), spy.shapes  # cached decode

    ids = predictor.encode([prompt])["input_ids"]
    ours = predictor.greedy_decode(ids, 6)["tokens"][0].tolist()
    model = LlamaForCausalLM.from_pretrained(llama_export / "torch").eval()
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                             max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert ours[: len(ref)] == ref
    assert predictor.tokenizer.decode(ref, skip_special_tokens=True).startswith(text[:10])
    # generate = greedy_decode + stop at EOS + decode: the text is exactly the torch reference's new tokens
    assert text == AutoTokenizer.from_pretrained(llama_export).decode(ref, skip_special_tokens=True)
    with pytest.raises(RuntimeLoadError, match="exceeds the model's 128 positions"):
        predictor.generate(prompt, max_new_tokens=200)


def test_use_adapter_native_lora(lora_export: Path, bert_export: Path) -> None:
    predictor = load(lora_export, threads=1)
    ref = np.load(lora_export.parent / "ref.npz")
    ids = predictor.encode(TEXTS)["input_ids"]
    pooled = ref["emb"][ids].mean(axis=1)  # (B, D)
    base = predictor.predict(TEXTS)["logits"]
    np.testing.assert_allclose(base, pooled @ ref["w"], rtol=1e-4, atol=1e-5)
    for name, seed in (("a", 1), ("b", 2)):
        predictor.use_adapter(name)
        a, b = _lora_arrays(seed)
        np.testing.assert_allclose(predictor.predict(TEXTS)["logits"], pooled @ ref["w"] + pooled @ a @ b,
                                   rtol=1e-4, atol=1e-4)
    predictor.use_adapter(None)
    np.testing.assert_allclose(predictor.predict(TEXTS)["logits"], base)
    with pytest.raises(RuntimeLoadError, match="unknown adapter 'c'; this export has: a, b"):
        predictor.use_adapter("c")
    with pytest.raises(RuntimeLoadError, match="no adapters"):
        load(bert_export).use_adapter("a")


def test_package_import_is_light() -> None:
    code = "import sys, dynalora.edge_runtime; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bench ---------------------------------------------------------------------------------------
def _args(*argv: str):  # noqa: ANN202
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_records_json_plot_and_table(bert_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    assert bench_main(_args(str(bert_export), "--batch", "2", "--seq", "16", "--repeats", "3", "--warmup", "1",
                            "--compare-torch", "--json", str(out_json), "--plot", str(out_png))) == 0
    table = capsys.readouterr().out
    assert table.startswith("| engine | graph | provider |") and "vs torch" in table and len(table.splitlines()) == 4
    result = json.loads(out_json.read_text())
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"python", "cpu", "physical_cores", "os", "providers_available", "versions"} <= set(result["environment"])
    assert result["validation"][0]["compared_to"] == "torch" and result["validation"][0]["max_abs_diff"] < 1e-4
    ort_rec, torch_rec = result["records"]
    for rec in (ort_rec, torch_rec):
        assert {"engine", "provider", "threads", "batch", "seq", "latency_ms", "throughput", "load_s",
                "peak_rss_mb", "model_mb", "precision", "kind"} <= set(rec)
        assert {"mean", "p50", "p90", "p99", "min"} <= set(rec["latency_ms"]) and len(rec["latency_ms"]["raw"]) == 3
        assert isinstance(rec["latency_ms"]["p50"], float) and rec["peak_rss_mb"] > 0 and rec["model_mb"] > 0
    assert (ort_rec["engine"], torch_rec["engine"]) == ("onnxruntime", "torch")
    assert ort_rec["speedup_vs_torch"] > 0 and ort_rec["batch"] == 2 and ort_rec["seq"] == 16


def test_bench_causal_lm_decode(llama_export: Path) -> None:
    result = run_bench(llama_export, ["cpu"], [1], [1], [8], repeats=2, warmup=1, decode_tokens=4, progress=False)
    (rec,) = result["records"]
    assert rec["prefill_ms"] > 0 and rec["decode_tokens_per_s"] > 0 and rec["decode_tokens"] == 4
    assert result["validation"][0]["compared_to"] == "manifest"
    assert "decode tok/s" in markdown_table(result)


def test_markdown_table_formats_only_here() -> None:
    lat = {"mean": 1.23456, "p50": 1.2, "p90": 1.5, "p99": 2.0, "min": 1.0, "p10": 1.1, "raw": [1.2]}
    rec = {"engine": "onnxruntime", "provider": "CPUExecutionProvider", "threads": 1, "batch": 1, "seq": 32,
           "latency_ms": lat, "throughput": 810.0, "load_s": 0.1, "peak_rss_mb": 60.0, "model_mb": 0.25,
           "variant": "onnx", "first_run_ms": 3.456}
    lines = markdown_table({"records": [rec, {**rec, "threads": 2}]}).splitlines()
    assert len(lines) == 4 and "| onnxruntime | onnx | CPU | 1 | 1 | 32 | 1.20 | 1.50 | 1.23 |" in lines[2]
    assert "| 0.10 | 3.46 | 60 | 0.2 |" in lines[2]  # load s, first inference ms, peak RSS, model MB
    capped = markdown_table({"records": [{**rec, "memory_cap_mb": 256, "within_memory_cap": False}]})
    assert capped.splitlines()[0].endswith("| RSS cap |") and "| OVER (256) |" in capped


def test_bench_bad_inputs(bert_export: Path, lora_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    tampered = _copy(bert_export, tmp_path)
    (tampered / "vocab.txt").write_text("tampered")
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    cases = [
        ((str(tmp_path / "empty"),), "is not a folder"),
        ((str(tampered),), r"checksum mismatch for vocab\.txt"),
        ((str(bert_export), "--provider", "cuda"), "not available.*--allow-fallback"),
        ((str(bert_export), "--threads", "a,b"), r"--threads takes comma-separated integers.*'a,b'"),
        ((str(bert_export), "--batch", "0"), "--batch takes integers >= 1"),
        ((str(bert_export), "--seq", "4096"), "exceeds the model's 128 positions"),
        ((str(bert_export), "--json", str(existing)), "already exists; pass --overwrite"),
        ((str(lora_export), "--compare-torch"), "--compare-torch needs the PyTorch weights"),
        ((str(lora_export), "--adapter", "zz"), "unknown adapter 'zz'"),
        ((str(bert_export), "--seq", "1"), "--seq 1 leaves no room for text: the tokenizer adds 2 special tokens"),
        ((str(bert_export), "--profile", "bogus"), "unknown device profile 'bogus'"),
    ]
    monkeypatch.setattr("dynalora.edge_runtime.bench._run_worker", lambda *a, **k: pytest.fail("a worker started"))
    for argv, message in cases:
        with pytest.raises(DynaloraError, match=message) as info:
            bench_main(_args(*argv, "--json", str(tmp_path / "never.json")) if "--json" not in argv else _args(*argv))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "never.json").exists() and existing.read_text() == "{}"
    assert parse_int_list("1,2,2", "--threads") == [1, 2]


def test_bench_judges_int8_by_recorded_accuracy(bert_export: Path, tmp_path: Path) -> None:
    """An int8 manifest with an accuracy record is validated by it (a large logit diff alone is not a failure);
    a graph that lost more than INT8_BROKEN_ACCURACY_DROP_POINTS is refused in one line before any timing."""
    from dynalora.edge_runtime.bench import validate
    from dynalora.edge_runtime.manifest import parse_manifest
    from dynalora.edge_runtime.tolerances import INT8_BROKEN_ACCURACY_DROP_POINTS

    arrays = {"input_ids": np.array([[2, 7, 3]]), "attention_mask": np.ones((1, 3), np.int64),
              "token_type_ids": np.zeros((1, 3), np.int64)}
    base = json.loads((bert_export / "manifest.json").read_text())
    for change, ok in ((-0.85, True), (-INT8_BROKEN_ACCURACY_DROP_POINTS - 0.5, False)):
        data = {**base, "precision": "int8", "verification": {"max_abs_diff": 0.72, "tolerance": 0.5,
                                                             "accuracy_change_points": change}}
        manifest = parse_manifest(data)
        if ok:
            result = validate(bert_export, manifest, "CPUExecutionProvider", arrays, False, 1, False)
            assert result["compared_to"] == "manifest accuracy" and result["accuracy_change_points"] == change
        else:
            with pytest.raises(DynaloraError, match="points less accurate than fp32") as info:
                validate(bert_export, manifest, "CPUExecutionProvider", arrays, False, 1, False)
            assert "\n" not in str(info.value)


# -- shared measurement helpers (feeds, timing, environment, tolerances) ---------------------------
def test_ort_feeds_fill_cast_and_prefill() -> None:
    from types import SimpleNamespace as Arg

    from dynalora.edge_runtime.feeds import missing, ort_feeds

    graph = [Arg(name="input_ids", type="tensor(int64)", shape=["b", "s"]),
             Arg(name="attention_mask", type="tensor(int64)", shape=["b", "s"]),
             Arg(name="token_type_ids", type="tensor(int64)", shape=["b", "s"]),
             Arg(name="position_ids", type="tensor(int32)", shape=["b", "s"]),
             Arg(name="past_key_values.0.key", type="tensor(float16)", shape=["b", 2, "p", 8]),
             Arg(name="pixel_values", type="tensor(float)", shape=["b", 3])]
    ids = np.array([[5, 6, 7], [8, 9, 0]], dtype=np.int32)  # (B=2, T=3), int32 as some tokenizers give
    feeds = ort_feeds(graph, {"input_ids": ids, "extra": np.ones(3)})
    assert list(feeds) == ["input_ids", "attention_mask", "token_type_ids", "position_ids", "past_key_values.0.key"]
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].tolist() == ids.tolist()
    assert feeds["attention_mask"].tolist() == [[1, 1, 1]] * 2 and feeds["token_type_ids"].tolist() == [[0, 0, 0]] * 2
    assert feeds["position_ids"].tolist() == [[0, 1, 2]] * 2
    past = feeds["past_key_values.0.key"]
    assert past.shape == (2, 2, 0, 8) and past.dtype == np.float16  # empty cache: a prefill
    assert missing(graph, feeds) == ["pixel_values"]
    # names only (before a graph exists): int64 feeds, no past (its shape is unknown)
    by_name = ort_feeds(["input_ids", "attention_mask", "past_key_values.0.key"],
                        {"input_ids": ids, "attention_mask": np.array([[1, 1, 1], [1, 1, 0]])})
    assert by_name["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]] and by_name["input_ids"].dtype == np.int64
    assert missing(["input_ids", "past_key_values.0.key"], by_name) == ["past_key_values.0.key"]


def test_latency_stats_and_time_calls() -> None:
    import statistics

    from dynalora.edge_runtime.timing import latency_stats, time_calls

    samples = [float(x) for x in (7, 1, 3, 10, 2, 9, 4, 6, 5, 8)]
    stats = latency_stats(samples)
    assert stats["p50"] == statistics.median(samples) == 5.5 and stats["mean"] == 5.5
    assert (stats["min"], stats["max"]) == (1.0, 10.0)  # percentiles interpolate linearly between samples
    assert [stats[p] for p in ("p10", "p90", "p95", "p99")] == pytest.approx([1.9, 9.1, 9.55, 9.91])
    assert stats["raw"] == samples and all(isinstance(v, float) for k, v in stats.items() if k != "raw")
    with pytest.raises(ValueError, match="at least one sample"):
        latency_stats([])
    calls: list[int] = []
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)


def test_environment_and_helpers_stay_torch_free() -> None:
    code = ("import sys\n"
            "import dynalora.edge_runtime.feeds, dynalora.edge_runtime.timing, dynalora.edge_runtime.tolerances\n"
            "from dynalora.edge_runtime.envinfo import environment\n"
            "env = environment(('numpy', 'no-such-package-xyz'))\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
            "assert env['versions'] == {'numpy': __import__('numpy').__version__, 'no-such-package-xyz': None}\n"
            "assert env['torch_threads'] is None and env['cpu'] and env['logical_cores'] >= 1\n"
            "assert {'python', 'os', 'physical_cores', 'ram_gb', 'providers_available', 'load_average', 'date'} <= set(env)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tolerances_keep_their_values_and_are_the_ones_checked() -> None:
    from dynalora.edge_runtime import bench, tolerances
    from dynalora.export import common, merge, merged, quantize

    assert tolerances.EXPORT_PARITY_ATOL_FP32 == 1e-4 and tolerances.BASE_LM_PARITY_ATOL_FP32 == 1e-3
    assert tolerances.EXPORT_PARITY_ATOL_FP16 == 2e-2 and tolerances.EXPORT_INT8_LOGIT_ATOL == 0.5
    assert tolerances.MERGE_ATOL == 1e-5 and tolerances.MERGE_ATOL_CAUSAL_LM == tolerances.BASE_LM_PARITY_ATOL_FP32
    assert tolerances.BENCH_PARITY_ATOL == {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-1, "int4": 5e-1}
    assert tolerances.EXPORT_RECORDED_ATOL == {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5}
    assert common.PARITY_ATOL_FP32 is merged.PARITY_ATOL_FP32 is tolerances.EXPORT_PARITY_ATOL_FP32
    assert merged.BASE_LM_PARITY_ATOL_FP32 is tolerances.BASE_LM_PARITY_ATOL_FP32
    assert quantize.EXPORT_PARITY_ATOL_FP16 is merged.EXPORT_PARITY_ATOL_FP16 is tolerances.EXPORT_PARITY_ATOL_FP16
    assert merge.MERGE_ATOL is tolerances.MERGE_ATOL and bench.BENCH_PARITY_ATOL is tolerances.BENCH_PARITY_ATOL
    assert merge.MERGE_ATOL_CAUSAL_LM is tolerances.MERGE_ATOL_CAUSAL_LM


# -- GPU -----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu with CUDAExecutionProvider and a CUDA GPU")
def test_cuda_predict_matches_cpu(bert_export: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        gpu = load(bert_export, provider="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = load(bert_export, provider="cpu")
    np.testing.assert_allclose(gpu.predict(TEXTS)["logits"], cpu.predict(TEXTS)["logits"], atol=1e-3)


def test_edge_runtime_imports_no_other_layer() -> None:
    """A device installs the runtime alone: importing every edge_runtime module pulls in no torch and
    none of core / fusion / export / distributed (only the shared dynalora.errors / dynalora.atomic)."""
    import pkgutil

    import dynalora.edge_runtime as pkg

    modules = [f"dynalora.edge_runtime.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m in ('torch', 'transformers') or "
            "m.startswith(('dynalora.core', 'dynalora.fusion', 'dynalora.export', 'dynalora.distributed')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
