"""The export folder's tokenizer without transformers: `tokenizer.json` run by the `tokenizers` library.

    from dynalora.edge_runtime.tokenizer import load_tokenizer
    tok = load_tokenizer("exports/rt")
    enc = tok(["a gripping film"], padding=True, truncation=True, max_length=64, return_tensors="np")
    enc["input_ids"], enc["attention_mask"]          # int64 (B, T) arrays
    tok.decode([101, 2023, 102], skip_special_tokens=True)

An edge install has no transformers (it pulls torch-sized dependencies), but every export ships the
`tokenizer.json` that transformers' fast tokenizer itself runs on, plus `tokenizer_config.json`. This module
rebuilds what `AutoTokenizer.from_pretrained(folder)` returns for the calls dynalora makes: the same backend
(with the added / special tokens transformers registers on load), the same truncation and padding settings
per call (pad token, padding side, model_max_length), the same returned arrays (token_type_ids and
attention_mask as `model_input_names` says), and the same `decode` (including transformers'
`clean_up_tokenization_spaces` post-pass). tests/edge_runtime/test_tokenizer.py checks parity against
transformers. The call signature is a subset of transformers', so code written for either takes both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer

from dynalora.edge_runtime.predictor import RuntimeLoadError

# transformers' PreTrainedTokenizerBase: a model_max_length above this means "no limit" (no truncation).
LARGE_INTEGER = int(1e20)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_DEFAULT_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")  # PreTrainedTokenizerBase's default
# Class defaults of transformers 4.57 that differ from PreTrainedTokenizerBase's, keyed by the class name that
# tokenizer_config.json records (without "Fast"). They apply only when tokenizer_config.json does not set the
# value itself; test_tokenizer.py checks this table against the installed transformers classes.
_NO_TOKEN_TYPE_CLASSES = frozenset(f"{name}Tokenizer" for name in (
    "Bart Barthez BigBird Blenderbot Bloom Camembert CLIP CodeLlama CodeGen Cohere DistilBert DPRReader Gemma GPT2 "
    "GPTNeoX LayoutLMv3 LayoutXLM LED Llama Longformer MBart MBart50 MPNet MT5 Mvp Nllb Nougat OpenAIGPT Pegasus "
    "Qwen2 Reformer RetriBert Roberta SeamlessM4T T5 Udop Whisper XGLM XLMRoberta").split())
_CLASS_INPUT_NAMES: dict[str, tuple[str, ...]] = {
    **{name: ("input_ids", "attention_mask") for name in _NO_TOKEN_TYPE_CLASSES},
    "DebertaTokenizer": ("input_ids", "attention_mask", "token_type_ids"),
    "FNetTokenizer": ("input_ids", "token_type_ids"),
}
_LEFT_PADDING_CLASSES = frozenset(("LlamaTokenizer", "CodeLlamaTokenizer", "CohereTokenizer", "GemmaTokenizer",
                                   "XLNetTokenizer"))


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        return str(value.get("content")) if value.get("content") is not None else None
    return str(value) if value is not None else None


def _added_token(spec: Mapping[str, Any]) -> AddedToken:
    fields = ("single_word", "lstrip", "rstrip", "normalized", "special")
    return AddedToken(str(spec["content"]), **{k: bool(spec[k]) for k in fields if k in spec})


def _first_line(exc: BaseException) -> str:
    """The tokenizers library raises plain Exceptions whose text may span lines (or be empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RuntimeLoadError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(data, dict):
        raise RuntimeLoadError(f"{path} must hold a JSON object; re-export the model")
    return data


def tokenizer_settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json, with special_tokens_map.json merged in the way transformers merges it.

    transformers reads special_tokens_map.json only for folders saved without `added_tokens_decoder` in
    tokenizer_config.json (the legacy layout), and then lets its values win.
    """
    config = _read_json(folder / "tokenizer_config.json")
    if "added_tokens_decoder" not in config:
        for key, value in _read_json(folder / "special_tokens_map.json").items():
            if key == "additional_special_tokens" and isinstance(value, list):
                merged = list(config.get(key) or [])
                config[key] = merged + [t for t in value if _token_text(t) not in {_token_text(m) for m in merged}]
            else:
                config[key] = value
    return config


class EdgeTokenizer:
    """An export's tokenizer: callable like a transformers fast tokenizer, for the arguments dynalora uses."""

    def __init__(self, backend: Tokenizer, config: Mapping[str, Any], class_name: str = "") -> None:
        self.backend = backend
        self.config = dict(config)
        self.class_name = class_name.removesuffix("Fast")
        self.special_tokens: dict[str, str] = {}
        for key in _SPECIAL_KEYS:
            text = _token_text(config.get(key))
            if text is not None:
                self.special_tokens[key] = text
        self.additional_special_tokens = [t for t in (_token_text(v) for v in config.get("additional_special_tokens")
                                                      or []) if t is not None]
        extra = config.get("extra_special_tokens") or {}
        self.additional_special_tokens += [t for t in (_token_text(v) for v in extra.values()) if t is not None]
        self._register_added_tokens()
        padding = backend.padding or {}  # a tokenizer.json may carry defaults; the config wins, as in transformers
        truncation = backend.truncation or {}
        self.padding_side = str(config.get("padding_side") or padding.get("direction")
                                or ("left" if self.class_name in _LEFT_PADDING_CLASSES else "right"))
        self.truncation_side = str(config.get("truncation_side") or truncation.get("direction") or "right")
        if "pad_token" not in self.special_tokens and padding.get("pad_token"):
            self.special_tokens["pad_token"] = str(padding["pad_token"])
        self.pad_token_type_id = int(padding.get("pad_type_id", 0) or 0)
        max_length = config.get("model_max_length")
        self.model_max_length = int(max_length) if isinstance(max_length, (int, float)) else int(1e30)
        names = config.get("model_input_names") or _CLASS_INPUT_NAMES.get(self.class_name, _DEFAULT_INPUT_NAMES)
        self.model_input_names = list(names)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        backend.no_truncation()
        backend.no_padding()

    def _register_added_tokens(self) -> None:
        """Add what transformers adds on load: config `added_tokens_decoder` entries and special tokens the
        backend does not know as added tokens yet (same order, same special flags). A special token splits the
        text where it occurs and is dropped by decode(skip_special_tokens=True), so both depend on this."""
        known = {repr(tok) for tok in self.backend.get_added_tokens_decoder().values()}
        decoder = self.config.get("added_tokens_decoder") or {}
        to_add = [_added_token(spec) for _, spec in sorted(decoder.items(), key=lambda kv: int(kv[0]))
                  if isinstance(spec, Mapping) and "content" in spec]
        to_add = [tok for tok in to_add if repr(tok) not in known]
        encoder = {tok.content for tok in self.backend.get_added_tokens_decoder().values()}
        encoder |= {tok.content for tok in to_add}
        special = self.all_special_tokens
        for text in special:
            if text not in encoder:
                to_add.append(AddedToken(text, special=True))
                encoder.add(text)
        for tok in to_add:
            tok.special = tok.special or tok.content in special
        if to_add:
            self.backend.add_tokens(to_add)

    # -- special tokens --------------------------------------------------------------------------
    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens.values(), *self.additional_special_tokens]))

    def token_to_id(self, token: str | None) -> int | None:
        """The id of `token`, the unk id for an unknown token (as transformers), None for no token."""
        if token is None:
            return None
        found = self.backend.token_to_id(token)
        if found is None and "unk_token" in self.special_tokens:
            return self.backend.token_to_id(self.special_tokens["unk_token"])
        return found

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return int(self.backend.num_special_tokens_to_add(pair))

    # -- encode / decode -------------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                 padding: bool | str = False, truncation: bool | str = False, max_length: int | None = None,
                 return_tensors: str | None = "np", add_special_tokens: bool = True) -> dict[str, np.ndarray]:
        """Encode a text or a batch (optionally with `text_pair`) to int64 (B, T) arrays keyed by input name.

        padding: False | True / "longest" | "max_length"; truncation: False | True / "longest_first". Unlike
        transformers, the result is always numpy (`return_tensors` may only be None or "np").
        """
        if return_tensors not in (None, "np"):
            raise ValueError(f"EdgeTokenizer returns numpy arrays; return_tensors={return_tensors!r} is not supported")
        single = isinstance(text, str)
        first = [text] if single else list(text)
        second = None if text_pair is None else ([text_pair] if isinstance(text_pair, str) else list(text_pair))
        if second is not None and len(second) != len(first):
            raise ValueError(f"got {len(first)} texts but {len(second)} text pairs")
        if padding in (True, "longest"):
            pad_mode: str | None = "longest"
        elif padding in (False, None, "do_not_pad"):
            pad_mode = None
        elif padding == "max_length":
            pad_mode = "max_length"
        else:
            raise ValueError(f"unsupported padding {padding!r}; use True, 'longest' or 'max_length'")
        if truncation not in (True, False, "longest_first", "do_not_truncate"):
            raise ValueError(f"unsupported truncation {truncation!r}; use True or 'longest_first'")
        truncate = truncation in (True, "longest_first")
        if max_length is None and (truncate or pad_mode == "max_length"):
            if self.model_max_length > LARGE_INTEGER:  # no limit known: transformers neither truncates nor pads
                truncate, pad_mode = False, (None if pad_mode == "max_length" else pad_mode)
            else:
                max_length = self.model_max_length
        if truncate:
            self.backend.enable_truncation(max_length, stride=0, strategy="longest_first",
                                           direction=self.truncation_side)
        else:
            self.backend.no_truncation()
        if pad_mode is not None:
            if self.pad_token is None:
                raise RuntimeLoadError("the export's tokenizer has no pad token, so it cannot pad a batch; "
                                       "re-export the model with `dynalora export` (it sets one)")
            self.backend.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id,
                                        pad_type_id=self.pad_token_type_id, pad_token=self.pad_token,
                                        length=max_length if pad_mode == "max_length" else None)
        else:
            self.backend.no_padding()
        inputs: list[Any] = first if second is None else list(zip(first, second, strict=True))
        try:
            encodings = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as exc:  # tokenizers raises plain Exception (e.g. max_length below the special tokens)
            raise RuntimeLoadError(f"cannot tokenize the input: {_first_line(exc)}") from None
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        lengths = {len(e.ids) for e in encodings}
        if len(lengths) > 1:
            raise ValueError("texts of different lengths need padding=True to form one array")
        out = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
        if "token_type_ids" in self.model_input_names:
            out["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        if "attention_mask" in self.model_input_names:
            out["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if not encodings:
            out = {k: v.reshape(0, 0) for k, v in out.items()}
        return out

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Token ids back to text, with transformers' clean-up of spaces before punctuation when configured."""
        flat = [int(i) for i in np.asarray(ids).reshape(-1)]
        text = self.backend.decode(flat, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text


def load_tokenizer(folder: str | os.PathLike[str]) -> EdgeTokenizer:
    """The tokenizer of an export folder (its tokenizer.json + tokenizer_config.json); RuntimeLoadError if absent
    or unreadable."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise RuntimeLoadError(f"{folder} has no tokenizer.json, which the edge runtime needs to tokenize text; "
                               "re-export the model with `dynalora export` (it writes one)")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for unreadable or corrupt files
        raise RuntimeLoadError(f"cannot read {path} ({_first_line(exc)}): the file is corrupt; copy the export "
                               "folder again or re-export") from None
    config = tokenizer_settings(folder)
    return EdgeTokenizer(backend, config, str(config.get("tokenizer_class") or ""))
