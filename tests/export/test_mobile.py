"""`dynalora export ... --target android|ios|generic`: the mobile package (export/mobile.py), its coverage report
(export/mobile_report.py) and the equivalence rewrites (export/mobile_rewrite.py), on a tiny random-init BERT run.

    pytest tests/export/test_mobile.py        (~30 s on 2 cores)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tiny_models import save_tiny_model

WORDS = "good bad great awful fine movie film plot actor boring fun dull nice the a is was very".split()
TEXTS = ["a good film", "the plot was very dull and the actor was awful", "fine", "great fun, nice movie"]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynalora.core.config import LoRAConfig, TrainConfig
    from dynalora.core.train import train

    root = tmp_path_factory.mktemp("mobile_run")
    rng = random.Random(0)
    rows = ["text,label"] + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + f",{i % 2}"
                             for i in range(64)]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    model = save_tiny_model("bert", root / "model")
    train(TrainConfig(model=str(model), task=None, train_file=str(root / "data.csv"), out=str(root / "run"), steps=4,
                      batch_size=8, max_length=24, progress=False, lora=LoRAConfig(rank=2)))
    return root / "run"


@pytest.fixture(scope="module")
def android(bert_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynalora.export.merged import export_merged

    out = tmp_path_factory.mktemp("mobile") / "android"
    export_merged(bert_run, out, target="android")
    return out


def test_android_package_files_checksums_and_parity(android: Path) -> None:
    from dynalora.edge_runtime.manifest import read_manifest, verify_checksums
    from dynalora.edge_runtime.tolerances import MOBILE_PARITY_ATOL

    manifest = read_manifest(android)
    verify_checksums(android, manifest)
    mobile = manifest.raw["mobile"]
    for rel in ("mobile/model.ort", "mobile/required_operators.config", "mobile/model.fixed.onnx",
                "mobile/model.fixed.ort", "mobile/mobile_report.json", "mobile/mobile_report.md"):
        assert rel in manifest.files, rel
    assert mobile["target"] == "android" and set(mobile["optimization"]) == {"model.ort", "model.fixed.ort"}
    assert mobile["fixed"] == {**mobile["fixed"], "batch": 1, "sequence": 24}
    check = mobile["verification"]
    for key in ("ort_vs_onnx_max_abs", "fixed_onnx_vs_onnx_max_abs", "fixed_ort_vs_onnx_max_abs"):
        assert 0 <= check[key] <= MOBILE_PARITY_ATOL["fp32"], key
    config = (android / "mobile/required_operators.config").read_text()
    assert "ai.onnx;" in config and "MatMul" in config and "/tmp" not in config  # no scratch paths leak
    # one config for both graphs: the CPU graph's LayerNormalization and the fixed graph's ReduceMean
    assert "LayerNormalization" in config and "ReduceMean" in config and "# - model.fixed.ort" in config
    # the tiny BERT uses GELU (Erf) and LayerNormalization: both rewritten in the fixed graph
    rewrites = mobile["fixed"]["rewrites"]
    assert any(k.startswith("Erf") for k in rewrites) and any(k.startswith("LayerNormalization") for k in rewrites)


def test_every_variant_predicts_like_model_onnx(android: Path) -> None:
    from dynalora.edge_runtime import load

    reference = load(android, threads=1).predict(TEXTS)
    for variant in ("ort", "fixed", "fixed-ort"):
        predictor = load(android, threads=1, variant=variant)
        got = predictor.predict(TEXTS)
        assert predictor.fixed_shape == (None if variant == "ort" else (1, 24))
        np.testing.assert_allclose(got["logits"], reference["logits"], atol=1e-4)
        assert got["labels"] == reference["labels"]


def test_coverage_report_fields(android: Path) -> None:
    report = json.loads((android / "mobile/mobile_report.json").read_text())
    dynamic, fixed = report["graphs"]["model.onnx"], report["graphs"]["mobile/model.fixed.onnx"]
    assert set(dynamic["dynamic_inputs"]) >= {"input_ids", "attention_mask"} and fixed["dynamic_inputs"] == []
    for graph in (dynamic, fixed):
        for ep in ("NNAPI", "CoreML MLProgram", "CoreML NeuralNetwork"):
            e = graph["eps"][ep]
            assert 0 <= e["supported_nodes"] <= e["nodes"] == graph["nodes"]
            assert e["node_share"] == pytest.approx(e["supported_nodes"] / e["nodes"])
            assert e["partitions"] == len(e["partition_sizes"]) and e["suitability"] in ("YES", "MAYBE", "NO")
            assert sum(e["cpu_fallback_nodes_by_op"].values()) == e["nodes"] - e["supported_nodes"]
        assert graph["eps"]["QNN"]["applicable"] is False  # a float graph
    # the dynamic graph loses nodes to its dynamic shapes; the fixed one cannot, and every MatMul shape is known
    assert dynamic["eps"]["NNAPI"]["nodes_unsupported_due_to_dynamic_shape"] > 0
    assert fixed["eps"]["NNAPI"]["nodes_unsupported_due_to_dynamic_shape"] == 0
    assert fixed["eps"]["NNAPI"]["compute_share"] is not None and dynamic["eps"]["NNAPI"]["compute_share"] is None
    # after the rewrites NNAPI has no operator to refuse in the fixed graph: one partition, every node
    assert fixed["eps"]["NNAPI"]["unsupported_ops"] == [] and fixed["eps"]["NNAPI"]["partitions"] == 1
    assert "LayerNormalization" in " ".join(dynamic["eps"]["NNAPI"]["unsupported_ops"])
    md = (android / "mobile/mobile_report.md").read_text()
    assert "| NNAPI |" in md and "Rewrites applied" in md


def test_generic_target_without_fixed_graph(bert_run: Path, tmp_path: Path) -> None:
    from dynalora.edge_runtime import load
    from dynalora.edge_runtime.predictor import RuntimeLoadError
    from dynalora.export.merged import export_merged

    manifest = export_merged(bert_run, tmp_path / "g", target="generic")
    assert set(manifest["mobile"]["optimization"]) == {"model.ort"} and "fixed" not in manifest["mobile"]
    assert "mobile/model.ort" in manifest["files"] and "mobile/model.fixed.onnx" not in manifest["files"]
    load(tmp_path / "g", variant="ort", threads=1).predict(TEXTS[:1])
    with pytest.raises(RuntimeLoadError, match="no fixed-shape graph"):
        load(tmp_path / "g", variant="fixed")
    with pytest.raises(RuntimeLoadError, match="unknown model variant"):
        load(tmp_path / "g", variant="tflite")


def _ort_run(model: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return sess.run(None, feeds)


def test_rewrites_compute_the_same_function() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dynalora.export.mobile_rewrite import rewrite_for_mobile

    f32 = np.float32
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])
    m = helper.make_tensor_value_info("m", TensorProto.INT64, [2, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ln", "erf", "mask")]
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(f32), "scale"),
             numpy_helper.from_array(np.linspace(-0.2, 0.2, 8).astype(f32), "bias"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([2, 1, 8, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array(1.0, f32), "one"),
             numpy_helper.from_array(np.array(np.finfo(f32).min, f32), "minval")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln"], axis=-1, epsilon=1e-12),
             helper.make_node("Erf", ["x"], ["erf"]),
             # the Hugging Face mask preamble: Expand(Unsqueeze(mask)) -> Cast -> 1 - . -> Where(bool(.), min, .)
             helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
             helper.make_node("Unsqueeze", ["m1", "axis1"], ["m2"]),
             helper.make_node("Expand", ["m2", "shape"], ["mx"]),
             helper.make_node("Cast", ["mx"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["inv"]),
             helper.make_node("Cast", ["inv"], ["invb"], to=TensorProto.BOOL),
             helper.make_node("Where", ["invb", "minval", "inv"], ["mask"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, m], outs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(0)
    feeds = {"x": (rng.standard_normal((2, 3, 8)) * 4).astype(f32),
             "m": np.array([[1] * 8, [1] * 5 + [0] * 3], np.int64)}
    feeds["x"][0, 0, :] = [-9.0, -3.0, -1e-3, 0.0, 1e-30, 0.5, 3.0, 9.0]  # erf's tails, zero and tiny values
    want = _ort_run(model, feeds)
    rewritten = onnx.shape_inference.infer_shapes(model)
    counts = rewrite_for_mobile(rewritten)
    onnx.checker.check_model(rewritten)
    assert len(counts) == 4 and all(v == 1 for v in counts.values())
    assert not {n.op_type for n in rewritten.graph.node} & {"LayerNormalization", "Erf", "Expand", "Where"}
    got = _ort_run(rewritten, feeds)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # layer norm: re-ordered sums only
    assert np.max(np.abs(got[1] - want[1])) < 3e-7  # A&S 7.1.26: |error| < 1.5e-7, plus fp32 rounding
    np.testing.assert_array_equal(got[2], np.broadcast_to(want[2], got[2].shape))


def test_operator_without_kernel_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from dynalora.export.errors import ExportError
    from dynalora.export.mobile import build_mobile

    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    node = helper.make_node("FancyPool", ["input_ids"], ["logits"], domain="com.example")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="cannot run model.onnx") as info:
        build_mobile(tmp_path, "android", {"input_ids": np.ones((1, 4), np.int64)}, seq=8, pad_id=0, precision="fp32")
    assert "\n" not in str(info.value) and "FancyPool" in str(info.value)


def test_cli_unknown_target_is_one_line(bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dynalora.cli import main
    from dynalora.export.errors import ExportError
    from dynalora.export.mobile import check_target

    code = main(["export", "merged", "--run", str(bert_run), "--out", str(tmp_path / "x"), "--target", "symbian"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "invalid choice: 'symbian'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(ExportError, match="unknown --target 'symbian'"):  # the Python API checks it too
        check_target("symbian")


def test_bench_mobile_cpu_profile_fixed_variant_and_device_eps(android: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from dynalora.cli import main
    from dynalora.edge_runtime import providers
    from dynalora.edge_runtime.bench import run_bench
    from dynalora.edge_runtime.bench_worker import BenchError

    result = run_bench(android, threads=[1], batches=[1], seqs=[24], repeats=2, warmup=1, profile="mobile-cpu",
                       variant="fixed-ort", progress=False)
    (record,) = result["records"]
    assert record["variant"] == "fixed-ort" and record["first_run_ms"] > 0 and record["load_s"] > 0
    assert record["memory_cap_mb"] == providers.MOBILE_MEMORY_CAP_MB
    assert record["within_memory_cap"] == (record["peak_rss_mb"] <= providers.MOBILE_MEMORY_CAP_MB)
    eps = result["device_eps"]
    assert eps["graph"] == "mobile/model.fixed.onnx" and eps["would_use"][-1] == "CPUExecutionProvider"
    assert eps["coverage"]["NNAPI"]["suitability"] == "YES" and "NnapiExecutionProvider" not in eps["would_use"]
    assert "NNAPI" in eps["would_use"]
    with pytest.raises(BenchError, match="takes exactly batch 1 x 24 tokens"):
        run_bench(android, batches=[2], seqs=[24], variant="fixed", progress=False)
    # a profile whose memory cap the run exceeds: the table and the one-line verdict, exit status 1
    tiny_cap = dataclasses.replace(providers.PROFILES["mobile-cpu"], memory_cap_mb=1)
    monkeypatch.setitem(providers.PROFILES, "mobile-cpu", tiny_cap)
    code = main(["bench", str(android), "--profile", "mobile-cpu", "--threads", "1", "--repeats", "1",
                 "--warmup", "0", "--variant", "ort"])
    out, err = capsys.readouterr()
    assert code == 1 and "OVER (1)" in out and "exceeds the mobile-cpu profile's cap of 1 MB" in err
    assert "device EPs for mobile/model.fixed.onnx (android): would use NNAPI" in out


def test_adapters_export_with_target_switches_adapters_on_every_graph(bert_run: Path, tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """`export adapters --target android`: the LoRA tensors stay overridable inputs in the .ort and fixed graphs,
    so onnxruntime's adapters switch there too (a per-example run included), quietly."""
    from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig
    from dynalora.core.train import train
    from dynalora.edge_runtime import load
    from dynalora.export.adapters import export_adapters

    per_example = tmp_path / "run_pe"
    train(TrainConfig(model=str(bert_run.parent / "model"), task=None, train_file=str(bert_run.parent / "data.csv"),
                      out=str(per_example), steps=4, batch_size=8, max_length=24, progress=False,
                      lora=LoRAConfig(rank=2), dynamic=DynamicConfig(input_adaptive="per-example")))
    capfd.readouterr()
    manifest = export_adapters([bert_run, per_example], tmp_path / "exp", target="android")
    assert manifest["mobile"]["fixed"]["rewrites"] and "mobile/model.fixed.ort" in manifest["files"]
    for name in manifest["adapters"]:
        reference = load(tmp_path / "exp", threads=1)
        reference.use_adapter(name)
        want = reference.predict(TEXTS)["logits"]
        for variant in ("ort", "fixed-ort"):
            predictor = load(tmp_path / "exp", threads=1, variant=variant)
            predictor.use_adapter(name)
            np.testing.assert_allclose(predictor.predict(TEXTS)["logits"], want, atol=1e-4)
    assert "appears in graph inputs" not in capfd.readouterr().err  # by design here: not shown to the user


def test_ios_rewrites_only_what_coreml_lacks(bert_run: Path, tmp_path: Path) -> None:
    from dynalora.edge_runtime import load
    from dynalora.export.merged import export_merged

    manifest = export_merged(bert_run, tmp_path / "ios", target="ios")
    assert [k.split(" ")[0] for k in manifest["mobile"]["fixed"]["rewrites"]] == ["Expand"]
    report = json.loads((tmp_path / "ios/mobile/mobile_report.json").read_text())
    mlprogram = report["graphs"]["mobile/model.fixed.onnx"]["eps"]["CoreML MLProgram"]
    # the NNAPI rewrites of Erf would add Abs / Neg, which MLProgram lacks; it runs Erf and LayerNormalization
    assert not {"ai.onnx:Abs", "ai.onnx:Neg", "ai.onnx:Expand"} & set(mlprogram["unsupported_ops"])
    np.testing.assert_allclose(load(tmp_path / "ios", variant="fixed-ort", threads=1).predict(TEXTS)["logits"],
                               load(tmp_path / "ios", threads=1).predict(TEXTS)["logits"], atol=1e-4)
