"""Tests of DLP-style fusion (fusion/: adapters, model, router, train, evaluate, cli; export/fused.py).

    pytest tests/fusion/test_fusion.py          # CPU, tiny random-init bert / llama runs of 12 steps (~1 min on 2 cores)

Runs are trained once per module and shared; every fusion / export goes to its own tmp folder.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_rows, write_csv

TOPIC_A = "team match season player win sport game".split()
TOPIC_B = "market company bank money price shares profit".split()


def _topic_rows(n: int, seed: int = 1) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(TOPIC_A if i % 2 else TOPIC_B) for _ in range(rng.randint(3, 9))), i % 2)
            for i in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_dirs: dict[str, Path]) -> dict[str, Path]:
    """bert: sentiment (rank 4), topic (rank 2), topic on `query` only; llama: sentiment, topic."""
    from dynalora.core.config import LoRAConfig, TrainConfig
    from dynalora.core.train import train

    root = tmp_path_factory.mktemp("fusion_runs")
    files = {"sent": write_csv(root / "sent.csv", make_rows(96)), "topic": write_csv(root / "topic.csv", _topic_rows(96))}
    specs = {"bert_sent": ("bert", "sent", 4, None), "bert_topic": ("bert", "topic", 2, None),
             "bert_query": ("bert", "topic", 4, ["query"]), "llama_sent": ("llama", "sent", 4, None),
             "llama_topic": ("llama", "topic", 2, None)}
    out = {}
    for key, (arch, task, rank, targets) in specs.items():
        out[key] = root / key
        train(TrainConfig(model=str(tiny_dirs[arch]), task=task, train_file=str(files[task]), out=str(out[key]),
                          steps=12, batch_size=8, progress=False, lora=LoRAConfig(rank=rank, target_modules=targets)))
    return out


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from dynalora.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def fuse_dir(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dynalora.fusion import FuseConfig, RouterConfig, train_fusion

    out = tmp_path_factory.mktemp("fuse") / "bert"
    return train_fusion(FuseConfig(runs=[str(runs["bert_sent"]), str(runs["bert_topic"])], out=str(out),
                                   router=RouterConfig(epochs=20)))


# ---- the stacked layer ------------------------------------------------------------------------------
@pytest.mark.parametrize("conv1d", [False, True])
def test_stacked_layer_equals_per_adapter_sum(conv1d: bool) -> None:
    """One A and one B product == sum_k w_k B_k A_k x, with a different routing for every example."""
    from transformers.pytorch_utils import Conv1D

    from dynalora.fusion.model import FusedLoRALayer, FusionContext

    torch.manual_seed(0)
    base = Conv1D(12, 10) if conv1d else nn.Linear(10, 12)
    ranks = [3, 0, 5]  # heterogeneous, one adapter pruned to rank 0 at this layer
    a = [torch.randn(r, 10) for r in ranks]
    b = [torch.randn(12, r) for r in ranks]
    ctx = FusionContext()
    layer = FusedLoRALayer(base, a, b, ctx)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3], [0.0, 0.0, 0.0]])  # (B=4, K=3)
    for x in (torch.randn(4, 7, 10), torch.randn(4, 10)):  # (B, T, in) and (B, in)
        ctx.weights = w
        stacked = layer(x)
        layer.loop = True
        looped = layer(x)
        layer.loop = False
        want = base(x) + sum(w[:, k].view(-1, *([1] * (x.dim() - 1))) * (x @ a[k].T @ b[k].T) for k in range(3))
        torch.testing.assert_close(stacked, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(looped, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stacked[3], base(x)[3])  # all-zero weights: the base layer
    single = FusedLoRALayer(base, a[2:], b[2:], FusionContext())  # K = 1, no weights: one plain adapter
    x = torch.randn(2, 5, 10)
    torch.testing.assert_close(single(x), base(x) + x @ a[2].T @ b[2].T, atol=1e-5, rtol=1e-5)


# ---- top-p ------------------------------------------------------------------------------------------
def _reference_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.zeros_like(probs)
    for i, row in enumerate(probs):
        order = sorted(range(len(row)), key=lambda k: (-float(row[k]), k))
        kept, mass = [], 0.0
        for k in order:
            if mass >= p:
                break
            kept.append(k)
            mass += float(row[k])
        out[i, kept] = row[kept] / row[kept].sum()
    return out


def test_top_p_properties() -> None:
    from dynalora.fusion.router import dlp_lora_weights, top_p_weights

    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(64, 5, generator=gen), -1)
    probs = torch.cat([probs, torch.full((1, 5), 0.2), torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]])])  # ties
    for p in (0.05, 0.3, 0.6, 0.9, 1.0):
        w = top_p_weights(probs, p)
        torch.testing.assert_close(w, _reference_top_p(probs, p), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(w.sum(-1), torch.ones(len(probs)))
        top = probs.argmax(-1)
        assert bool((w[torch.arange(len(w)), top] > 0).all()), "the top adapter is always kept"
        kept = w > 0
        assert bool(((probs * kept).sum(-1) >= p - 1e-6).all()), "the kept mass reaches p"
        # minimal: dropping the smallest kept adapter falls below p (unless only the top one is kept)
        smallest = torch.where(kept, probs, torch.full_like(probs, 2.0)).min(-1).values
        multi = kept.sum(-1) > 1
        assert bool(((probs * kept).sum(-1)[multi] - smallest[multi] < p).all())
    assert torch.equal(top_p_weights(probs, 1e-9) > 0, torch.nn.functional.one_hot(probs.argmax(-1), 5).bool())
    # DLP-LoRA's second softmax keeps the same set but flattens the weights towards uniform
    two = torch.tensor([[0.9, 0.1]])
    torch.testing.assert_close(top_p_weights(two, 1.0), two)
    assert float(dlp_lora_weights(two, 1.0)[0, 0]) < 0.7


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_bad_p_refused(p: float) -> None:
    from dynalora.errors import ConfigError
    from dynalora.fusion.config import check_p

    with pytest.raises(ConfigError, match="top-p must be in"):
        check_p(p)


def test_router_trains_on_tiny_data() -> None:
    from dynalora.fusion import RouterConfig, train_router

    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(3, 16, generator=gen)
    labels = torch.arange(3).repeat_interleave(40)
    feats = centers[labels] + 0.5 * torch.randn(120, 16, generator=gen)
    router, losses = train_router(feats, labels, 3, RouterConfig(hidden=32, epochs=15, batch_size=16))
    assert losses[-1] < losses[0]
    assert float((router(feats).argmax(-1) == labels).float().mean()) == 1.0
    assert sum(p.numel() for p in router.parameters()) < 5_000_000


# ---- fusion folder, load_fusion, oracle equivalence ---------------------------------------------------
def _batch(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))


def test_fusion_oracle_equals_each_run_and_mixed_batch_equals_loop(fuse_dir: Path, runs: dict[str, Path]) -> None:
    import dynalora
    from dynalora.core.run_io import load_run

    fusion = dynalora.load_fusion(fuse_dir)
    model, tok = fusion.model, fusion.tokenizer
    assert fusion.config["tasks"][0]["name"] == "sent" and model.task_names == ["sent", "topic"]
    texts = ["good great movie", "team match season win", "bank profit shares", "awful boring plot film"]
    enc = _batch(tok, texts)
    with torch.no_grad():
        for k, key in enumerate(("bert_sent", "bert_topic")):
            want = load_run(runs[key]).model(**enc).logits
            onehot = torch.nn.functional.one_hot(torch.full((len(texts),), k), 2).float()
            got = model.task_logits(model(**enc, fusion_weights=onehot), k)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.6, 0.4]])  # a different routing per example
        stacked = model(**enc, fusion_weights=mixed).all_logits
        model.set_loop(True)
        looped = model(**enc, fusion_weights=mixed).all_logits
        model.set_loop(False)
        torch.testing.assert_close(stacked, looped, atol=1e-5, rtol=1e-5)
        routed = model(**enc)
    torch.testing.assert_close(routed.fusion_weights.sum(-1), torch.ones(len(texts)))
    top1 = routed.router_probs.argmax(-1)
    for i, t in enumerate(top1.tolist()):  # `logits` answers with the top-1 task's head only
        lo, hi = model.label_slices[t]
        assert int(routed.logits[i].argmax()) in range(lo, hi)


def test_fusion_llama_oracle(runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.fusion import FuseConfig, RouterConfig, load_fusion, train_fusion
    from dynalora.core.run_io import load_run

    out = train_fusion(FuseConfig(runs=[str(runs["llama_sent"]), str(runs["llama_topic"])], out=str(tmp_path / "f"),
                                  router=RouterConfig(epochs=2)))
    fusion = load_fusion(out)
    enc = _batch(fusion.tokenizer, ["good great movie", "team match season win the"])
    enc.pop("token_type_ids", None)
    with torch.no_grad():
        want = load_run(runs["llama_topic"]).model(**enc).logits
        got = fusion.model.task_logits(fusion.model(**enc, fusion_weights=torch.tensor([[0.0, 1.0]] * 2)), 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fuse_cli_train_with_multitask_then_eval(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    fuse = tmp_path / "fuse"
    code, out, err = _cli(["fuse", "train", "--runs", str(runs["bert_sent"]), str(runs["bert_topic"]), "--out", str(fuse),
                           "--router-epochs", "3", "--multitask-steps", "4"], capsys)
    assert code == 0, err
    assert "held-out task accuracy" in out and (fuse / "multitask" / "run.json").is_file()
    code, out, err = _cli(["fuse", "eval", str(fuse), "--max-eval", "16", "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0, err
    assert "| sent |" in out and "oracle" in out and "multitask" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result) == {"sent", "topic", "mean"} and 0.0 <= result["sent"]["multitask"] <= 1.0
    before = (tmp_path / "e.json").read_bytes()  # an existing results file is not overwritten without --overwrite
    code, out, err = _cli(["fuse", "eval", str(fuse), "--max-eval", "4", "--json", str(tmp_path / "e.json")], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "e.json").read_bytes() == before


# ---- export + edge runtime -----------------------------------------------------------------------------
def test_export_fused_parity_edge_and_bench(fuse_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dynalora.fusion import load_fusion
    from dynalora.edge_runtime import load
    from dynalora.edge_runtime.bench import run_bench

    out = tmp_path / "exp"
    code, printed, err = _cli(["export", "fused", "--fuse", str(fuse_dir), "--out", str(out), "--target", "android"],
                              capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "fused" and manifest["verification"]["max_abs_diff"] <= 1e-4
    assert "mobile package (android)" in printed and "mobile/model.fixed.ort" in manifest["files"]
    assert len(manifest["verification"]["mixed_tasks"]["tasks_routed"]) >= 1
    predictor = load(out, provider="cpu", threads=1)
    texts = ["good great movie", "team match season win", "bank profit shares price", "awful dull film"]
    got = predictor.predict(texts)
    assert all(label.split(":")[0] in ("sent", "topic") for label in got["labels"])
    # onnxruntime vs PyTorch on a mixed batch, with another batch size and length than the export's samples
    fusion = load_fusion(fuse_dir)
    enc = fusion.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = fusion.model(**dict(enc))
    raw = predictor.run_raw({k: v.numpy() for k, v in enc.items()})
    for name, value in zip(predictor.output_names, raw, strict=True):
        np.testing.assert_allclose(value, getattr(want, name).numpy(), atol=1e-4)
    result = run_bench(out, ["cpu"], threads=[1], batches=[1], seqs=[16], repeats=2, warmup=0, progress=False)
    assert result["records"][0]["kind"] == "fused"
    # the mobile package's graphs (router, top-p and every head in one graph) route and score like model.onnx
    for variant in ("ort", "fixed-ort"):
        mobile = load(out, threads=1, variant=variant).predict(texts)
        np.testing.assert_allclose(mobile["logits"], got["logits"], atol=1e-4)
        assert mobile["labels"] == got["labels"]


# ---- bad input: one line, exit code 2, nothing written -------------------------------------------------------
def _copy_run(src: Path, dst: Path, task: str | None = None, train_file: Path | None = None) -> Path:
    shutil.copytree(src, dst)
    if task is not None:
        info = json.loads((dst / "run.json").read_text())
        info["task"]["name"] = task
        (dst / "run.json").write_text(json.dumps(info))
    if train_file is not None:
        cfg = (dst / "config.yaml").read_text()
        old = next(line for line in cfg.splitlines() if line.startswith("train_file:"))
        (dst / "config.yaml").write_text(cfg.replace(old, f"train_file: {train_file}"))
    return dst


@pytest.mark.parametrize("case", ["base", "targets", "p_zero", "p_big", "empty_task", "unknown_task", "one_run"])
def test_bad_input(case: str, runs: dict[str, Path], fuse_dir: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    pair = [str(runs["bert_sent"]), str(runs["bert_topic"])]
    extra: list[str] = []
    if case == "base":
        pair = [str(runs["bert_sent"]), str(runs["llama_topic"])]
        expect = "different base models"
    elif case == "targets":
        pair = [str(runs["bert_sent"]), str(runs["bert_query"])]
        expect = "different target modules"
    elif case in ("p_zero", "p_big"):
        extra, expect = ["--top-p", "0" if case == "p_zero" else "1.5"], "top-p must be in (0, 1]"
    elif case == "empty_task":
        empty = tmp_path / "empty.csv"
        empty.write_text("text,label\n")
        pair[1] = str(_copy_run(runs["bert_topic"], tmp_path / "empty_run", train_file=empty))
        expect = "holds no examples"
    elif case == "unknown_task":
        pair[1] = str(_copy_run(runs["bert_topic"], tmp_path / "other_run", task="other"))
        extra, expect = ["--router-from", str(fuse_dir)], "not 'other'"
    else:
        pair, expect = pair[:1], "at least 2 task adapters"
    code, _, err = _cli(["fuse", "train", "--runs", *pair, "--out", str(out), *extra], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dynalora: error:") and expect in lines[0], err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_router_refuses_weights_for_unknown_adapters(fuse_dir: Path) -> None:
    from dynalora.fusion import FusionError
    from dynalora.fusion import load_fusion

    fusion = load_fusion(fuse_dir)
    enc = _batch(fusion.tokenizer, ["good movie"])
    with pytest.raises(FusionError, match="routes only to the adapters it was trained with"):
        fusion.model(**enc, fusion_weights=torch.ones(1, 3) / 3)


def test_router_from_reuses_and_reorders(fuse_dir: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.fusion import FuseConfig, load_fusion, train_fusion

    out = train_fusion(FuseConfig(runs=[str(runs["bert_topic"]), str(runs["bert_sent"])], out=str(tmp_path / "r"),
                                  router_from=str(fuse_dir)))
    a, b = load_fusion(fuse_dir), load_fusion(out)
    enc = _batch(a.tokenizer, ["good great movie", "team match season"])
    with torch.no_grad():
        torch.testing.assert_close(a.model(**enc).router_probs, b.model(**enc).router_probs.flip(-1))
