"""End-to-end training on tiny models: CLI outputs, resume equivalence, PEFT round trip, load_run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynalora import load_run
from dynalora.cli import main
from dynalora.core.config import DynamicConfig, LoRAConfig, TrainConfig
from dynalora.core.models import load_classifier
from dynalora.core.train import TrainHooks, train


def _cfg(model: Path, data: Path, out: Path, **kw) -> TrainConfig:
    dyn = kw.pop("dynamic", DynamicConfig())
    return TrainConfig(model=str(model), task=None, train_file=str(data), out=str(out), steps=kw.pop("steps", 24),
                       batch_size=8, lr=1e-2, max_length=24, progress=False, log_every=4,
                       lora=LoRAConfig(rank=4), dynamic=dyn, **kw)


def test_cli_train_writes_every_output(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_dirs["bert"]), "--task", "", "--train-file", str(csv_data), "--out", str(out),
               "--steps", "24", "--batch-size", "8", "--rank", "4", "--max-length", "24", "--no-progress", "--eval-every", "12",
               "--lr", "0.01"])
    assert rc == 0
    for name in ("config.yaml", "run.json", "metrics.jsonl", "allocation.jsonl", "allocation.png", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "tokenizer"):
        assert (out / name).exists(), name
    lines = [json.loads(l) for l in (out / "allocation.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and len(lines) > 3
    for line in lines:
        assert sum(line["ranks"].values()) == 4 * len(line["ranks"])
        assert line["world_size"] == 1 and len(line["worker_digests"]) == 1
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in m and m["step"] == 12 for m in metrics)
    final = metrics[-1]["eval"]
    assert set(final) >= {"accuracy", "f1", "mcc"}
    cfg = (out / "config.yaml").read_text()
    assert "rank: 4" in cfg
    captured = capsys.readouterr()
    printed = captured.out
    assert "note:" not in captured.err  # rank 4 between 1 and 8: the allocation can move
    assert "final rank per layer" in printed and "accuracy" in printed
    n_layers = len(lines[-1]["ranks"])
    assert f"live budget: {4 * n_layers} rank units over {n_layers} layers (average 4.00; target 4 x {n_layers}" in printed
    assert "by module: " in printed and "by depth: " in printed
    png = (out / "allocation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_frozen_allocation_is_named_before_training(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    """Reallocation that can move nothing (floor or cap at the average rank) is said once, before the run."""
    from dynalora.core.config import frozen_allocation

    note = frozen_allocation(LoRAConfig(rank=1), DynamicConfig())
    assert note.startswith("--min-rank 1 equals the average --rank 1") and "lower --min-rank" in note
    assert "raise --max-rank" in frozen_allocation(LoRAConfig(rank=4, max_rank=4), DynamicConfig())
    assert frozen_allocation(LoRAConfig(rank=2, min_rank=2, max_rank=2), DynamicConfig()).startswith(
        "--min-rank 2 and --max-rank 2 equal the average --rank 2")
    for lora, dyn in ((LoRAConfig(rank=1, min_rank=0), DynamicConfig()), (LoRAConfig(rank=8), DynamicConfig()),
                      (LoRAConfig(rank=1), DynamicConfig(budget_start=1.5)),  # pruning from above still moves rank
                      (LoRAConfig(rank=1), DynamicConfig(reallocate=False, input_adaptive="off"))):
        assert frozen_allocation(lora, dyn) is None
    assert "statistics' cost" not in frozen_allocation(LoRAConfig(rank=1), DynamicConfig(input_adaptive="per-example"))
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_dirs["bert"]), "--task", "", "--train-file", str(csv_data), "--out", str(out),
               "--steps", "4", "--batch-size", "8", "--rank", "1", "--max-length", "24", "--no-progress", "--lr", "0.01"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("dynalora: note: --min-rank 1 equals the average --rank 1") == 1


def test_training_fits_a_small_training_set(tiny_dirs, tmp_path) -> None:
    """The loop really optimises: the adapters + head memorise 36 examples (a random tiny body
    cannot generalise, so the real accuracy evidence is benchmarks/train_quality.py)."""
    from conftest import make_rows, write_csv

    data = write_csv(tmp_path / "small.csv", make_rows(40))
    cfg = _cfg(tiny_dirs["bert"], data, tmp_path / "r", steps=60)
    cfg.batch_size, cfg.lr, cfg.warmup_ratio = 16, 3e-2, 0.0
    res = train(cfg)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_yaml_and_flags_fill_the_same_config(tmp_path) -> None:
    from dynalora.cli import build_parser, config_from_args

    y = tmp_path / "c.yaml"
    y.write_text("rank_ignored: 1\n")
    p = build_parser()
    from dynalora.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        config_from_args(p.parse_args(["train", "--config", str(y), "--out", "x"]))
    y.write_text("lr: 0.002\nsteps: 7\nlora:\n  rank: 6\ndynamic:\n  input_adaptive: per-example\n")
    cfg = config_from_args(p.parse_args(["train", "--config", str(y), "--out", "x", "--steps", "9"]))
    assert (cfg.lr, cfg.steps, cfg.lora.rank, cfg.dynamic.input_adaptive) == (0.002, 9, 6, "per-example")


@pytest.mark.parametrize("head_lr", [None, 3e-2])
def test_resume_matches_an_uninterrupted_run(head_lr, tiny_dirs, csv_data, tmp_path) -> None:
    full = train(_cfg(tiny_dirs["bert"], csv_data, tmp_path / "full", steps=30, checkpoint_every=10, head_lr=head_lr))

    class Crash(Exception):
        pass

    def crash(step: int) -> None:
        if step == 17:
            raise Crash

    cfg = _cfg(tiny_dirs["bert"], csv_data, tmp_path / "cut", steps=30, checkpoint_every=10, head_lr=head_lr)
    with pytest.raises(Crash):
        train(cfg, hooks=TrainHooks(on_step=crash))
    assert (tmp_path / "cut" / "checkpoints" / "step-0000010").is_dir()
    (tmp_path / "cut").rename(tmp_path / "moved")  # a moved run folder resumes where it is now
    resumed = train(TrainConfig(out=str(tmp_path / "moved"), resume=True, progress=False))
    (tmp_path / "moved").rename(tmp_path / "cut")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-6)
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    alloc_full = (tmp_path / "full" / "allocation.jsonl").read_text().splitlines()
    alloc_cut = (tmp_path / "cut" / "allocation.jsonl").read_text().splitlines()
    assert [json.loads(l)["ranks"] for l in alloc_full] == [json.loads(l)["ranks"] for l in alloc_cut]


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_peft_round_trip_gives_the_same_logits(arch, tiny_dirs, csv_data, tmp_path) -> None:
    from peft import PeftModel

    out = tmp_path / arch
    train(_cfg(tiny_dirs[arch], csv_data, out, dynamic=DynamicConfig(input_adaptive="off")))
    run = load_run(out)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert len(set(cfg["rank_pattern"].values())) > 1, "expected variable per-layer ranks"
    base = load_classifier(str(tiny_dirs[arch]), 2, "classification", seed=123)  # head comes from the adapter
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    enc = run.tokenizer(["good movie", "bad bad film and a very long boring plot"], padding=True, return_tensors="pt")
    if arch != "bert":
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        ours = run.model(**enc).logits
        theirs = peft_model(**enc).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_peft_round_trip_with_layers_switched_off(tiny_dirs, csv_data, tmp_path) -> None:
    """--min-rank 0: a layer at rank 0 is left out of the PEFT adapter (not saved as r=0), and PEFT still gives the
    same logits as dynalora."""
    from peft import PeftModel

    out = tmp_path / "r0"
    cfg = _cfg(tiny_dirs["bert"], csv_data, out, dynamic=DynamicConfig(input_adaptive="off"))
    cfg.lora = LoRAConfig(rank=4, min_rank=0, max_rank=16)
    train(cfg)
    dyn = json.loads((out / "adapter" / "dynalora.json").read_text())
    off = [n for n, r in dyn["ranks"].items() if r == 0]
    assert off, f"expected a switched-off layer: {dyn['ranks']}"
    pcfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert not set(off) & set(pcfg["target_modules"]) and 0 not in pcfg["rank_pattern"].values()
    run = load_run(out)
    base = load_classifier(str(tiny_dirs["bert"]), 2, "classification", seed=123)
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    enc = run.tokenizer(["good movie", "bad bad film and a very long boring plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(run.model(**enc).logits, peft_model(**enc).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["layer", "per-example", "off"])
def test_load_run_restores_the_trained_model_exactly(mode, tiny_dirs, csv_data, tmp_path) -> None:
    holder = {}

    def keep(model):
        holder["model"] = model
        return model

    res = train(_cfg(tiny_dirs["bert"], csv_data, tmp_path / mode, dynamic=DynamicConfig(input_adaptive=mode)),
                hooks=TrainHooks(wrap_model=keep))
    trained = holder["model"].eval()
    run = load_run(tmp_path / mode)
    assert run.mode == mode
    enc = run.tokenizer(["good great", "the the the bad awful movie was dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(run.model(**enc).logits, trained(**enc).logits, atol=1e-5, rtol=1e-5)
    assert {n: l.rank for n, l in run.layers.items()} == res.ranks


def test_gradient_accumulation_matches_one_big_batch(tiny_dirs, csv_data, tmp_path) -> None:
    """Same global batch: 1 x 8 and 2 x 4 micro-batches give the same losses and allocations
    (base-model dropout off: dropout masks depend on the micro-batch shapes)."""
    import shutil

    model = tmp_path / "nodrop"
    shutil.copytree(tiny_dirs["bert"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    one = train(_cfg(model, csv_data, tmp_path / "one", steps=20))
    two = train(_cfg(model, csv_data, tmp_path / "two", steps=20, grad_accum=2))
    assert two.losses == pytest.approx(one.losses, rel=1e-4, abs=1e-5)
    assert one.ranks == two.ranks


def test_regression_task_trains_and_reports_correlations(tiny_dirs, tmp_path) -> None:
    from conftest import make_rows

    rows = make_rows(120, seed=1)
    path = tmp_path / "reg.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": float(l) * 4.0 + 0.5}) + "\n" for t, l in rows))
    res = train(_cfg(tiny_dirs["bert"], path, tmp_path / "reg", steps=12))
    assert set(res.metrics) >= {"pearson", "spearman"}
    info = json.loads((tmp_path / "reg" / "run.json").read_text())
    assert info["task"]["problem"] == "regression"
    run = load_run(tmp_path / "reg")
    assert run.model.config.num_labels == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_matches_the_allocation_rules(tiny_dirs, csv_data, tmp_path) -> None:
    res = train(_cfg(tiny_dirs["bert"], csv_data, tmp_path / "gpu", device="cuda"))
    assert sum(res.ranks.values()) == 4 * len(res.ranks)
    run = load_run(tmp_path / "gpu")
    assert run.model(**run.tokenizer(["good"], return_tensors="pt")).logits.shape == (1, 2)


def test_cuda_request_without_gpu_is_a_clear_error(tiny_dirs, csv_data, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from dynalora.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA device"):
        train(_cfg(tiny_dirs["bert"], csv_data, tmp_path / "nogpu", device="cuda"))
    assert not (tmp_path / "nogpu").exists()


def _head(adapter: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if ".classifier." in k}


def test_head_lr_trains_the_head_at_its_own_rate(tiny_dirs, csv_data, tmp_path) -> None:
    """--head-lr puts the task head in its own parameter group: at a vanishing rate the head stays at its
    initial values while the adapters train at --lr; without it the head moves at --lr."""
    init = {n: p.detach().clone() for n, p in
            load_classifier(str(tiny_dirs["bert"]), 2, "classification", seed=0).classifier.named_parameters()}
    moved = {}
    for name, head_lr in (("slow", 1e-12), ("same", None)):
        res = train(_cfg(tiny_dirs["bert"], csv_data, tmp_path / name, steps=12, head_lr=head_lr))
        head = _head(res.out / "adapter")
        assert len(head) == len(init)
        moved[name] = max(float((v - init[k.rsplit(".", 1)[-1]]).abs().max()) for k, v in head.items())
        lora_b = [v for k, v in load_file(str(res.out / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
        assert lora_b and max(float(v.abs().max()) for v in lora_b) > 1e-4  # the adapters trained either way
    assert moved["slow"] < 1e-8 < 1e-3 < moved["same"]


def test_head_lr_makes_a_second_parameter_group_that_follows_the_schedule(tiny_dirs) -> None:
    from dynalora.core.build import build_optimizer

    model = load_classifier(str(tiny_dirs["bert"]), 2, "classification", seed=0)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("classifier.") or n.endswith("attention.self.query.weight"))
    cfg = TrainConfig(model=str(tiny_dirs["bert"]), lr=1e-3, head_lr=2e-2, warmup_ratio=0.0)
    opt, sched, names = build_optimizer(model, cfg, steps=10)
    head = {id(p) for n, p in model.named_parameters() if n.startswith("classifier.")}
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 2e-2]
    assert {id(p) for p in opt.param_groups[1]["params"]} == head
    assert head.isdisjoint(id(p) for p in opt.param_groups[0]["params"]) and opt.param_groups[0]["params"]
    assert len(names) == sum(len(g["params"]) for g in opt.param_groups)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 1e-2])  # linear decay, halfway


def test_head_lr_without_a_task_head_is_a_clear_error() -> None:
    from dynalora.core.build import build_optimizer
    from dynalora.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))  # a causal LM scored by likelihood has no head either
    with pytest.raises(ConfigError, match="--head-lr needs a task head"):
        build_optimizer(model, TrainConfig(lr=1e-3, head_lr=1e-2), steps=4)
