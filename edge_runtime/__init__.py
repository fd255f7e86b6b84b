"""dynalora.edge_runtime: load an export folder with onnxruntime, predict / generate, benchmark it.

    from dynalora.edge_runtime import load
    predictor = load("exports/rt", provider="cpu", threads=2)
    predictor.predict(["a gripping, funny film"])["labels"]

`dynalora bench EXPORT ...` (see `bench.py`) times it in fresh subprocesses. Importing this package
does not import torch or transformers; `load` pulls them in only when it needs a tokenizer or optimum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynalora.edge_runtime.predictor import Predictor

__all__ = ["load"]


def load(export_dir: Any, provider: str | None = None, threads: int | None = None, profile: Any = None,
         allow_fallback: bool = False, verify: bool = True, eager_tokenizer: bool = True) -> Predictor:
    """Verify an export folder's checksums and load it; see `dynalora.edge_runtime.predictor.load`."""
    from dynalora.edge_runtime.predictor import load as _load

    return _load(export_dir, provider=provider, threads=threads, profile=profile, allow_fallback=allow_fallback,
                 verify=verify, eager_tokenizer=eager_tokenizer)
