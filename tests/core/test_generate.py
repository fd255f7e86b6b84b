"""Generative fine-tuning (core/generate.py): response-only loss, greedy decoding, runs, PEFT, fusion, export.

Run: .venv/bin/python -m pytest tests/core/test_generate.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynalora.core.data import Example, TaskSpec, for_objective, load_task
from dynalora.core.generate import (
    IGNORE, PLAIN_PROMPT, GenerationLoss, encode_generation, generate_ids, generate_texts, prompt_ids, render,
)
from dynalora.core.task import GENERATION
from tiny_data import COLORS, WORDS, write_choice_file, write_generation_file

SPEC = TaskSpec("toy", GENERATION, (), False)
TRAIN = ["--steps", "16", "--batch-size", "8", "--lr", "5e-3", "--no-progress", "--threads", "1", "--max-new-tokens", "6",
         "--eval-size", "12"]


@pytest.fixture(scope="module")
def gen_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    return {"repeat": write_generation_file(root / "repeat.jsonl", 96, 0, "repeat"),
            "copy": write_generation_file(root / "copy.jsonl", 96, 1, "copy")}


@pytest.fixture(scope="module")
def gen_runs(tiny_dirs: dict[str, Path], gen_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished generation runs on the tiny Llama (the CLI path), one per task."""
    from dynalora.cli import main

    root = tmp_path_factory.mktemp("gen_runs")
    runs = {}
    for name, path in gen_files.items():
        out = root / name
        assert main(["train", "--model", str(tiny_dirs["llama"]), "--train-file", str(path), "--out", str(out),
                     *TRAIN]) == 0
        runs[name] = out
    return runs


def _tok(tiny_dirs: dict[str, Path]):  # noqa: ANN202
    from dynalora.core.models import load_tokenizer

    return load_tokenizer(str(tiny_dirs["llama"]))


def test_encode_masks_everything_but_the_response(tiny_dirs: dict[str, Path]) -> None:
    tok = _tok(tiny_dirs)
    examples = [Example("repeat : good bad", None, 0, response="good bad"), Example("repeat : red", None, 0, response="red")]
    batch = encode_generation(tok, SPEC, examples, max_length=64)
    for i, e in enumerate(examples):
        prompt, _ = render(tok, SPEC, e)
        assert prompt == PLAIN_PROMPT.format(prompt=e.text)  # no chat template: the documented plain format
        n_prompt = len(prompt_ids(tok, SPEC, e))
        trained = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert (batch["labels"][i, :n_prompt] == IGNORE).all()
        assert tok.decode(trained, skip_special_tokens=True) == e.response
        assert batch["input_ids"][i, n_prompt : n_prompt + len(trained)].tolist() == trained
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE).all()  # padding is not trained on
    # a response that does not fit is cut at max_length; a prompt that leaves no room is refused
    n_prompt = len(prompt_ids(tok, SPEC, examples[0]))
    cut = encode_generation(tok, SPEC, examples[:1], max_length=n_prompt + 1)
    assert cut["input_ids"].shape[1] == n_prompt + 1 and int((cut["labels"] != IGNORE).sum()) == 1
    from dynalora.errors import DataError

    with pytest.raises(DataError, match="no room for the response"):
        encode_generation(tok, SPEC, examples[:1], max_length=n_prompt)


def test_chat_template_response_is_the_templates_assistant_turn(tiny_dirs: dict[str, Path]) -> None:
    tok = _tok(tiny_dirs)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    e = Example("what", None, 0, response="good", history=(("system", "be nice"),))
    prompt, response = render(tok, SPEC, e)
    assert prompt == "<system>be nice</s><user>what</s><assistant>" and response == "good</s>"


def test_loss_is_a_per_sequence_mean_so_micro_batches_add_up(tiny_dirs: dict[str, Path]) -> None:
    """Per-example means averaged over the batch: two halves give the whole batch's loss (DDP / grad-accum exact)."""
    tok = _tok(tiny_dirs)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    examples = [Example(f"repeat : {w}", None, 0, response=" ".join([w] * (1 + i % 3))) for i, w in enumerate(WORDS[:4])]
    loss = GenerationLoss(lm)
    with torch.no_grad():
        whole = loss(**encode_generation(tok, SPEC, examples, 64)).loss
        halves = [loss(**encode_generation(tok, SPEC, examples[k : k + 2], 64)).loss for k in (0, 2)]
        # the same number from the LM's own logits: -mean_b mean_t log p(response token)
        batch = encode_generation(tok, SPEC, examples, 64)
        logp = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        labels = batch["labels"][:, 1:]
        picked = logp[:, :-1].gather(2, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        per_example = (picked * (labels != IGNORE)).sum(1) / (labels != IGNORE).sum(1)
    assert torch.allclose(whole, (halves[0] + halves[1]) / 2, atol=1e-6)
    assert torch.allclose(whole, -per_example.mean(), atol=1e-5)


def test_batched_greedy_with_left_padding_equals_one_by_one(tiny_dirs: dict[str, Path]) -> None:
    tok = _tok(tiny_dirs)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    examples = [Example("repeat : good", None, 0, response="x"), Example("repeat : the very long red blue film", None, 0,
                                                                        response="x")]
    prompts = [prompt_ids(tok, SPEC, e) for e in examples]
    batched = generate_ids(lm, tok, prompts, 8)
    single = [generate_ids(lm, tok, [p], 8)[0] for p in prompts]
    assert batched == single and all(len(r) == 8 for r in batched)  # no eos in a random model's first 8 tokens
    with torch.no_grad():  # greedy = argmax of the full forward, token by token (KV cache changes nothing)
        ids = torch.tensor([prompts[0]])
        want = []
        for _ in range(8):
            nxt = int(lm(input_ids=ids).logits[0, -1].argmax())
            want.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert batched[0] == want
    texts = generate_texts(lm, tok, SPEC, examples, 8, stop=[tok.decode(want[2:3])])
    assert texts[0] == tok.decode(want[:2], skip_special_tokens=True).strip()  # cut before the first stop string


def test_generation_run_peft_round_trip_and_load_run_generate(gen_runs: dict[str, Path], tiny_dirs: dict[str, Path],
                                                             gen_files: dict[str, Path]) -> None:
    from peft import PeftModel

    from dynalora.core.evaluate import evaluate_generation
    from dynalora.core.run_io import load_run

    out = gen_runs["repeat"]
    info = json.loads((out / "run.json").read_text())
    assert info["task"]["problem"] == GENERATION and info["task"]["prompt_format"] == "plain"
    assert info["task"]["max_new_tokens"] == 6
    assert {"exact_match", "rougeL", "bleu", "n"} <= set(info["metrics"]) and info["metrics"]["n"] == 12
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] == []
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]  # the response loss went down

    run = load_run(out)
    data = for_objective(load_task(None, train_file=str(gen_files["repeat"]), seed=0, eval_size=12), "auto")
    batch = encode_generation(run.tokenizer, data.spec, data.eval[:6], 64)
    with torch.no_grad():
        ours = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
        base.lm_head.load_state_dict(run.model.lm_head.state_dict())
        peft = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        theirs = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(ours, theirs) or torch.allclose(ours, theirs, atol=1e-6)
    # the run's model generates with HF generate(); re-evaluating gives the recorded metrics
    again = evaluate_generation(run.model, run.tokenizer, data, 6)
    assert {k: again[k] for k in ("exact_match", "rougeL", "bleu")} == pytest.approx(
        {k: info["metrics"][k] for k in ("exact_match", "rougeL", "bleu")})
    prompt = torch.tensor([prompt_ids(run.tokenizer, data.spec, data.eval[0])])
    hf = run.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    assert hf[0, prompt.shape[1]:].tolist()[:4] == generate_ids(run.model, run.tokenizer, [prompt[0].tolist()], 4)[0][:4]


@pytest.mark.parametrize("case", ["encoder", "per_example", "long_prompt", "no_response"])
def test_generation_bad_input_one_line_exit_2_nothing_written(case: str, tiny_dirs: dict[str, Path],
                                                              gen_files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from dynalora.cli import main

    model, data, extra = str(tiny_dirs["llama"]), gen_files["repeat"], ["--objective", "generate"]
    if case == "encoder":
        model = str(tiny_dirs["bert"])
    elif case == "per_example":
        extra += ["--input-adaptive", "per-example"]
    elif case == "long_prompt":
        extra += ["--max-length", "8"]
    else:
        data = tmp_path / "bad.jsonl"
        data.write_text(json.dumps({"prompt": "hello"}) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--model", model, "--train-file", str(data), "--out", str(out), *TRAIN, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    expected = {"encoder": "not a causal LM", "per_example": "per-example", "long_prompt": "no room for the response",
                "no_response": "response"}[case]
    assert expected in err[0]
    assert not out.exists()


def test_generation_fusion_routes_once_and_matches_each_run(gen_runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.core.run_io import load_run
    from dynalora.fusion import FuseConfig, RouterConfig, evaluate_fusion, load_fusion, train_fusion
    from dynalora.fusion.train import encode_texts, task_data

    fuse = tmp_path / "fuse"
    train_fusion(FuseConfig(runs=[str(gen_runs["repeat"]), str(gen_runs["copy"])], out=str(fuse), multitask_steps=6,
                            router=RouterConfig(epochs=40)))
    fusion = load_fusion(fuse)
    assert fusion.model.problem == GENERATION and fusion.model.causal
    data = task_data(fusion.specs[0])
    chunk = data.eval[:4]
    prompts = [prompt_ids(fusion.tokenizer, data.spec, e) for e in chunk]
    route = encode_texts(fusion.tokenizer, chunk, fusion.max_length)
    onehot = torch.tensor([[1.0, 0.0]] * len(chunk))
    own = load_run(gen_runs["repeat"])
    fused, _ = fusion.model.generate(fusion.tokenizer, prompts, route["input_ids"], route["attention_mask"], onehot,
                                     max_new_tokens=6)
    assert fused == generate_ids(own.model, own.tokenizer, prompts, 6)  # one-hot = the run's own adapter
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.5, 0.5]])
    stacked, _ = fusion.model.generate(fusion.tokenizer, prompts, route["input_ids"], route["attention_mask"], mixed,
                                       max_new_tokens=6)
    fusion.model.set_loop(True)
    loop, _ = fusion.model.generate(fusion.tokenizer, prompts, route["input_ids"], route["attention_mask"], mixed,
                                    max_new_tokens=6)
    fusion.model.set_loop(False)
    assert stacked == loop  # per-row weights held for every generated token == the per-adapter loop
    result = evaluate_fusion(fusion, max_eval=None)
    for task in ("repeat", "copy"):
        r = result[task]
        assert r["metric"] == "rougeL" and r["n"] == 12
        assert {"router", "fused", "oracle", "base", "multitask", "fused_exact_match", "oracle_bleu"} <= set(r)
        # the oracle is the run's own adapter on the run's own evaluation split, decoded the same way
        assert r["oracle"] == pytest.approx(json.loads((gen_runs[task] / "run.json").read_text())["metrics"]["rougeL"])
    assert result["repeat"]["router"] == 1.0 and result["copy"]["router"] == 1.0  # the verbs differ: trivially routed


def test_mixed_generation_and_choice_fusion(gen_runs: dict[str, Path], tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.core.config import TrainConfig
    from dynalora.core.train import train
    from dynalora.fusion import FuseConfig, evaluate_fusion, load_fusion, train_fusion

    mc = tmp_path / "mc"
    train(TrainConfig(model=str(tiny_dirs["llama"]), task=None, out=str(mc), steps=6, batch_size=8, lr=5e-3,
                      progress=False, threads=1, eval_size=12,
                      train_file=str(write_choice_file(tmp_path / "mc.jsonl", COLORS, 96, 2, "which color"))))
    fuse = tmp_path / "fuse"
    train_fusion(FuseConfig(runs=[str(gen_runs["repeat"]), str(mc)], out=str(fuse), multitask_steps=4))
    fusion = load_fusion(fuse)
    assert fusion.model.problem == "mixed"
    result = evaluate_fusion(fusion, max_eval=8)
    assert result["repeat"]["metric"] == "rougeL" and "fused_bleu" in result["repeat"]
    assert "metric" not in result["mc"] and 0.0 <= result["mc"]["oracle"] <= 1.0 and "multitask" in result["mc"]


def test_fusion_refuses_classifier_with_generation(gen_runs: dict[str, Path], tiny_dirs: dict[str, Path],
                                                   csv_data: Path, tmp_path: Path) -> None:
    from dynalora.core.config import TrainConfig
    from dynalora.core.train import train
    from dynalora.fusion import FuseConfig, FusionError, train_fusion

    clf = tmp_path / "clf"
    train(TrainConfig(model=str(tiny_dirs["llama"]), task=None, train_file=str(csv_data), out=str(clf), steps=2,
                      batch_size=8, progress=False, threads=1))
    with pytest.raises(FusionError, match="fuse runs of one kind"):
        train_fusion(FuseConfig(runs=[str(gen_runs["repeat"]), str(clf)], out=str(tmp_path / "f")))
    assert not (tmp_path / "f").exists()


def test_export_merged_generation_run_checks_greedy_tokens(gen_runs: dict[str, Path], tmp_path: Path) -> None:
    from dynalora.edge_runtime import load
    from dynalora.export.merged import export_merged

    manifest = export_merged(gen_runs["repeat"], tmp_path / "exp")
    greedy = manifest["verification"]["greedy"]
    assert greedy["prompts"] == 4 and greedy["identical_sequences"] == 4 and greedy["token_agreement"] == 1.0
    assert manifest["source_task"]["problem"] == GENERATION
    runtime = load(tmp_path / "exp")
    assert runtime.manifest.problem == "causal-lm"


def test_merge_check_of_a_generation_run_catches_a_wrong_merge(gen_runs: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The causal-LM merge check (per position, tolerances.MERGE_ATOL_CAUSAL_LM) passes a right merge and refuses
    one whose low-rank update is scaled wrong."""
    from dynalora.core.layer import DynamicLoRALayer
    from dynalora.core.run_io import load_run
    from dynalora.export.errors import ExportError
    from dynalora.export.merge import merged_model

    run = load_run(gen_runs["repeat"])
    merged_model(run)
    with torch.no_grad():  # make the update large enough to matter, then merge it at twice its scale
        for layer in run.model.modules():
            if isinstance(layer, DynamicLoRALayer):
                layer.lora_B.mul_(50.0)
    right = merged_model(run)
    original = DynamicLoRALayer.delta_weight
    monkeypatch.setattr(DynamicLoRALayer, "delta_weight", lambda self: 2.0 * original(self))
    with pytest.raises(ExportError, match="differs from the adapted model"):
        merged_model(run)
    assert right is not None
