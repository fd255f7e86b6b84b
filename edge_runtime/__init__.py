"""dynalora.edge_runtime: load an export folder with onnxruntime, predict / generate, benchmark it.

    from dynalora.edge_runtime import load
    predictor = load("exports/rt", provider="cpu", threads=2)
    predictor.predict(["a gripping, funny film"])["labels"]

`dynalora bench EXPORT ...` (see `bench.py`) times it in fresh subprocesses. Nothing here imports torch,
transformers or optimum: text goes through the export's tokenizer.json (`tokenizer.py`), so the runtime-only
install (`pip install dynalora`: onnxruntime, tokenizers, numpy, psutil) runs every call above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynalora.edge_runtime.predictor import Predictor

__all__ = ["load"]


def load(export_dir: Any, provider: str | None = None, threads: int | None = None, profile: Any = None,
         allow_fallback: bool = False, verify: bool = True, eager_tokenizer: bool = True,
         variant: str | None = None) -> Predictor:
    """Verify an export folder's checksums and load it; see `dynalora.edge_runtime.predictor.load`."""
    from dynalora.edge_runtime.predictor import load as _load

    return _load(export_dir, provider=provider, threads=threads, profile=profile, allow_fallback=allow_fallback,
                 verify=verify, eager_tokenizer=eager_tokenizer, variant=variant)
