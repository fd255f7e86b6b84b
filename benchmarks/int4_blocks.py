"""Quality of the genai builder's int4 / int8 settings on a base causal LM -> benchmarks/results/int4_blocks.{md,json}.

    .venv/bin/python benchmarks/int4_blocks.py [--model smollm2-135m] [--work /tmp/int4_blocks]

For each setting, `build_genai_folder` (export/genai.py: onnxruntime-genai's model builder, CPU) writes the folder,
then `quantised_quality` (export/genai_export.py, the check `dynalora export --runtime genai` runs) measures its
held-out perplexity change and next-token (top-1) agreement against PyTorch fp32 on the same text (8 paragraphs
of the bench's sample sentences), plus the size of model.onnx + model.onnx.data. Settings: int8 and int4 at the
builder's default block size 32, int4 at block 16 (`--block-size 16`), int4 with fp32 activations
(accuracy_level 1; default 4 = int8 activations) and both. Quality only: decode speed is benchmarks/edge_llm.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "int8, block 32 (default)": ("int8", {}),
    "int4, block 32 (default)": ("int4", {}),
    "int4, block 16": ("int4", {"block_size": "16"}),
    "int4, block 32, fp32 activations": ("int4", {"accuracy_level": "1"}),
    "int4, block 16, fp32 activations": ("int4", {"block_size": "16", "accuracy_level": "1"}),
}


def measure(hf: Path, folder: Path, precision: str, extra: dict[str, str]) -> dict[str, Any]:
    from dynalora.export.common import base_manifest, opset_of, session, write_export_manifest
    from dynalora.export.genai import build_genai_folder
    from dynalora.export.genai_export import fix_gguf_bytelevel_decoder, quantised_quality

    t0 = time.perf_counter()
    info = build_genai_folder(hf, folder, precision, overwrite=True, extra_options=extra, verify=False)
    fix_gguf_bytelevel_decoder(folder)
    sess = session(folder / "model.onnx")  # a dynalora manifest, so that the runtime loads the folder
    manifest = base_manifest(kind="base", run_info=None, model_type="llama", inputs=[i.name for i in sess.get_inputs()],
                             outputs=[o.name for o in sess.get_outputs()], opset=opset_of(folder / "model.onnx"),
                             precision=precision, max_length=None, source_runs=[])
    del sess
    write_export_manifest(folder, manifest)
    quality = quantised_quality(folder, hf, None)
    return {"precision": precision, "builder_options": extra, "matmul_nbits": info["matmul_nbits"],
            "model_mb": sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 1e6,
            "seconds": time.perf_counter() - t0, **quality}


def render(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# int4 / int8 settings of the genai builder: quality against fp32", "",
             f"Model `{report['model']}`; {env['cpu']}, onnxruntime {env['versions'].get('onnxruntime')}, "
             f"onnxruntime-genai {report['genai']}; {env['date']}. Text: {report['text']}. Perplexity and next-token "
             "agreement are measured exactly as `dynalora export --runtime genai` measures them (edge_runtime/lm_quality.py).",
             "", "| setting | MatMulNBits | model MB | perplexity change | next-token agreement |", "|---|---|---|---|---|"]
    for name, r in report["settings"].items():
        nb = ", ".join(f"{m['bits']} bit, block {m['block_size']}, accuracy level {m['accuracy_level']}" for m in r["matmul_nbits"])
        lines.append(f"| {name} | {nb} | {r['model_mb']:.0f} | {r['perplexity_change_pct']:+.2f}% | "
                     f"{100 * r['top1_agreement']:.1f}% |")
    lines += ["", "Reproduce: `" + report["command"] + "`", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", default="/tmp/int4_blocks")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from dynalora.atomic import write_json, write_text
    from dynalora.core.models import resolve_model_path
    from dynalora.edge_runtime.envinfo import environment
    from dynalora.export.genai import genai_version

    hf = Path(resolve_model_path(args.model))
    report: dict[str, Any] = {"environment": environment(), "model": args.model, "genai": genai_version(),
                              "command": " ".join([".venv/bin/python", "benchmarks/int4_blocks.py", *sys.argv[1:]]),
                              "settings": {}}
    for k, (name, (precision, extra)) in enumerate(SETTINGS.items()):
        r = measure(hf, Path(args.work) / f"s{k}", precision, extra)
        report["settings"][name] = r
        report["text"] = r["text"]
        print(f"{name}: perplexity {r['perplexity_change_pct']:+.2f}%, top-1 {100 * r['top1_agreement']:.1f}%, "
              f"{r['model_mb']:.0f} MB", flush=True)
    out = Path(args.out)
    write_json(out / "int4_blocks.json", report)
    write_text(out / "int4_blocks.md", render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
