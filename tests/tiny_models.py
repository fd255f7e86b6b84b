"""Tiny random-init models and a tiny tokenizer for fast tests (no files, no network).

    from tiny_models import tiny_model, tiny_tokenizer_dir, save_tiny_model
    model = tiny_model("llama", num_labels=3)        # LlamaForSequenceClassification, hidden 32
    folder = save_tiny_model("gpt2", tmp_path / "m")  # model + tokenizer, loadable by path

The four architectures cover the attention layouts adapters must handle: BERT `query/value`,
Llama / Qwen2 `q_proj/v_proj` with grouped-query attention (4 query heads, 2 key/value heads),
GPT-2 fused `c_attn` Conv1D. All use pad_token_id 0 = "[PAD]" of the tiny tokenizer.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

ARCHS = ("bert", "llama", "gpt2", "qwen2")
VOCAB_SIZE = 1000
PAD_ID = 0

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = """
the a an and or but not no is are was were be been being have has had do does did will would can could
should may might must shall i you he she it we they me him her us them my your his its our their this that
these those there here what which who whom whose when where why how all any both each few more most other
some such only own same so than too very just also now then again once up down in out on off over under
to from by for with about against between into through during before after above below of at as if while
because until good bad great best worst better worse new old big small long short high low right wrong
first last next early late young fine nice poor rich happy sad funny boring dull bright dark love hate like
enjoy film movie story plot actor actress director scene script cast music book news sport sports game team
player win won lose lost match season market company bank money price share shares profit sales economy
government minister party election vote people man woman child children world country city year years day
time week month today yesterday tomorrow work home school life way thing things part place case point fact
make made get got take took see saw come came go went know knew think thought say said tell told give gave
find found use used want wanted look looked seem seemed feel felt try tried leave left call called keep
kept let begin began show showed hear heard play played run ran move moved live lived believe brought
happen happened write wrote provide sit stand lose pay meet include continue set learn change lead
understand watch follow stop create speak read allow add spend grow open walk offer remember consider
appear buy wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell
require report decide pull question sentence answer true false yes entailment neutral contradiction
positive negative fresh rotten equivalent duplicate acceptable technology phone computer software internet
""".split()


def _vocab() -> list[str]:
    pieces = list(string.ascii_lowercase) + list(string.digits) + list(".,!?;:'\"()-/&%$#@*+=")
    subwords = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    tokens = list(dict.fromkeys(_SPECIALS + pieces + subwords + _WORDS))
    tokens += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(tokens))]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return tokens


def tiny_config(arch: str, num_labels: int = 2, problem: str = "classification") -> PretrainedConfig:
    common = {
        "vocab_size": VOCAB_SIZE,
        "num_labels": num_labels,
        "problem_type": "regression" if problem == "regression" else "single_label_classification",
        "pad_token_id": PAD_ID,
    }
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=128, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, max_position_embeddings=128, bos_token_id=2, eos_token_id=3,
                           **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, max_position_embeddings=128, bos_token_id=2, eos_token_id=3,
                           **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=128, bos_token_id=2,
                          eos_token_id=3, **common)
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")


def tiny_model(arch: str, num_labels: int = 2, problem: str = "classification", seed: int = 0) -> torch.nn.Module:
    """Random-init *ForSequenceClassification (hidden 32, 2 layers), identical for the same seed; eval mode."""
    config = tiny_config(arch, num_labels, problem)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def tiny_tokenizer_dir(tmp_path: str | Path, *, token_type_ids: bool = True) -> Path:
    """Write a 1000-token WordPiece tokenizer folder that AutoTokenizer loads offline; returns the folder."""
    folder = Path(tmp_path) / "tiny_tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    input_names = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else ["input_ids", "attention_mask"]
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=128,
                                  model_input_names=input_names)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_model(arch: str, path: str | Path, num_labels: int = 2, problem: str = "classification",
                    seed: int = 0) -> Path:
    """Save a tiny model plus tokenizer into `path` so it loads by path like a real checkpoint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_model(arch, num_labels, problem, seed).save_pretrained(path)
    # Decoder-only models take no token_type_ids; BERT does.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = BertTokenizerFast.from_pretrained(tiny_tokenizer_dir(tmp, token_type_ids=arch == "bert"))
        tokenizer.save_pretrained(path)
    return path


def save_recovery_assets(root: str | Path) -> dict[str, Path]:
    """What the distributed runs train: a dropout-free tiny BERT (so runs are comparable) and a
    seeded 320-row sentiment-like CSV. Shared by tests/distributed/test_distributed.py and scripts/reliability.py."""
    import csv
    import json
    import random

    root = Path(root)
    model = save_tiny_model("bert", root / "bert")
    cfg_file = model / "config.json"
    config = json.loads(cfg_file.read_text())
    config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
    cfg_file.write_text(json.dumps(config))
    rng = random.Random(0)
    pos = "good great best fine nice happy funny bright love enjoy".split()
    neg = "bad worst worse poor sad boring dull dark hate wrong".split()
    nouns = "film movie story plot actor music book game team scene".split()
    data = root / "train.csv"
    with data.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(320):
            label = rng.randint(0, 1)
            words = [rng.choice(nouns), "was", rng.choice(pos if label else neg)]
            words += rng.sample(nouns + "the a and of to very".split(), rng.randint(2, 8))
            rng.shuffle(words)
            writer.writerow([" ".join(words) + f" {i}", label])
    return {"root": root, "model": model, "data": data}
