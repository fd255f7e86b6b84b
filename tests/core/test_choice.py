"""Multiple choice scored by a causal LM's option log-likelihood (core/choice.py, core/bigbench.py).

Run: .venv/bin/python -m pytest tests/core/test_choice.py -q
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from dynalora.core.choice import MISSING, ChoiceScorer, encode_choices, prompt_text
from dynalora.core.data import MULTIPLE_CHOICE, Example, TaskSpec, for_objective, load_task
from dynalora.errors import ConfigError, DataError
from dynalora.core.models import load_tokenizer

from tiny_data import COLORS, WORDS, write_choice_file


@pytest.fixture(scope="module")
def choice_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("choice")
    return {"words": write_choice_file(root / "words.jsonl", WORDS, 120, 0, "the answer is"),
            "colors": write_choice_file(root / "colors.jsonl", COLORS, 120, 1, "which color")}


SPEC = TaskSpec("toy", MULTIPLE_CHOICE, (), False, num_choices=3, prompt=("Q: ", "\nA:"))


def _brute_force(lm: torch.nn.Module, tok, spec: TaskSpec, example: Example) -> list[float]:
    """Mean option log-likelihood from full LM logits, one (prompt, option) at a time, no padding."""
    out = []
    prompt = tok(prompt_text(spec, example), add_special_tokens=True)["input_ids"]
    for option in example.choices:
        opt = tok(" " + option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + opt])
        logp = F.log_softmax(lm(input_ids=ids).logits[0, :-1], -1)
        picked = logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]]
        out.append(float(picked.mean().detach()))
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_scores_equal_brute_force_option_loglikelihood(tiny_dirs: dict[str, Path], arch: str) -> None:
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    tok = load_tokenizer(str(tiny_dirs[arch]))
    examples = [Example("is it good", None, 0, ("good", "bad")),
                Example("pick the longest movie story", "second text", 2, ("film", "sad", "the very long story plot"))]
    batch = encode_choices(tok, SPEC, examples, max_length=64)
    assert batch["input_ids"].shape[0] == 5  # rows only for options that exist: 2 + 3
    with torch.no_grad():
        out = ChoiceScorer(lm)(**batch)
    assert out.logits.shape == (2, 3)
    assert float(out.logits[0, 2]) == MISSING  # the first example has no third option
    for b, e in enumerate(examples):
        want = _brute_force(lm, tok, SPEC, e)
        assert out.logits[b, : len(want)].tolist() == pytest.approx(want, abs=1e-5)
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(out.logits, batch["labels"])))


def test_truncation_keeps_the_option_whole(tiny_dirs: dict[str, Path]) -> None:
    tok = load_tokenizer(str(tiny_dirs["llama"]))
    long = Example(" ".join(["movie"] * 50), None, 0, ("good film", "bad"))
    batch = encode_choices(tok, SPEC, [long], max_length=12)
    assert batch["input_ids"].shape[1] <= 12
    opt = tok(" good film", add_special_tokens=False)["input_ids"]
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert row[-len(opt):].tolist() == opt  # the option's tokens end the row, untouched
    assert int(batch["target_mask"][0].sum()) == len(opt)


def test_choice_files_and_labels(tmp_path: Path) -> None:
    path = write_choice_file(tmp_path / "t.jsonl", WORDS, 30, 0, "q")
    data = load_task(None, train_file=str(path), eval_size=6)
    assert data.spec.problem == MULTIPLE_CHOICE and data.spec.num_choices == 4
    for e in data.train + data.eval:
        assert e.choices and 0 <= e.label < len(e.choices) and e.choices[e.label] in e.text
    bad = tmp_path / "bad.jsonl"
    for row, msg in [({"text": "q", "choices": ["a"], "label": 0}, "at least 2"),
                     ({"text": "q", "choices": ["a", "a"], "label": 0}, "same option twice"),
                     ({"text": "q", "choices": ["a", "b"], "label": 5}, "neither an index"),
                     ({"text": "q", "choices": ["a", "b"], "label": "c"}, "neither an index")]:
        bad.write_text(json.dumps(row) + "\n" + json.dumps({"text": "r", "choices": ["a", "b"], "label": 0}) + "\n")
        with pytest.raises(DataError, match=msg):
            load_task(None, train_file=str(bad), eval_size=1)


def test_objective_conversion() -> None:
    from dynalora.core.data import TaskData

    spec = TaskSpec("yn", "classification", ("No", "Yes"), False, prompt=("Q: ", "\nA:"))
    data = TaskData(spec, [Example("is it", None, 1)], [Example("is not", None, 0)], "toy")
    assert for_objective(data, "auto") is data and for_objective(data, "classifier") is data
    mc = for_objective(data, "choice")
    assert mc.spec.problem == MULTIPLE_CHOICE and mc.spec.num_choices == 2 and mc.spec.prompt == ("Q: ", "\nA:")
    assert mc.train[0] == Example("is it", None, 1, ("No", "Yes"))
    with pytest.raises(ConfigError, match="--objective choice"):
        for_objective(mc, "classifier")
    with pytest.raises(ConfigError, match="objective"):
        for_objective(data, "ranking")


def _bigbench(root: Path, name: str, task: dict) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "task.json").write_text(json.dumps(task), encoding="utf-8")
    return root


def test_bigbench_multiple_choice_and_subtasks(tmp_path: Path) -> None:
    rng = random.Random(0)
    examples = []
    for i in range(20):
        ch = rng.sample(WORDS, 3)
        examples.append({"input": f"q{i}", "target_scores": {c: int(k == i % 3) for k, c in enumerate(ch)}})
    root = _bigbench(tmp_path, "mc", {"examples": examples, "task_prefix": "Answer.\n", "example_output_prefix": "\nAnswer: "})
    data = load_task("bigbench:mc", data_dir=str(root), eval_size=5)
    assert data.spec.problem == MULTIPLE_CHOICE and data.spec.num_choices == 3
    assert data.spec.prompt == ("Answer.\n\nQ: ", "\nAnswer:")
    by_text = {e.text: e for e in data.train + data.eval}
    assert by_text["q4"].choices == tuple(examples[4]["target_scores"]) and by_text["q4"].label == 1
    with pytest.raises(ConfigError, match="--objective choice"):
        for_objective(data, "classifier")
    # a parent folder whose task.json has no examples is the union of its subtasks
    _bigbench(root, "parent", {"name": "parent", "description": "subtasks"})
    _bigbench(root / "parent", "one", {"examples": examples[:10]})
    _bigbench(root / "parent", "two", {"examples": examples[10:]})
    union = load_task("bigbench:parent", data_dir=str(root), eval_size=5)
    assert len(union.train) + len(union.eval) == 20
    assert len(load_task("bigbench:parent/two", data_dir=str(root), eval_size=2).train) == 8


def test_cli_train_choice_run_peft_and_load_run(tiny_dirs: dict[str, Path], choice_files: dict[str, Path],
                                                tmp_path: Path) -> None:
    from peft import PeftModel

    from dynalora.cli import main
    from dynalora.core.run_io import load_run

    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_dirs["llama"]), "--train-file", str(choice_files["words"]), "--out",
                 str(out), "--steps", "12", "--batch-size", "8", "--lr", "5e-3", "--no-progress", "--threads", "1"])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["task"]["problem"] == MULTIPLE_CHOICE and info["task"]["name"] == "words"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] == []
    run = load_run(out)
    data = for_objective(load_task(None, train_file=str(choice_files["words"]), seed=0), "auto")
    batch = encode_choices(run.tokenizer, data.spec, data.eval[:6], 64)
    with torch.no_grad():
        ours = ChoiceScorer(run.model)(**batch).logits
        # PEFT applies the saved adapter to the base LM (its lm_head re-created from the same seed)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
        base.lm_head.load_state_dict(run.model.lm_head.state_dict())
        peft = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        theirs = ChoiceScorer(peft.base_model.model)(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    acc = float((ours.argmax(-1) == batch["labels"]).float().mean())
    assert 0.0 <= acc <= 1.0 and info["metrics"]["accuracy"] == pytest.approx(
        float(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["accuracy"]))


def test_encoder_refused_for_choice(tiny_dirs: dict[str, Path], choice_files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from dynalora.cli import main

    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_dirs["bert"]), "--train-file", str(choice_files["words"]), "--out",
                 str(out), "--steps", "2", "--batch-size", "8", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a causal LM" in err[0]
    assert not out.exists()


def test_choice_fusion_export_and_multitask(tiny_dirs: dict[str, Path], choice_files: dict[str, Path],
                                           tmp_path: Path) -> None:
    from dynalora.core.config import TrainConfig
    from dynalora.fusion import FuseConfig, evaluate_fusion, load_fusion, train_fusion
    from dynalora.fusion.train import task_data
    from dynalora.core.run_io import load_run
    from dynalora.core.train import train
    from dynalora.export import ExportError
    from dynalora.export.adapters import export_adapters
    from dynalora.export.fused import export_fused
    from dynalora.export.merged import export_merged

    runs = []
    for name, path in choice_files.items():
        out = tmp_path / name
        train(TrainConfig(model=str(tiny_dirs["llama"]), task=None, train_file=str(path), out=str(out), steps=10,
                          batch_size=8, lr=5e-3, progress=False, threads=1))
        runs.append(out)
    fuse = tmp_path / "fuse"
    train_fusion(FuseConfig(runs=[str(r) for r in runs], out=str(fuse), multitask_steps=6))
    fusion = load_fusion(fuse)
    assert fusion.model.problem == MULTIPLE_CHOICE and (fuse / "multitask" / "run.json").is_file()
    # one-hot weights = the task's own adapter: the same option scores as its run
    data = task_data(fusion.specs[0])
    chunk = data.eval[:5]
    batch = encode_choices(fusion.tokenizer, data.spec, chunk, fusion.max_length)
    route = fusion.tokenizer([e.text for e in chunk], padding=True, return_tensors="pt")
    onehot = torch.tensor([[1.0, 0.0]] * len(chunk))
    with torch.no_grad():
        fused = fusion.model.score_choices(batch, route["input_ids"], route["attention_mask"], onehot).logits
        own = ChoiceScorer(load_run(runs[0]).model)(**batch).logits
        mixed_w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.5, 0.5], [0.0, 0.0]])
        mixed = fusion.model.score_choices(batch, route["input_ids"], route["attention_mask"], mixed_w).logits
        fusion.model.set_loop(True)
        loop = fusion.model.score_choices(batch, route["input_ids"], route["attention_mask"], mixed_w).logits
        fusion.model.set_loop(False)
    assert torch.allclose(fused, own, atol=1e-5)
    assert torch.allclose(mixed, loop, atol=1e-5)  # heterogeneous routing inside one batch == per-adapter loop
    result = evaluate_fusion(fusion, max_eval=None)
    for task in ("words", "colors"):
        assert {"router", "fused", "oracle", "base", "multitask"} <= set(result[task]) and result[task]["n"] == 24
        # the oracle column is the run's own adapter on the run's own evaluation split
        assert result[task]["oracle"] == pytest.approx(json.loads((tmp_path / task / "run.json").read_text())["metrics"]["accuracy"])
    # exports: merged -> a causal-LM ONNX export; adapters (ORT runtime) and export_fused() refuse with a pointer
    manifest = export_merged(runs[0], tmp_path / "exp")
    assert manifest["kind"] == "merged" and manifest["task"]["problem"] == "causal-lm"
    assert manifest["source_task"]["problem"] == MULTIPLE_CHOICE
    with pytest.raises(ExportError, match="export merged"):
        export_adapters([runs[0], runs[1]], tmp_path / "exp2")
    with pytest.raises(ExportError, match="export it with `dynalora export fused"):  # genai_fused.py's path
        export_fused(fuse, tmp_path / "exp3")
    assert not (tmp_path / "exp2").exists() and not (tmp_path / "exp3").exists()
