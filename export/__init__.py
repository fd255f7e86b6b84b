"""dynalora.export: turn finished runs into ONNX folders that `dynalora.edge_runtime` loads.

    dynalora export merged   --run runs/rt --out exports/rt [--quantize int8|fp16] [--opset 17] [--overwrite]
    dynalora export adapters --runs runs/a runs/b --out exports/ab [--overwrite]
    dynalora export base     --model smollm2-135m --task-kind text-generation-with-past --out exports/smol
    dynalora export fused    --fuse fuse/ --out exports/fused [--overwrite]

    from dynalora.export import export_merged, export_adapters, merged_model
    export_merged("runs/rt", "exports/rt", quantize="int8")

Modules: `merge.py` (pure merge transform), `merged.py` (merged / base ONNX export, graph optimisation,
verification), `quantize.py` (int8 / fp16 choices), `adapters.py` (one graph + native ORT LoRA adapters),
`fused.py` (a `dynalora.fusion` folder as one graph: router + top-p + stacked adapters + heads),
`common.py` (output folders, evaluation inputs, manifest, shared flags), `cli.py` (the subcommands).
Sits on top of `dynalora.core` and `dynalora.fusion`; neither imports it.
Every export is built in a temporary sibling folder, verified against PyTorch, and only then renamed into
place: a failed check leaves nothing behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynalora.export.errors import ExportError

if TYPE_CHECKING:
    from dynalora.export.adapters import export_adapters
    from dynalora.export.merge import merged_model
    from dynalora.export.merged import export_base, export_merged

__all__ = ["ExportError", "export_adapters", "export_base", "export_merged", "merged_model"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch / onnx
    if name == "merged_model":
        from dynalora.export.merge import merged_model

        return merged_model
    if name in ("export_merged", "export_base"):
        from dynalora.export import merged

        return getattr(merged, name)
    if name == "export_adapters":
        from dynalora.export.adapters import export_adapters

        return export_adapters
    raise AttributeError(name)
