"""Feeds for an onnxruntime text graph: the one place that turns tokenizer output into a session's inputs.

    from dynalora.edge_runtime.feeds import ort_feeds
    enc = tokenizer(texts, padding=True, return_tensors="np")
    feeds = ort_feeds(session.get_inputs(), enc)           # every graph input this rule can fill
    logits = session.run(None, feeds)[0]

Used by the Predictor, the bench worker, the exporters' verification (dynalora.export.common) and the
benchmarks. numpy only: no torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# onnxruntime's type strings (NodeArg.type) -> numpy dtypes.
ORT_NP_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                                 "tensor(int64)": np.int64, "tensor(int32)": np.int32}
PAST_PREFIX = "past_key_values"


def input_names(inputs: Iterable[Any]) -> list[str]:
    """Names of graph inputs given as `session.get_inputs()` (NodeArgs) or as plain strings."""
    return [i if isinstance(i, str) else i.name for i in inputs]


def ort_feeds(inputs: Iterable[Any], arrays: Mapping[str, Any], head_dim: int | None = None) -> dict[str, np.ndarray]:
    """Feeds for the graph inputs `inputs` from `arrays` (a tokenizer's output; needs `input_ids` (B, T)).

    `inputs` is `session.get_inputs()` or a list of input names. Per input, in the graph's order:
      * held by `arrays`: cast to the input's dtype (int64 when only the name is known);
      * attention_mask: all ones; token_type_ids: zeros; position_ids: 0..T-1 in every row;
      * past_key_values.*: an empty cache (B, kv_heads, 0, head_dim), i.e. the prefill of a KV-cache decoder
        (needs the NodeArg, whose shape gives kv_heads and head_dim; `head_dim` when the graph leaves that axis
        symbolic, as onnxruntime-genai's builder does: `kv_cache_dim`).
    An input none of these fill is left out; callers that must run the graph check for it (see `missing`).
    """
    ids = np.asarray(arrays["input_ids"])
    shape = ids.shape  # (B, T)
    feeds: dict[str, np.ndarray] = {}
    for inp in inputs:
        name = inp if isinstance(inp, str) else inp.name
        onnx_type = None if isinstance(inp, str) else inp.type
        if name in arrays:
            feeds[name] = np.asarray(arrays[name], dtype=ORT_NP_DTYPES.get(onnx_type, np.int64))
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, dtype=np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros(shape, dtype=np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy()
        elif name.startswith(PAST_PREFIX) and onnx_type is not None:
            last = inp.shape[3] if isinstance(inp.shape[3], int) else head_dim
            if last is None:
                raise ValueError(f"graph input {name} has a symbolic head dimension ({inp.shape[3]!r}); pass head_dim")
            feeds[name] = np.zeros((shape[0], inp.shape[1], 0, last), dtype=ORT_NP_DTYPES.get(onnx_type, np.float32))
    return feeds


def missing(inputs: Iterable[Any], feeds: Mapping[str, Any]) -> list[str]:
    """The graph inputs that `feeds` does not hold."""
    return [n for n in input_names(inputs) if n not in feeds]
