"""onnxruntime-genai export folders (dynalora.export.genai) on a tiny random-init Llama.

fp32 / int8 / int4 folders built by onnxruntime-genai's model builder load with og.Model and decode greedily
with og.Generator (fp32: the same tokens as HF transformers); a LoRA folder switches two PEFT adapters of
different ranks at run time, through genai and through plain onnxruntime, and matches PeftModel.
Each build runs the builder in a child process (~5-10 s); folders are shared per module.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

og = pytest.importorskip("onnxruntime_genai",
                         reason="onnxruntime-genai is not installed (pip install onnxruntime-genai)")

from dynalora.edge_runtime.predictor import RuntimeLoadError  # noqa: E402
from dynalora.export.errors import ExportError  # noqa: E402
from dynalora.export.genai import (  # noqa: E402
    GenaiModel,
    build_genai_adapters,
    build_genai_folder,
    check_adapter_file,
    genai_greedy,
    ort_prefill_logits,
    tokenizer_status,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import _WORDS, tiny_tokenizer_dir  # noqa: E402

PROMPTS = [[2, 50, 60, 70], [2, 100, 7]]
NEW = 10
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0..3 = pad / unk / bos / eos of the tiny config


def _bpe_tokenizer(folder: Path) -> None:
    """A 1000-token byte-level BPE (GPT-2 style) tokenizer: genai's tokenizer reads it, not WordPiece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    tok.train_from_iterator([" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "GPT2Tokenizer"  # a class genai's tokenizer knows (it dispatches on this name)
    cfg_file.write_text(json.dumps(cfg, indent=1))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return genai_llama(tmp_path_factory.mktemp("genai") / "llama")


def genai_llama(folder: Path) -> Path:
    """A tiny random-init Llama with a byte-level BPE tokenizer: both genai's builder and tokenizer read it."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    # head_dim 16: hidden 64 / 4 heads (GQA with 2 key/value heads)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=1000, max_position_embeddings=128, bos_token_id=2,
                      eos_token_id=3, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    _bpe_tokenizer(folder)
    return folder


def _hf_greedy(model: torch.nn.Module, prompt: list[int], new: int, **kw: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]),
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=new, pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def hf_model(llama_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval()


@pytest.fixture(scope="module")
def fp32(llama_dir: Path) -> tuple[Path, dict]:
    out = llama_dir.parent / "fp32"
    return out, build_genai_folder(llama_dir, out, "fp32")


def test_fp32_folder_matches_hf_greedy(fp32: tuple[Path, dict], hf_model: torch.nn.Module) -> None:
    folder, info = fp32
    files = {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "genai_export.json"}
    assert files <= set(info["files"])
    assert info["precision"] == "fp32" and info["builder"].startswith("onnxruntime-genai 0.")
    assert info["inputs"][:2] == ["input_ids", "attention_mask"] and "past_key_values.0.key" in info["inputs"]
    assert info["outputs"][0] == "logits" and "MatMulNBits" not in info["ops"]
    assert info["ops"]["GroupQueryAttention"] == 2 and info["lora_inputs"] == {}
    assert info["verification"]["max_abs_logit_diff"] <= 1e-3
    assert json.loads((folder / "genai_export.json").read_text())["precision"] == "fp32"
    for prompt in PROMPTS:
        assert genai_greedy(folder, prompt, NEW) == _hf_greedy(hf_model, prompt, NEW)


def test_genai_tokenizer_reads_bpe_not_wordpiece(fp32: tuple[Path, dict], llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder, info = fp32
    assert info["tokenizer"] == "ok"
    tok = og.Tokenizer(og.Model(str(folder)))
    hf_tok = AutoTokenizer.from_pretrained(llama_dir)
    for text in ["the movie was good", "Hello, world! 123"]:
        ids = [int(t) for t in tok.encode(text)]
        assert ids == hf_tok(text).input_ids
        assert tok.decode(ids) == text
    # The WordPiece tokenizer of tests/tiny_models.py: genai loads the model but not the tokenizer.
    wp = tmp_path / "wp"
    shutil.copytree(folder, wp, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*", "special*"))
    for f in tiny_tokenizer_dir(tmp_path, token_type_ids=False).iterdir():
        shutil.copy(f, wp / f.name)
    with pytest.raises(RuntimeError, match="Unsupported tokenizer class: BertTokenizer"):
        og.Tokenizer(og.Model(str(wp)))


def test_tokenizer_that_genai_misreads_is_reported(fp32: tuple[Path, dict], tmp_path: Path) -> None:
    # The decoder a GGUF -> HF conversion writes for byte-level BPE (SmolLM2 in ~/.cache/dynalora): genai takes
    # Replace('▁', ' ') for SentencePiece and encodes every space to id -1; the tokenizers library does not care.
    folder = tmp_path / "gguf_style"
    shutil.copytree(fp32[0], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    assert tokenizer_status(fp32[0]) == "ok"
    status = tokenizer_status(folder)
    assert status.startswith("mismatch: og.Tokenizer encodes 'The movie was good, 123!' as [") and "-1" in status


def test_greedy_stops_at_eos_like_hf(fp32: tuple[Path, dict], hf_model: torch.nn.Module, tmp_path: Path) -> None:
    folder, _ = fp32
    prompt = PROMPTS[0]
    free = genai_greedy(folder, prompt, NEW)
    eos = free[2]  # make the 3rd greedy token the end of sequence
    copy = tmp_path / "eos"
    shutil.copytree(folder, copy)
    cfg = json.loads((copy / "genai_config.json").read_text())
    cfg["model"]["eos_token_id"] = eos
    (copy / "genai_config.json").write_text(json.dumps(cfg))
    got = genai_greedy(copy, prompt, NEW)
    assert got == free[:3] == _hf_greedy(hf_model, prompt, NEW, eos_token_id=eos)


@pytest.mark.parametrize("precision,bits", [("int4", 4), ("int8", 8)])
def test_quantized_folder_builds_loads_generates(precision: str, bits: int, llama_dir: Path,
                                                 fp32: tuple[Path, dict], record_property) -> None:
    out = llama_dir.parent / precision
    info = build_genai_folder(llama_dir, out, precision)
    # 2 layers x (qkv, o, gate, up, down) + lm_head, all block-wise weight-only
    assert info["ops"]["MatMulNBits"] == 11 and "MatMul" not in info["ops"]
    assert info["matmul_nbits"] == [{"bits": bits, "block_size": 32, "accuracy_level": 4}]
    assert info["verification"]["bound"] is None
    agree = []
    for prompt in PROMPTS:
        got = genai_greedy(out, prompt, NEW)
        ref = genai_greedy(fp32[0], prompt, NEW)
        assert len(got) == NEW and all(0 <= t < 1000 for t in got)
        agree.append(float(np.mean(np.equal(got, ref))))
    record_property(f"{precision}_token_agreement_vs_fp32", agree)
    record_property(f"{precision}_max_abs_logit_diff", info["verification"]["max_abs_logit_diff"])


def test_refusals(llama_dir: Path, fp32: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="precision 'fp16' is not one of fp32, int8, int4"):
        build_genai_folder(llama_dir, tmp_path / "x", "fp16")
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        build_genai_folder(llama_dir, fp32[0], "fp32")
    with pytest.raises(ExportError, match="no config.json"):
        build_genai_folder(tmp_path, tmp_path / "y", "fp32")
    with pytest.raises(RuntimeLoadError, match="exceeds the model's context_length 128"):
        genai_greedy(fp32[0], PROMPTS[0], 200)
    with pytest.raises(RuntimeLoadError, match="built without LoRA inputs"):
        GenaiModel(fp32[0]).load_adapter("a", fp32[0] / "genai_export.json")
    assert not (tmp_path / "x").exists()


def test_builder_failure_is_one_export_error(llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=1000)).save_pretrained(gpt2)
    for f in llama_dir.glob("*token*"):
        shutil.copy(f, gpt2 / f.name)
    with pytest.raises(ExportError, match=r"the genai model builder failed on .*gpt2 \(fp32\): NotImplementedError: "
                                          r"The .*gpt2 model is not currently supported") as exc:
        build_genai_folder(gpt2, tmp_path / "out", "fp32")
    assert "\n" not in str(exc.value) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ adapters


def _peft_adapter(llama_dir: Path, out: Path, r: int, seed: int, **kw: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                      **kw))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # random non-zero A and B (PEFT initialises B to zero)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def peft_dirs(llama_dir: Path) -> dict[str, Path]:
    root = llama_dir.parent
    return {"a": _peft_adapter(llama_dir, root / "peft_a", 4, 1), "b": _peft_adapter(llama_dir, root / "peft_b", 2, 2)}


@pytest.fixture(scope="module")
def lora(llama_dir: Path, peft_dirs: dict[str, Path]) -> tuple[Path, dict]:
    out = llama_dir.parent / "lora"
    return out, build_genai_adapters(llama_dir, peft_dirs, out, "fp32")


def _peft_model(llama_dir: Path, adapter: Path) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), str(adapter)).eval()


def test_adapters_folder_switches_like_peft(lora: tuple[Path, dict], llama_dir: Path, peft_dirs: dict[str, Path],
                                           hf_model: torch.nn.Module) -> None:
    folder, info = lora
    assert {"model.onnx", "genai_config.json", "adapters/a.onnx_adapter", "adapters/b.onnx_adapter"} <= set(
        info["files"])
    # one shape per projection: the largest rank (b's rank 2 is zero-padded to 4)
    assert info["lora_inputs"]["model.layers.0.attn.q_proj.lora_A.MatMul.weight"] == [64, 4]
    assert info["lora_inputs"]["model.layers.1.attn.v_proj.lora_B.MatMul.weight"] == [4, 32]
    assert len(info["lora_inputs"]) == 8 and info["adapters"]["b"]["ranks"]["model.layers.0.self_attn.q_proj"] == 2
    assert all(v["max_abs_logit_diff"] <= 1e-3 for v in info["verification"]["adapters"].values())
    expected = {name: [_hf_greedy(_peft_model(llama_dir, d), p, NEW) for p in PROMPTS] for name, d in peft_dirs.items()}
    expected[None] = [_hf_greedy(hf_model, p, NEW) for p in PROMPTS]
    assert expected["a"] != expected["b"] != expected[None]
    model = GenaiModel(folder)  # one og.Model: the base decoder is loaded once
    model.load_adapter("a")
    model.load_adapter("b")
    for name in ["a", "b", None, "a"]:
        assert [model.greedy(p, NEW, adapter=name) for p in PROMPTS] == expected[name], name
    assert genai_greedy(folder, PROMPTS[0], NEW, adapter=(folder / "adapters/b.onnx_adapter", "b")) == expected["b"][0]


def test_adapters_through_plain_onnxruntime(lora: tuple[Path, dict], llama_dir: Path, peft_dirs: dict[str, Path],
                                           hf_model: torch.nn.Module) -> None:
    folder, _ = lora
    ids = [2, 11, 12, 13, 14]
    with torch.no_grad():
        base_ref = hf_model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ort_prefill_logits(folder, ids) - base_ref).max() <= 1e-3
    for name, d in peft_dirs.items():
        with torch.no_grad():
            ref = _peft_model(llama_dir, d)(input_ids=torch.tensor([ids])).logits[0].numpy()
        got = ort_prefill_logits(folder, ids, adapter=folder / f"adapters/{name}.onnx_adapter")
        assert np.abs(got - ref).max() <= 1e-3


def test_corrupt_adapter_is_refused_in_one_line(lora: tuple[Path, dict], tmp_path: Path) -> None:
    import onnxruntime as ort

    folder, _ = lora
    good = (folder / "adapters/a.onnx_adapter").read_bytes()
    (tmp_path / "trunc.onnx_adapter").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.onnx_adapter").write_bytes(b"not an adapter" * 20)
    model = GenaiModel(folder)
    for bad, why in [("trunc", "fails lora adapter format verification"),
                     ("junk", "does not appear to be a valid lora parameter format")]:
        with pytest.raises(RuntimeLoadError, match=f"is not a valid .onnx_adapter file: The buffer {why}") as exc:
            model.load_adapter(bad, tmp_path / f"{bad}.onnx_adapter")
        assert "\n" not in str(exc.value) and ".cc:" not in str(exc.value)
        with pytest.raises(RuntimeLoadError, match="is not a valid .onnx_adapter file"):
            ort_prefill_logits(folder, [2, 5], adapter=tmp_path / f"{bad}.onnx_adapter")
    # a well-formed file whose tensors do not fit the graph
    fmt = ort.AdapterFormat()
    fmt.set_parameters({"model.layers.0.attn.q_proj.lora_A.MatMul.weight":
                        ort.OrtValue.ortvalue_from_numpy(np.zeros((64, 8), np.float32))})
    fmt.export_adapter(str(tmp_path / "wide.onnx_adapter"))
    with pytest.raises(RuntimeLoadError, match=r"has shape \[64, 8\], the graph takes \[64, 4\]"):
        model.load_adapter("wide", tmp_path / "wide.onnx_adapter")
    with pytest.raises(RuntimeLoadError, match="does not exist"):
        model.load_adapter("gone", tmp_path / "gone.onnx_adapter")
    with pytest.raises(RuntimeLoadError, match="adapter 'x' is not loaded"):
        model.greedy(PROMPTS[0], 2, adapter="x")
    assert check_adapter_file(folder / "adapters/b.onnx_adapter", None)[
        "model.layers.0.attn.q_proj.lora_A.MatMul.weight"] == (64, 4)


def test_int4_adapters_keep_lora_in_float(llama_dir: Path, peft_dirs: dict[str, Path], lora: tuple[Path, dict]) -> None:
    out = llama_dir.parent / "lora_int4"
    info = build_genai_adapters(llama_dir, peft_dirs, out, "int4")
    # base projections (q, k, v, o, gate, up, down per layer, lm_head) quantised; the 8 LoRA MatMuls are not
    assert info["ops"]["MatMulNBits"] == 15 and info["ops"]["MatMul"] == 8
    assert info["lora_inputs"] == lora[1]["lora_inputs"]
    model = GenaiModel(out)
    model.load_adapter("a")
    model.load_adapter("b")
    outs = {name: model.greedy(PROMPTS[0], NEW, adapter=name) for name in ["a", "b", None]}
    assert len({tuple(v) for v in outs.values()}) == 3  # the adapters change the quantised model's output


def test_adapter_refusals(llama_dir: Path, tmp_path: Path) -> None:
    dora = _peft_adapter(llama_dir, tmp_path / "dora", 2, 3, use_dora=True)
    with pytest.raises(ExportError, match="adapter d: DoRA cannot be written as LoRA A / B inputs"):
        build_genai_adapters(llama_dir, {"d": dora}, tmp_path / "out")
    with pytest.raises(ExportError, match="adapter name 'a/b'"):
        build_genai_adapters(llama_dir, {"a/b": dora}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- `dynalora export base|merged --runtime genai` (export/genai_export.py) ----------------------------------
@pytest.fixture(scope="module")
def gen_run(llama_dir: Path) -> Path:
    """A generation run (prompt -> response) trained on the genai-compatible tiny Llama."""
    from dynalora.core.config import TrainConfig
    from dynalora.core.train import train
    from tiny_data import write_generation_file

    root = llama_dir.parent / "gen_run"
    root.mkdir()
    data = write_generation_file(root / "gen.jsonl", 64, 0)
    train(TrainConfig(model=str(llama_dir), task=None, train_file=str(data), out=str(root / "run"), steps=4,
                      batch_size=8, lr=1e-3, progress=False, threads=1, eval_size=8, max_new_tokens=6))
    return root / "run"


def test_export_base_genai_is_one_folder_for_both_runtimes(llama_dir: Path, hf_model: torch.nn.Module,
                                                           tmp_path: Path) -> None:
    """`export base --runtime genai`: og.Model and dynalora.edge_runtime.load run the same graph, greedy == HF."""
    from dynalora.edge_runtime import load
    from dynalora.export.genai_export import export_genai

    manifest = export_genai(str(llama_dir), tmp_path / "exp")
    assert manifest["kind"] == "base" and manifest["precision"] == "fp32" and "genai" in manifest["runtime"]
    assert manifest["verification"]["builder"]["top1_agreement"] == 1.0
    prompt = [2, 40, 41, 42, 43]
    want = _hf_greedy(hf_model, prompt, 8)
    runtime = load(tmp_path / "exp")
    ours = runtime.greedy_decode(np.asarray([prompt], dtype=np.int64), 8)["tokens"][0].tolist()
    assert genai_greedy(tmp_path / "exp", prompt, 8) == want == ours
    assert runtime._eos_token_ids() == {3}  # from genai_config.json: generate() stops at the end token


def test_export_merged_genai_run_checks_greedy_and_quality(gen_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime_genai as og

    from dynalora.cli import main

    assert main(["export", "merged", "--run", str(gen_run), "--runtime", "genai", "--out", str(tmp_path / "fp32")]) == 0
    fp32 = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert fp32["kind"] == "merged" and fp32["source_task"]["problem"] == "generation"
    greedy = fp32["verification"]["greedy"]
    assert greedy["prompts"] == 4 and greedy["identical_sequences"] == 4  # fp32: refused otherwise
    og.Model(str(tmp_path / "fp32"))  # the same folder loads in onnxruntime-genai
    assert main(["export", "merged", "--run", str(gen_run), "--runtime", "genai", "--quantize", "int4",
                 "--out", str(tmp_path / "int4")]) == 0
    q = json.loads((tmp_path / "int4" / "manifest.json").read_text())["verification"]["quality"]
    assert q["tokens"] > 50 and q["top1_agreement"] >= q["floor_top1"] and "evaluation prompts" in q["text"]
    assert abs(q["perplexity_change_pct"]) < 50
    # `dynalora bench --compare-torch` on the genai folder: our runtime decodes its graph, judged against torch/
    from dynalora.edge_runtime.bench import run_bench

    result = run_bench(tmp_path / "fp32", None, [1], [1], [8], True, repeats=2, warmup=1, decode_tokens=4, genai=True)
    check = result["validation"][0]
    assert check["compared_to"] == "torch" and check["max_abs_diff"] <= check["tolerance"]
    # our runtime, PyTorch eager and onnxruntime-genai side by side in one run
    assert sorted(r["engine"] for r in result["records"]) == ["onnxruntime", "onnxruntime-genai", "torch"]
    assert all(r["decode_tokens_per_s"] > 0 and r["ttft_ms"] > 0 for r in result["records"])
    capsys.readouterr()
    # int4 without genai, and genai for a classifier-only flag: one line, exit 2, nothing written
    assert main(["export", "merged", "--run", str(gen_run), "--quantize", "int4", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "merged", "--run", str(gen_run), "--runtime", "genai", "--target", "android",
                 "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--runtime genai" in err[0] and "does not apply" in err[1]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_gguf_decoder_chain_is_simplified_only_when_equivalent(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from dynalora.export.genai_export import fix_gguf_bytelevel_decoder

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the movie was good and the story better"] * 20, trainer)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("\u2581", " "),
                                     decoders.ByteLevel()])  # what transformers' GGUF conversion writes
    tok.save(str(tmp_path / "tokenizer.json"))
    before = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    fix = fix_gguf_bytelevel_decoder(tmp_path)
    assert fix["applied"] and fix["now"] == "ByteLevel"
    after = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "The  movie, naïve café 🙂\nok"
    assert after.encode(text).ids == before.encode(text).ids
    assert after.decode(before.encode(text).ids) == before.decode(before.encode(text).ids)
    assert not fix_gguf_bytelevel_decoder(tmp_path)["applied"]  # already plain: nothing to do


def test_export_adapters_genai_hot_swaps_runs(gen_run: Path, llama_dir: Path, tmp_path: Path) -> None:
    """`export adapters --runtime genai` of two causal-LM runs (different ranks): one decoder, an .onnx_adapter
    per run; og.Adapters and dynalora's use_adapter switch them on one loaded model, each matching its run."""
    from dynalora.cli import main
    from dynalora.core.batches import load_data
    from dynalora.core.config import LoRAConfig, TrainConfig
    from dynalora.core.generate import generate_ids, prompt_ids
    from dynalora.core.run_io import load_run
    from dynalora.core.train import train
    from dynalora.edge_runtime import load
    from tiny_data import write_generation_file

    other = tmp_path / "other"
    data = write_generation_file(tmp_path / "copy.jsonl", 64, 1, "copy")
    train(TrainConfig(model=str(llama_dir), task=None, train_file=str(data), out=str(other), steps=4, batch_size=8,
                      lr=1e-3, progress=False, threads=1, eval_size=8, max_new_tokens=6,
                      lora=LoRAConfig(rank=4, max_rank=8)))
    out = tmp_path / "exp"
    assert main(["export", "adapters", "--runs", str(gen_run), str(other), "--runtime", "genai", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "adapters" and set(manifest["adapters"]) == {"run", "other"}
    for name in ("run", "other"):
        assert manifest["verification"]["greedy"][name]["identical_sequences"] == 4
    runtime, model = load(out), GenaiModel(out)
    for name in ("run", "other"):
        model.load_adapter(name)  # once each: switching is per generation
    for name, run_dir in (("run", gen_run), ("other", other), ("run", gen_run)):  # back and forth, no reload
        run = load_run(run_dir)
        spec_data = load_data(run.config)
        ids = prompt_ids(run.tokenizer, spec_data.spec, spec_data.eval[0])
        want = generate_ids(run.model, run.tokenizer, [ids], 6)[0]
        runtime.use_adapter(name)
        ours = runtime.greedy_decode(np.asarray([ids], dtype=np.int64), 6, stop_at_eos=True)["tokens"][0].tolist()
        theirs = model.greedy(ids, 6, adapter=name)
        assert ours[: len(want)] == want and theirs[: len(want)] == want


def test_genai_folder_with_a_wrong_checksum_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    """dynalora's manifest checksums every file of a genai folder: a changed weight file is refused in one line."""
    from dynalora.edge_runtime import load
    from dynalora.export.genai_export import export_genai

    export_genai(str(llama_dir), tmp_path / "exp")
    data = tmp_path / "exp" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(Exception, match="model.onnx.data") as info:
        load(tmp_path / "exp")
    assert len(str(info.value).splitlines()) == 1 and "checksum" in str(info.value).lower()
