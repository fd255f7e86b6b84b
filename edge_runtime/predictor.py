"""Run an exported model with onnxruntime: classification / regression / causal-LM generation.

    from dynalora.edge_runtime import load
    p = load("exports/rt", provider="cpu", threads=2)        # checksums verified before loading
    p.predict(["a gripping film", "dull"])["labels"]        # ['fresh', 'rotten']
    p.use_adapter("sst2")                                     # kind == "adapters": native ORT LoRA
    load("exports/tiny-llama").generate("the movie", max_new_tokens=16)

One InferenceSession per Predictor. Text goes through `EdgeTokenizer` (tokenizer.py: the folder's
tokenizer.json run by the `tokenizers` library), so this module needs neither transformers nor torch: it
runs on the runtime-only install (`pip install dynalora`). `greedy_decode` is our own KV-cache loop over
the graph optimum's exporter writes: `generate` decodes with it (also with a LoRA adapter active, which
optimum's ORTModel could not pass), and the benchmark times prefill and decode with it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_c

from dynalora.errors import DynaloraError
from dynalora.edge_runtime.feeds import PAST_PREFIX, ort_feeds
from dynalora.edge_runtime.manifest import Manifest, read_manifest, verify_checksums
from dynalora.edge_runtime.providers import (
    DeviceProfile,
    ProviderError,
    ProviderFallbackWarning,
    get_profile,
    provider_options_for,
    resolve_providers,
    session_options,
)

if TYPE_CHECKING:  # tokenizer.py imports RuntimeLoadError from here: loaded lazily by Predictor.tokenizer
    from dynalora.edge_runtime.tokenizer import EdgeTokenizer


FUSION_INPUT = "fusion_weights"  # the per-sequence adapter weights of a fused decoder (export/genai_fused.py)


class RuntimeLoadError(DynaloraError):
    """An export that cannot be loaded or run as asked (wrong task, missing adapter, bad input)."""


# What onnxruntime raises for a corrupt / unsupported model file or a provider that will not start.
_ORT_LOAD_ERRORS = (_ort_c.Fail, _ort_c.InvalidGraph, _ort_c.InvalidProtobuf, _ort_c.NoSuchFile, _ort_c.EPFail,
                    _ort_c.NotImplemented, _ort_c.InvalidArgument, _ort_c.RuntimeException)


class Predictor:
    """A loaded export. Build it with `load()`; attributes: manifest, providers, load_seconds."""

    def __init__(self, folder: Path, manifest: Manifest, session: ort.InferenceSession, load_seconds: float) -> None:
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.load_seconds = load_seconds  # InferenceSession creation (checksums and tokenizer excluded)
        self._tokenizer: EdgeTokenizer | None = None
        self._adapters: dict[str, ort.LoraAdapter] = {}
        self._run_options: ort.RunOptions | None = None
        self.active_adapter: str | None = None
        self.fixed_shape: tuple[int, int] | None = None  # (batch, sequence) of a fixed-shape mobile graph
        self.variant = "onnx"  # which graph of the folder runs: onnx | ort | fixed | fixed-ort (see `load`)
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.router: ort.InferenceSession | None = None  # a causal-LM fusion's router.onnx (see route())

    @property
    def tokenizer(self) -> EdgeTokenizer:
        """The export's tokenizer (tokenizer.json through the `tokenizers` library), loaded on first use."""
        if self._tokenizer is None:
            from dynalora.edge_runtime.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.folder)
        return self._tokenizer

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses (onnxruntime may have dropped one it could not start)."""
        return list(self.session.get_providers())

    @property
    def uses_kv_cache(self) -> bool:
        return any(name.startswith(PAST_PREFIX) for name in self.input_names)

    # -- adapters --------------------------------------------------------------------------------
    def use_adapter(self, name: str | None) -> None:
        """Activate a LoRA adapter shipped in adapters/ (kind == "adapters"); None runs the bare base."""
        if name is None:
            self._run_options, self.active_adapter = None, None
            return
        available = dict(self.manifest.adapters)
        if not available:
            raise RuntimeLoadError(f"{self.folder} is a {self.manifest.kind!r} export with no adapters; "
                                   "use_adapter needs an export made with kind 'adapters'")
        if name not in available:
            raise RuntimeLoadError(f"unknown adapter {name!r}; this export has: {', '.join(sorted(available))}")
        if name not in self._adapters:
            adapter = ort.LoraAdapter()
            adapter.Load(str(self.folder / available[name]))  # memory-mapped, cheap to keep around
            self._adapters[name] = adapter
        run_options = ort.RunOptions()
        run_options.add_active_adapter(self._adapters[name])
        self._run_options, self.active_adapter = run_options, name

    # -- raw execution ---------------------------------------------------------------------------
    def run_raw(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """session.run with the active adapter (if any); `feeds` must name the graph's inputs."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RuntimeLoadError(f"run_raw is missing inputs {missing}; the model takes {self.input_names}")
        return self.session.run(None, feeds, self._run_options)

    def encode(self, texts: Sequence[str] | Sequence[tuple[str, str]], *, max_length: int | None = None,
               pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Tokenize to the graph's feeds (`edge_runtime.feeds.ort_feeds`). `pad_to` pads/truncates to exactly that
        many tokens."""
        if not texts:
            raise RuntimeLoadError("predict needs at least one text")
        pairs = isinstance(texts[0], (tuple, list))
        first = [t[0] for t in texts] if pairs else list(texts)
        second = [t[1] for t in texts] if pairs else None
        length = pad_to or max_length or self.manifest.max_length
        enc = self.tokenizer(first, second, padding="max_length" if pad_to else True, truncation=length is not None,
                             max_length=length, return_tensors="np")
        return ort_feeds(self.session.get_inputs(), enc)

    # -- tasks -----------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Classify / score texts (or (text_a, text_b) pairs).

        Returns {"logits": (B, C) float array, and for classification "label_ids", "labels",
        "probabilities"; for regression "values" (B,) or (B, C)}.
        """
        if self.manifest.problem == "causal-lm":
            raise RuntimeLoadError("this export is a causal LM: call generate(prompt) instead of predict()")
        if self.fixed_shape is None:
            logits = self.run_raw(self.encode(texts))[self._output_index("logits")]
        else:  # a fixed-shape mobile graph: `batch` rows of exactly `sequence` tokens per run
            batch, seq = self.fixed_shape
            parts = []
            for start in range(0, len(texts), batch):
                chunk = list(texts[start : start + batch])
                real = len(chunk)
                chunk += [chunk[-1]] * (batch - real)  # fill the last run's rows; their outputs are dropped
                parts.append(self.run_raw(self.encode(chunk, pad_to=seq))[self._output_index("logits")][:real])
            logits = np.concatenate(parts, axis=0)
        logits = np.asarray(logits, dtype=np.float32)
        if self.manifest.problem == "regression":
            values = logits[:, 0] if logits.shape[-1] == 1 else logits
            return {"logits": logits, "values": values}
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        label_ids = logits.argmax(axis=-1)
        names = self.manifest.label_names
        labels = [names[i] if i < len(names) else str(i) for i in label_ids.tolist()]
        return {"logits": logits, "label_ids": label_ids, "labels": labels, "probabilities": probabilities}

    def generate(self, prompt: str, max_new_tokens: int = 32, *, route_text: str | None = None) -> str:
        """Greedy continuation of `prompt` (new text only), decoding with the KV cache.

        A causal-LM fusion export (router.onnx + fused decoder) does it in one call: the router reads
        `route_text` (default: `prompt`) once, the prompt is wrapped as training wrapped it (the manifest's
        `prompt_template`: the chat template's user turn, or the plain instruction format) and the decoder
        keeps the routed top-p weights for every generated token."""
        if self.manifest.problem != "causal-lm":
            raise RuntimeLoadError(f"generate needs a causal-lm export; this one is {self.manifest.problem!r}: "
                                   "use predict()")
        if max_new_tokens < 1:
            raise RuntimeLoadError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        weights = None
        if self.router is not None:
            weights = self.route([prompt if route_text is None else route_text])["fusion_weights"]
            ids = np.asarray([self.prompt_ids(prompt)], dtype=np.int64)
        else:
            if route_text is not None:
                raise RuntimeLoadError("route_text applies to a causal-LM fusion export (dynalora export fused)")
            ids = self.tokenizer([prompt])["input_ids"]  # (1, T): one prompt, no padding, no truncation
        if ids.shape[1] == 0:
            raise RuntimeLoadError("generate needs a prompt that tokenizes to at least one token; got an empty one")
        limit = max_positions(self.folder)
        if limit is not None and ids.shape[1] + max_new_tokens > limit:
            raise RuntimeLoadError(f"the prompt ({ids.shape[1]} tokens) plus max_new_tokens={max_new_tokens} exceeds "
                                   f"the model's {limit} positions; shorten the prompt or ask for fewer tokens")
        new = self.greedy_decode(ids, max_new_tokens, stop_at_eos=True, fusion_weights=weights)["tokens"][0]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    # -- causal-LM fusions -----------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of `prompt` wrapped by the manifest's prompt_template (a fusion export), as training saw it."""
        template = self.manifest.raw.get("prompt_template")
        if not template:
            return [int(t) for t in self.tokenizer([prompt])["input_ids"][0]]
        text = template["prefix"] + prompt + template["suffix"]
        ids = self.tokenizer([text], add_special_tokens=bool(template["add_special_tokens"]))["input_ids"][0]
        return [int(t) for t in ids]

    def route(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The fusion router on `texts`: {"router_probs": (B, K), "fusion_weights": (B, K) top-p, renormalised,
        "tasks": top-1 task names}. Needs a causal-LM fusion export (router.onnx)."""
        if self.router is None:
            raise RuntimeLoadError(f"{self.folder} has no router graph; route() needs `dynalora export fused` of a "
                                   "causal-LM fusion")
        if not texts:
            raise RuntimeLoadError("route needs at least one text")
        rows = [self.tokenizer([t], truncation=self.manifest.max_length is not None,
                               max_length=self.manifest.max_length)["input_ids"][0] for t in texts]
        width = max(len(r) for r in rows)  # padded by hand: the router masks padding out (any id will do), and a
        ids = np.zeros((len(rows), width), dtype=np.int64)  # genai folder's tokenizer may define no pad token
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        probs, weights = self.router.run(["router_probs", "fusion_weights"], feeds)
        names = [t["name"] for t in self.manifest.raw.get("fusion", {}).get("tasks", [])]
        top = probs.argmax(-1).tolist()
        return {"router_probs": probs, "fusion_weights": weights,
                "tasks": [names[i] if i < len(names) else str(i) for i in top]}

    def greedy_decode(self, input_ids: np.ndarray, max_new_tokens: int, stop_at_eos: bool = False,
                      fusion_weights: np.ndarray | None = None) -> dict[str, Any]:
        """Greedy decoding on the raw session with the KV cache; times prefill and decode separately.

        fusion_weights (B, K): a fused decoder's per-sequence adapter weights (route() gives them; one-hot =
        one task's adapter, zeros = the base model), held for every step.

        Returns {"tokens": (B, n) int64, "prefill_s": float, "decode_s": float, "decode_steps": int}.
        """
        if not self.uses_kv_cache:
            raise RuntimeLoadError("this export has no past_key_values inputs; re-export with "
                                   "task text-generation-with-past to decode with a KV cache")
        batch, length = input_ids.shape  # (B, T)
        feeds = ort_feeds(self.session.get_inputs(), {"input_ids": input_ids}, self.head_dim)  # empty KV cache: prefill
        if FUSION_INPUT in self.input_names:
            if fusion_weights is None:
                raise RuntimeLoadError("this fused decoder needs fusion_weights (batch, tasks): route() the prompts "
                                       "first, or call generate(prompt)")
            weights = np.asarray(fusion_weights, dtype=np.float32)
            k = self.session.get_inputs()[self.input_names.index(FUSION_INPUT)].shape[1]
            if weights.shape != (batch, k):
                raise RuntimeLoadError(f"fusion_weights must be ({batch}, {k}), got {weights.shape}")
            feeds[FUSION_INPUT] = weights
        elif fusion_weights is not None:
            raise RuntimeLoadError("fusion_weights applies to a fused decoder (dynalora export fused of a causal-LM fusion)")
        attention = np.ones((batch, length), dtype=np.int64)
        present_to_past = {o: o.replace("present", PAST_PREFIX, 1) for o in self.output_names
                           if o.startswith("present")}
        eos = np.array(sorted(self._eos_token_ids()), dtype=np.int64)
        tokens: list[np.ndarray] = []
        prefill_s = decode_s = 0.0
        position = length
        for step in range(max_new_tokens):
            feeds["attention_mask"] = attention
            if "position_ids" in self.input_names:
                start = position - feeds["input_ids"].shape[1]
                feeds["position_ids"] = np.tile(np.arange(start, position, dtype=np.int64), (batch, 1))
            t0 = time.perf_counter()
            outputs = self.session.run(None, feeds, self._run_options)
            elapsed = time.perf_counter() - t0
            if step == 0:
                prefill_s = elapsed
            else:
                decode_s += elapsed
            by_name = dict(zip(self.output_names, outputs, strict=True))
            next_ids = by_name["logits"][:, -1, :].argmax(axis=-1).astype(np.int64)  # (B,)
            tokens.append(next_ids)
            if stop_at_eos and eos.size and bool(np.all(np.isin(next_ids, eos))):
                break
            for present, past in present_to_past.items():
                feeds[past] = by_name[present]
            feeds["input_ids"] = next_ids[:, None]  # (B, 1): only the new token, the rest is cached
            attention = np.concatenate([attention, np.ones((batch, 1), dtype=np.int64)], axis=1)
            position += 1
        return {"tokens": np.stack(tokens, axis=1), "prefill_s": prefill_s, "decode_s": decode_s,
                "decode_steps": len(tokens) - 1}

    @property
    def head_dim(self) -> int | None:
        """Attention head size of a decoder export (the KV cache's last axis), from genai_config.json or
        config.json; None when neither says."""
        return head_dim_of(self.folder)

    def _eos_token_ids(self) -> set[int]:
        """End-of-sequence ids as generation would use them: generation_config.json, else config.json (an
        int or a list, as transformers' generate accepts), else genai_config.json's model.eos_token_id (an
        onnxruntime-genai folder has no config.json)."""
        for name in ("generation_config.json", "config.json", "genai_config.json"):
            path = self.folder / name
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                eos = data.get("model", {}).get("eos_token_id") if name == "genai_config.json" else data.get("eos_token_id")
                if eos is not None:
                    return {int(e) for e in eos} if isinstance(eos, list) else {int(eos)}
        return set()

    def _output_index(self, name: str) -> int:
        return self.output_names.index(name) if name in self.output_names else 0


def head_dim_of(folder: Path) -> int | None:
    genai = folder / "genai_config.json"
    if genai.is_file():
        size = json.loads(genai.read_text(encoding="utf-8")).get("model", {}).get("decoder", {}).get("head_size")
        if isinstance(size, int):
            return size
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(cfg.get("head_dim"), int):
            return int(cfg["head_dim"])
        if isinstance(cfg.get("hidden_size"), int) and isinstance(cfg.get("num_attention_heads"), int):
            return cfg["hidden_size"] // cfg["num_attention_heads"]
    return None


def max_positions(folder: Path) -> int | None:
    """The model's position limit from the export's config.json (None when it records none)."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if key in config:
            return int(config[key])
    return None


VARIANTS = ("onnx", "ort", "fixed", "fixed-ort")


def model_variant(folder: Path, manifest: Manifest, variant: str | None) -> tuple[Path, tuple[int, int] | None]:
    """(model file, fixed (batch, sequence) or None) of a graph variant.

    onnx: model.onnx; ort: the mobile package's ORT-format model; fixed / fixed-ort: its fixed-shape graph
    (android / ios packages, written by `dynalora export ... --target`)."""
    if variant in (None, "onnx"):
        return folder / manifest.model_file, None
    if variant not in VARIANTS:
        raise RuntimeLoadError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    mobile = manifest.raw.get("mobile")
    if not mobile:
        raise RuntimeLoadError(f"{folder} has no mobile package (variant {variant!r}); re-export with "
                               "--target android|ios|generic")
    if variant == "ort":
        rel = mobile["ort_model"]
        fixed = None
    else:
        if "fixed" not in mobile:
            raise RuntimeLoadError(f"{folder}'s mobile package (target {mobile.get('target')!r}) has no fixed-shape "
                                   "graph; re-export with --target android or ios")
        rel = mobile["fixed"]["ort" if variant == "fixed-ort" else "onnx"]
        fixed = (int(mobile["fixed"]["batch"]), int(mobile["fixed"]["sequence"]))
    if rel not in manifest.files:
        raise RuntimeLoadError(f"{folder}/manifest.json does not list {rel}; re-export the model")
    return folder / rel, fixed


def _resolve_profile(profile: str | DeviceProfile | None) -> DeviceProfile | None:
    return get_profile(profile) if isinstance(profile, str) else profile


def load(export_dir: str | os.PathLike[str], provider: str | None = None, threads: int | None = None,
         profile: str | DeviceProfile | None = None, allow_fallback: bool = False, verify: bool = True,
         eager_tokenizer: bool = True, variant: str | None = None) -> Predictor:
    """Verify and load an export folder.

    variant: which graph of the folder to run: "onnx" (default, model.onnx), "ort" (the mobile package's
    ORT-format model), "fixed" / "fixed-ort" (its fixed-shape graph: predict() pads every text to the fixed
    sequence length and runs the fixed batch size at a time). See `dynalora export ... --target`.

    provider: "cpu", "cuda", "CUDAExecutionProvider", ... or None (the profile's provider, else the best
    available). threads: intra-op threads (default: the profile's, else all physical cores).
    allow_fallback: run on CPU with a warning instead of failing when the provider is unavailable.
    verify: check every file's sha256 first. eager_tokenizer: load the tokenizer now, so a broken
    tokenizer.json fails here (False skips it: the benchmark worker gets token ids from its parent).
    """
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    if verify:
        verify_checksums(folder, manifest)

    device = _resolve_profile(profile)
    providers = resolve_providers(provider or (device.provider if device else None), allow_fallback)
    options = session_options(device, threads)
    provider_options = provider_options_for(providers, device)

    model_path, fixed_shape = model_variant(folder, manifest, variant)
    if manifest.kind == "adapters":
        # the LoRA tensors are graph inputs with initializer defaults by design (that is how onnxruntime's
        # adapters override them); onnxruntime warns once per tensor that such initializers are not constants
        options.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers,
                                       provider_options=provider_options)
    except (*_ORT_LOAD_ERRORS, OSError) as exc:
        raise RuntimeLoadError(f"onnxruntime could not load {model_path}: {str(exc).splitlines()[0]}") from exc
    load_seconds = time.perf_counter() - t0

    used = session.get_providers()
    if used and used[0] != providers[0]:
        # onnxruntime silently drops a provider whose libraries fail to load (e.g. no CUDA runtime).
        if not allow_fallback:
            raise ProviderError(f"{providers[0]} failed to start (missing libraries?) and onnxruntime fell back "
                                f"to {used[0]}; fix the install or pass --allow-fallback")
        warnings.warn(f"{providers[0]} failed to start; running on {used[0]}", ProviderFallbackWarning,
                      stacklevel=2)
    predictor = Predictor(folder, manifest, session, load_seconds)
    router_file = manifest.raw.get("router_graph")
    if router_file:  # a causal-LM fusion: router.onnx, run once per prompt
        if router_file not in manifest.files:
            raise RuntimeLoadError(f"{folder}/manifest.json does not list {router_file}; re-export the fusion")
        try:
            predictor.router = ort.InferenceSession(str(folder / router_file), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        except (*_ORT_LOAD_ERRORS, OSError) as exc:
            raise RuntimeLoadError(f"onnxruntime could not load {folder / router_file}: {str(exc).splitlines()[0]}") from exc
    predictor.fixed_shape = fixed_shape
    predictor.variant = variant or "onnx"
    if eager_tokenizer:
        predictor.tokenizer  # noqa: B018 - fail now, not at the first predict(), if the tokenizer is broken
    return predictor
