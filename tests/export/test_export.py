"""Tests of dynalora.export on tiny random-init models (bert, llama, gpt2) trained for a few steps.

    pytest tests/export/test_export.py                 # everything CPU (~25 s on 2 cores; nothing needs `slow`)
    pytest tests/export/test_export.py -m gpu          # fp16 on CUDAExecutionProvider (skipped without one)

Runs are trained once per session (12 steps) and shared; every export goes to its own tmp folder.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tiny_models import save_tiny_model

WORDS = "good bad great awful fine movie film plot actor boring fun dull nice the a is was very".split()


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny runs: bert (rank 4), bert per-example (rank 2), bert regression, llama, gpt2."""
    from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig
    from dynalora.core.train import train

    root = tmp_path_factory.mktemp("export_runs")
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(96):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))] + (["good"] if i % 2 else ["bad"])
        rows.append(" ".join(words) + f",{i % 2}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    reg = ["text,label"] + [f"{r.rsplit(',', 1)[0]},{0.5 * i % 3:.2f}" for i, r in enumerate(rows[1:])]
    (root / "reg.csv").write_text("\n".join(reg) + "\n")
    out: dict[str, Path] = {}
    specs = {
        "bert": ("bert", "data.csv", 4, "layer"),
        "bert_pe": ("bert", "data.csv", 2, "per-example"),
        "bert_reg": ("bert", "reg.csv", 4, "layer"),
        "llama": ("llama", "data.csv", 4, "layer"),
        "gpt2": ("gpt2", "data.csv", 4, "layer"),
    }
    for key, (arch, data, rank, mode) in specs.items():
        model_dir = root / f"model_{arch}"
        if not model_dir.exists():
            save_tiny_model(arch, model_dir)
        out[key] = root / f"run_{key}"
        train(TrainConfig(model=str(model_dir), task=None, train_file=str(root / data), out=str(out[key]), steps=12,
                          batch_size=8, progress=False, lora=LoRAConfig(rank=rank),
                          dynamic=DynamicConfig(input_adaptive=mode)))
    return out


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from dynalora.cli import main

    code = main(args)
    return code, capsys.readouterr().err.strip()


def _torch_vs_ort(export: Path, run: Path, adapter: str | None = None) -> float:
    """Max abs logit diff between the PyTorch run and the export, on the run's eval texts."""
    import onnxruntime as ort
    import torch

    from dynalora.export.common import encode, eval_examples, load_run_checked

    loaded = load_run_checked(run)
    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = encode(loaded.tokenizer, eval_examples(loaded, 16), loaded.config.max_length, names)
    options = None
    if adapter is not None:
        manifest = json.loads((export / "manifest.json").read_text())
        lora = ort.LoraAdapter()
        lora.Load(str(export / manifest["adapters"][adapter]))
        options = ort.RunOptions()
        options.add_active_adapter(lora)
    got = sess.run(None, feeds, options)[0]
    with torch.no_grad():
        want = loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    return float(np.abs(got - want).max())


# ---- merge -------------------------------------------------------------------------------------
def test_merged_model_matches_and_leaves_run_untouched(runs: dict[str, Path]) -> None:
    import torch

    from dynalora.core.inject import adapter_layers
    from dynalora.export.common import load_run_checked
    from dynalora.export.merge import check_inputs, merged_model

    run = load_run_checked(runs["bert"])
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    merged = merged_model(run)
    assert not adapter_layers(merged) and adapter_layers(run.model)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in the source run"
    inputs = check_inputs(run.model)
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, run.model(**inputs).logits, atol=1e-5)


def test_merged_model_refuses_per_example(runs: dict[str, Path]) -> None:
    from dynalora.export import ExportError
    from dynalora.export.common import load_run_checked
    from dynalora.export.merge import merged_model

    with pytest.raises(ExportError, match="export adapters"):
        merged_model(load_run_checked(runs["bert_pe"]))


# ---- merged export -------------------------------------------------------------------------------
def _check_merged(run: Path, out: Path) -> dict:
    from dynalora.export.merged import export_merged

    manifest = export_merged(run, out)
    assert manifest["kind"] == "merged" and manifest["precision"] == "fp32"
    assert manifest["verification"]["fp32_vs_torch_max_abs"] <= 1e-4
    assert _torch_vs_ort(out, run) <= 1e-4
    assert (out / "torch" / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert not (out / ".work").exists()
    return manifest


def test_export_merged_bert_parity_and_manifest(runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.edge_runtime.manifest import ChecksumError, read_manifest, sha256_file, verify_checksums

    out = tmp_path / "exp"
    manifest = _check_merged(runs["bert"], out)
    assert manifest["format"] == "dynalora-export" and manifest["format_version"] == 1
    assert manifest["model_file"] == "model.onnx" and "input_ids" in manifest["inputs"]
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest
    assert "model.onnx" in manifest["files"] and "torch/model.safetensors" in manifest["files"]
    verify_checksums(out, read_manifest(out))
    with open(out / "vocab.txt", "a") as fh:
        fh.write("tampered\n")
    with pytest.raises(ChecksumError, match="vocab.txt"):
        verify_checksums(out, read_manifest(out))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_export_merged_decoder_parity(runs: dict[str, Path], tmp_path: Path, arch: str) -> None:
    _check_merged(runs[arch], tmp_path / "exp")


def test_export_merged_int8_changes_little(runs: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    from dynalora.export.merged import export_merged

    out = tmp_path / "int8"
    manifest = export_merged(runs["bert"], out, quantize="int8")
    v = manifest["verification"]
    assert manifest["precision"] == "int8"
    assert v["int8"]["per_channel"] is True and v["int8"]["fp32_nodes"], "the classifier head must stay fp32"
    n_eval = int(v["accuracy_split"].split("(")[1].split()[0])
    assert abs(v["accuracy_int8"] - v["accuracy_fp32"]) <= 1.0 / n_eval + 1e-9  # at most one example flips
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}
    assert _torch_vs_ort(out, runs["bert"]) < 0.05
    # the vocabulary embedding table is int8 too (kept: the tiny run's accuracy allows it), and the model smaller
    emb = v["int8"]["embeddings"]
    assert emb["quantized"] is True and "Gather" in v["int8"]["op_types"], emb
    assert emb["accuracy_change_points"] >= -emb["limit_points"]
    assert _vocab_table_dtype(out / "model.onnx") == "int8"
    assert manifest["quantization"] == "dynamic-int8"
    fp32 = export_merged(runs["bert"], tmp_path / "fp32", optimize=False)
    assert manifest["model_bytes"] == (out / "model.onnx").stat().st_size
    assert fp32["model_bytes"] == (tmp_path / "fp32" / "model.onnx").stat().st_size > manifest["model_bytes"]


def _vocab_table_dtype(model_path: Path) -> str:
    """dtype of the initializer the Gather by input_ids reads (directly or through a DequantizeLinear)."""
    import onnx

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    data = gather.input[0]
    if data in producers and producers[data].op_type == "DequantizeLinear":
        data = producers[data].input[0]
    return onnx.helper.tensor_dtype_to_np_dtype(inits[data].data_type).name


def _embedding_graph(path: Path, table: np.ndarray, tied: bool = False) -> Path:
    """input_ids -> Gather(table) [-> MatMul(table^T) when tied, like an LM head sharing the table]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e" if tied else "y"], name="embed")]
    inits = [numpy_helper.from_array(table, "table")]
    if tied:
        nodes += [helper.make_node("Transpose", ["table"], ["tt"]), helper.make_node("MatMul", ["e", "tt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [ids], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_quantize_embeddings_per_row(tmp_path: Path) -> None:
    """One scale per row: every row within half a step of its own scale; an all-zero (padding) row stays zero."""
    import onnxruntime as ort

    from dynalora.export import ExportError
    from dynalora.export.quantize import quantize_embeddings

    rng = np.random.default_rng(0)
    table = (rng.normal(size=(50, 8)) * rng.uniform(0.01, 1.0, size=(50, 1))).astype(np.float32)
    table[0] = 0.0
    record = quantize_embeddings(_embedding_graph(tmp_path / "e.onnx", table), tmp_path / "q.onnx")
    assert record["tables"][0]["granularity"] == "per-row" and record["tables"][0]["dtype"] == "int8"
    assert _vocab_table_dtype(tmp_path / "q.onnx") == "int8"
    ids = np.arange(50, dtype=np.int64)[None, :]
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids})[0][0]
    step = np.abs(table).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - table) <= step / 2 + 1e-7) and not got[0].any()
    with pytest.raises(ExportError, match="no vocabulary embedding table"):  # a tied table is left alone
        quantize_embeddings(_embedding_graph(tmp_path / "t.onnx", table, tied=True), tmp_path / "tq.onnx")


def test_int8_embeddings_kept_only_where_accuracy_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from dynalora.export import merged

    graph = _embedding_graph(tmp_path / "e.onnx", np.ones((20, 4), dtype=np.float32))
    run = SimpleNamespace(tokenizer=None)
    monkeypatch.setattr(merged, "accuracy", lambda *args, **kwargs: 0.80)  # 0.9 -> 0.8: the int8 table costs 10 points
    info: dict = {"op_types": ["MatMul"]}
    kept, acc = merged._with_int8_embeddings(graph, tmp_path / "q.onnx", 0.90, run, [], 8, info)
    assert kept == graph and acc == 0.90 and info["op_types"] == ["MatMul"]
    assert info["embeddings"]["quantized"] is False and "stays fp32" in info["embeddings"]["reason"]
    monkeypatch.setattr(merged, "accuracy", lambda *args, **kwargs: 0.899)  # 0.1 points: within the limit
    kept, acc = merged._with_int8_embeddings(graph, tmp_path / "q.onnx", 0.90, run, [], 8, info)
    assert kept == tmp_path / "q.onnx" and acc == 0.899 and info["op_types"] == ["MatMul", "Gather"]


def test_export_merged_qdq_int8(runs: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from dynalora import edge_runtime
    from dynalora.export.merged import export_merged
    from dynalora.export.quantize import DEFAULT_CALIBRATION_SAMPLES

    out = tmp_path / "qdq"
    manifest = export_merged(runs["bert"], out, quantize="qdq-int8")
    v, q = manifest["verification"], manifest["verification"]["int8"]
    assert manifest["precision"] == "int8" and manifest["quantization"] == "qdq-int8"
    assert q["method"] == "quantize_static" and q["format"] == "QDQ" and q["per_channel"] is True
    assert q["calibration_method"] and q["fp32_nodes"], "the classifier head must stay fp32"
    assert q["calibration_samples"] == min(DEFAULT_CALIBRATION_SAMPLES, len(_train_split(runs["bert"])))
    assert isinstance(v["accuracy_change_points"], float) and 0 <= v["accuracy_int8"] <= 1
    parity = q["fake_quant_parity"]
    assert parity["max_abs"] <= parity["tolerance"] and 0 <= parity["argmax_agreement"] <= 1
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: i for i in model.graph.initializer}
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and len(inits[n.input[0]].dims) == 2]
    assert weight_dqs
    for dq in weight_dqs:  # per-channel: one scale per output column of the MatMul weight
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        weight, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert axis == 1 and scale.shape == (weight.dims[1],) and weight.data_type == onnx.TensorProto.INT8
    assert manifest["model_bytes"] == (out / "model.onnx").stat().st_size
    prediction = edge_runtime.load(out).predict(["a good film", "the plot was very dull"])
    assert prediction["logits"].shape == (2, 2) and len(prediction["labels"]) == 2


def _train_split(run: Path) -> list:
    from dynalora.core.batches import load_data
    from dynalora.export.common import load_run_checked

    return list(load_data(load_run_checked(run).config).train)


def test_qdq_int8_refused_when_kernels_leave_fake_quant(runs: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dynalora.export import ExportError, merged

    monkeypatch.setattr(merged, "QDQ_FAKE_QUANT_ATOL", -1.0)  # every parity check fails
    with pytest.raises(ExportError, match="fake-quant reference.*nothing was written"):
        merged.export_merged(runs["bert"], tmp_path / "o", quantize="qdq-int8", optimize=False, calibration_samples=8)
    _no_leftovers(tmp_path / "o")


def test_quantize_refuses_graph_without_matmul(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from dynalora.export import ExportError
    from dynalora.export.quantize import quantize_int8

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    with pytest.raises(ExportError, match="int8 quantisation is not supported"):
        quantize_int8(tmp_path / "relu.onnx", tmp_path / "q.onnx")


# ---- adapters export ---------------------------------------------------------------------------------
def test_export_adapters_mixed_ranks_and_per_example(runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.edge_runtime.manifest import read_manifest, verify_checksums
    from dynalora.export.adapters import export_adapters

    out = tmp_path / "ad"
    manifest = export_adapters([runs["bert"], runs["bert_pe"]], out)
    names = list(manifest["adapters"])
    assert names == ["run_bert", "run_bert_pe"]
    ranks = {n: manifest["adapter_runs"][n]["ranks"] for n in names}
    assert ranks["run_bert"] != ranks["run_bert_pe"], "the test needs runs with different per-layer ranks"
    assert manifest["adapter_runs"]["run_bert_pe"]["mode"] == "per-example"
    for name, run in zip(names, [runs["bert"], runs["bert_pe"]], strict=True):
        assert manifest["verification"][name]["max_abs_vs_torch"] <= 1e-4
        assert _torch_vs_ort(out, run, adapter=name) <= 1e-4
    assert _torch_vs_ort(out, runs["bert"]) <= 1e-4  # graph defaults = first run
    verify_checksums(out, read_manifest(out))
    assert all((out / rel).is_file() for rel in manifest["adapters"].values())


def test_export_adapters_refuses_different_base_models(runs: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["export", "adapters", "--runs", str(runs["bert"]), str(runs["llama"]), "--out",
                      str(tmp_path / "x")], capsys)
    assert code == 2 and "different base models" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------
def _no_leftovers(folder: Path) -> None:
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


def test_cli_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, err = _cli(["export", "merged", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not a dynalora run folder" in err and len(err.splitlines()) == 1
    _no_leftovers(tmp_path / "o")


def test_cli_missing_tokenizer(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["bert"], run)
    shutil.rmtree(run / "tokenizer")
    code, err = _cli(["export", "merged", "--run", str(run), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "tokenizer" in err and len(err.splitlines()) == 1
    _no_leftovers(tmp_path / "o")


def test_cli_existing_output_needs_overwrite(runs: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _cli(["export", "merged", "--run", str(runs["bert"]), "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_per_example_merged_points_to_adapters(runs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["export", "merged", "--run", str(runs["bert_pe"]), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "dynalora export adapters" in err
    _no_leftovers(tmp_path / "o")


def test_cli_int8_on_unsupported_run(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["export", "merged", "--run", str(runs["bert_reg"]), "--out", str(tmp_path / "o"),
                      "--quantize", "int8"], capsys)
    assert code == 2 and "int8" in err and len(err.splitlines()) == 1
    _no_leftovers(tmp_path / "o")


@pytest.mark.parametrize("case", ["regression", "multiple_choice", "zero_samples", "samples_without_qdq"])
def test_cli_qdq_int8_bad_input(case: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from dynalora.export import merged

    run, flags, expect = runs["bert"], ["--quantize", "qdq-int8"], "qdq-int8"
    if case == "regression":
        run = runs["bert_reg"]
    elif case == "multiple_choice":  # no tiny multiple-choice run here: the refusal needs only run.json's problem
        monkeypatch.setattr(merged, "load_run_checked", lambda path: SimpleNamespace(
            path=Path(path), info={"task": {"problem": "multiple_choice"}}))
    elif case == "zero_samples":
        flags, expect = flags + ["--calibration-samples", "0"], "--calibration-samples must be an integer >= 1"
    else:
        flags, expect = ["--quantize", "int8", "--calibration-samples", "8"], "qdq-int8 only"
    code, err = _cli(["export", "merged", "--run", str(run), "--out", str(tmp_path / "o"), *flags], capsys)
    assert code == 2 and expect in err and len(err.splitlines()) == 1, err
    _no_leftovers(tmp_path / "o")


def test_cli_unsupported_architecture(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import optimum.exporters.onnx as onnx_exporters

    def refuse(*args: object, **kwargs: object) -> None:  # what optimum raises for an unknown model_type
        raise ValueError("Trying to export a tinyarch model, that is a custom or unsupported architecture, but no "
                         "custom onnx configuration was passed as `custom_onnx_configs`.\nmore detail")

    monkeypatch.setattr(onnx_exporters, "main_export", refuse)
    code, err = _cli(["export", "merged", "--run", str(runs["bert"]), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "cannot handle" in err and "tinyarch" in err and len(err.splitlines()) == 1
    _no_leftovers(tmp_path / "o")


def test_failed_verification_writes_nothing(runs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from dynalora.export import ExportError, common, merged

    monkeypatch.setattr(merged, "PARITY_ATOL_FP32", -1.0)  # every parity check fails
    with pytest.raises(ExportError, match="nothing was written"):
        merged.export_merged(runs["bert"], tmp_path / "o", optimize=False)
    _no_leftovers(tmp_path / "o")
    assert common.PARITY_ATOL_FP32 == 1e-4


# ---- what users see: no tracer / fresh-head noise, real warnings kept -------------------------------
def test_quiet_onnx_export_drops_only_tracer_and_torchvision_noise(log_messages) -> None:
    import torch

    from dynalora.export.common import quiet_onnx_export

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    seen, level = log_messages(logger.name), logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_onnx_export():
                warnings.warn("Converting a tensor to a Python boolean", torch.jit.TracerWarning)
                warnings.warn("a real problem", UserWarning)
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`", FutureWarning)
                warnings.warn("some other future change", FutureWarning)
                logger.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
                logger.warning("Failed to infer the signature for function %s", "f")
            warnings.warn("after the export", torch.jit.TracerWarning)
            logger.warning("torchvision is not installed. Skipping %s", "torchvision::roi_align")
    finally:
        logger.setLevel(level)
    assert [str(w.message) for w in caught] == ["a real problem", "some other future change", "after the export"]
    assert seen == ["Failed to infer the signature for function f",
                             "torchvision is not installed. Skipping torchvision::roi_align"]


def test_export_shows_no_tracer_or_fresh_head_noise(runs: dict[str, Path], tmp_path: Path, log_messages) -> None:
    """bert_reg's base checkpoint has a 2-label head, the run a 1-value one: loading it used to print
    transformers' "newly initialized ... TRAIN this model", and tracing BERT a TracerWarning."""
    from dynalora.export.merged import export_merged

    seen = log_messages("transformers.modeling_utils")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_merged(runs["bert_reg"], tmp_path / "o", optimize=False)
    assert not [m for m in seen if "TRAIN this model" in m]
    assert not [w for w in caught if "TracerWarning" in type(w.message).__name__]


# ---- GPU -----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_fp16_on_cuda(runs: dict[str, Path], tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider in this onnxruntime build")
    from dynalora.export.merged import export_merged

    out = tmp_path / "fp16"
    manifest = export_merged(runs["bert"], out, quantize="fp16")
    assert manifest["precision"] == "fp16"
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CUDAExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    assert manifest["verification"]["fp16_vs_torch_max_abs"] <= 2e-2


# ---- base (causal LM) export ------------------------------------------------------------------------
def test_export_base_causal_lm_fp32_and_int8(tmp_path: Path) -> None:
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dynalora.edge_runtime.manifest import read_manifest, verify_checksums
    from dynalora.export.merged import export_base

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model_dir = save_tiny_model("llama", tmp_path / "lm")  # for the tokenizer files
    LlamaForCausalLM(config).save_pretrained(model_dir)
    fp32 = export_base(str(model_dir), tmp_path / "fp32")
    assert fp32["kind"] == "base" and fp32["task"]["problem"] == "causal-lm"
    assert fp32["verification"]["max_abs_diff"] <= fp32["verification"]["tolerance"]
    assert any(n.startswith("past_key_values") for n in fp32["inputs"])
    verify_checksums(tmp_path / "fp32", read_manifest(tmp_path / "fp32"))
    int8 = export_base(str(model_dir), tmp_path / "int8", quantize="int8")
    assert int8["precision"] == "int8" and int8["verification"]["int8"]["method"] == "MatMulNBits"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
