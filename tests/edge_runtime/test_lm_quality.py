"""A quantised causal LM is judged by next-token agreement and perplexity (edge_runtime/lm_quality.py).

Run: .venv/bin/python -m pytest tests/edge_runtime/test_lm_quality.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dynalora.edge_runtime.lm_quality import QUANT_TOP1_FLOOR, lm_quality, perplexity, top1_agreement


def test_perplexity_and_agreement_by_hand() -> None:
    ids = np.array([[1, 2, 3, 0]])
    mask = np.array([[1, 1, 1, 0]])  # the last token is padding: positions 0 and 1 are scored
    uniform = np.zeros((1, 4, 5))
    assert perplexity(uniform, ids, mask) == pytest.approx(5.0)  # uniform over 5 tokens
    sure = np.full((1, 4, 5), -30.0)
    sure[0, 0, 2] = sure[0, 1, 3] = 0.0  # the right next token, almost surely
    assert perplexity(sure, ids, mask) == pytest.approx(1.0, abs=1e-9)
    other = sure.copy()
    other[0, 1, 3], other[0, 1, 4] = -30.0, 0.0  # position 1 now prefers token 4
    other[0, 2, :] = 7.0  # position 2 predicts padding: not scored, whatever it says
    assert top1_agreement(sure, other, ids, mask) == 0.5
    q = lm_quality(sure, other, ids, mask)
    assert q["tokens"] == 2 and q["top1_agreement"] == 0.5 and q["perplexity_change_pct"] > 1e6
    with pytest.raises(ValueError, match="do not match"):
        lm_quality(sure, other[:, :3], ids, mask)


def _tiny_lm(root: Path) -> Path:
    import torch
    from tiny_models import save_tiny_model
    from transformers import AutoModelForCausalLM

    src = save_tiny_model("llama", root / "cls")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(root / "lm")
    for f in src.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, root / "lm" / f.name)
    return root / "lm"


def test_bench_compare_torch_on_int8_lm_checks_next_token_agreement(tmp_path: Path) -> None:
    """`bench --compare-torch` on a block-wise int8 causal LM: judged by top-1 agreement with PyTorch fp32 (not
    refused by the fp32 logit bound); a graph whose logits are scrambled is refused in one line."""
    import onnx

    from dynalora.edge_runtime.bench import BenchError, run_bench
    from dynalora.export.merged import export_base

    export_base(str(_tiny_lm(tmp_path)), tmp_path / "exp", quantize="int8")
    result = run_bench(tmp_path / "exp", None, [1], [2], [16], True, repeats=2, warmup=1)
    check = result["validation"][0]
    assert check["compared_to"].startswith("torch (fp32) next-token") and check["top1_agreement"] >= QUANT_TOP1_FLOOR
    assert check["tokens"] == 2 * 15 and abs(check["perplexity_change_pct"]) < 1.0
    # break it: negate the logits (a graph whose argmax is the fp32 argmin) -> refused
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "exp", broken)
    model = onnx.load(str(broken / "model.onnx"))
    out = next(o for o in model.graph.output if o.name == "logits")
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    model.graph.node.append(onnx.helper.make_node("Neg", ["logits_raw"], [out.name]))
    onnx.save(model, str(broken / "model.onnx"))
    from dynalora.edge_runtime.manifest import read_manifest, write_manifest

    write_manifest(broken, dict(read_manifest(broken).raw))  # checksums of the edited file
    with pytest.raises(BenchError, match="same next token as PyTorch fp32 on only"):
        run_bench(broken, None, [1], [2], [16], True, repeats=2, warmup=1)
