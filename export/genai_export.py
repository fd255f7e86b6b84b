"""`dynalora export base|merged --runtime genai`: causal-LM folders that onnxruntime-genai *and* dynalora's runtime load.

    dynalora export base --model smollm2-135m --runtime genai --quantize int4 --out exports/smol-int4
    dynalora export merged --run runs/qa --runtime genai --out exports/qa          # a generation / multiple-choice run

    import onnxruntime_genai as og; og.Model("exports/qa")                # genai_config.json, model.onnx(.data), tokenizer
    dynalora.edge_runtime.load("exports/qa").generate("...")              # manifest.json: the same graph

The graph is onnxruntime-genai's own model builder's (export/genai.py `build_genai_folder`: GroupQueryAttention,
block-wise MatMulNBits for int8 / int4). This module adds what makes it a dynalora export: the run merged first
(export/merge.py), dynalora's manifest (checksums of every file, kind, precision, verification), and the checks:
  * fp32: the builder check (logits within 1e-3 of PyTorch, same top-1) and, for a run, its greedy generations on
    the run's evaluation prompts identical to the merged PyTorch model's (export/merged.py `_greedy_parity`);
  * int8 / int4: what quantisation promises, measured on held-out text (edge_runtime/lm_quality.py): perplexity
    change and next-token agreement against PyTorch fp32, recorded; refused below the broken-graph floor.
Tokenizer. genai reads tokenizer.json with its own library. The GGUF-converted SmolLM2 tokenizer carries a
SentencePiece-style decoder chain (ByteFallback, Fuse, Replace('▁', ' '), ByteLevel) on a byte-level BPE, which
genai takes for SentencePiece (it encodes spaces as -1). The export replaces that chain by the plain ByteLevel
decoder when doing so changes nothing (`tokenizers` round trip of probe texts identical before and after) and
records genai's own check (`tokenizer`: ok / mismatch / unsupported).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.atomic import atomic_dir
from dynalora.core.outdir import OutLock
from dynalora.export.common import base_manifest, opset_of, refuse_existing, session, write_export_manifest
from dynalora.export.errors import ExportError

PRECISION_OF = {None: "fp32", "fp32": "fp32", "int8": "int8", "int4": "int4"}
QUALITY_TEXTS = 8  # held-out texts the quantised graph's perplexity / agreement are measured on
QUALITY_MAX_TOKENS = 256  # per text (and at most the model's context length)
_PROBES = ("The movie was good, and the story was even better.", "  Two  spaces, tabs\tand\nnew lines!",
           "naïve café — 3.14 × 2 = 6.28; emoji 🙂 ok?", "def f(x):\n    return x ** 2  # code")


def export_genai(source: str, out: str | os.PathLike[str], *, quantize: str | None = None, overwrite: bool = False,
                 run_dir: str | os.PathLike[str] | None = None, block_size: int | None = None) -> dict[str, Any]:
    """A genai + dynalora folder for a base causal LM (`source`: built-in name / folder) or, with `run_dir`, for a
    causal-LM run merged into its base. block_size: weights per int8 / int4 block (the builder's default, 32,
    when None). Returns the manifest written."""
    if quantize not in PRECISION_OF:
        raise ExportError(f"--runtime genai supports fp32 (default), --quantize int8 and --quantize int4; got {quantize!r}")
    precision = PRECISION_OF[quantize]
    out = refuse_existing(out, overwrite)
    from dynalora.export.genai import _require_genai

    _require_genai()
    extra = builder_options(precision, block_size)
    if run_dir is not None:
        return _export_run(Path(run_dir), out, precision, overwrite, extra)
    from dynalora.core.models import resolve_model_path
    from dynalora.errors import DynaloraError

    try:
        path = Path(resolve_model_path(source))
    except DynaloraError as exc:
        raise ExportError(str(exc)) from None
    if not path.is_dir():
        raise ExportError(f"--runtime genai builds from a local model folder; {source} is not one")
    return _write(path, out, precision, overwrite, kind="base", run=None, merged=None, extra=extra)


BLOCK_SIZES = (16, 32, 64, 128)


def builder_options(precision: str, block_size: int | None) -> dict[str, str]:
    """The genai builder's extra options for a precision and an optional quantisation block size."""
    if block_size is None:
        return {}
    if precision == "fp32":
        raise ExportError("a quantisation block size applies to int8 / int4 exports only")
    if block_size not in BLOCK_SIZES:
        raise ExportError(f"block size {block_size} is not one of {', '.join(map(str, BLOCK_SIZES))}")
    return {"block_size": str(block_size)}


def _export_run(run_dir: Path, out: Path, precision: str, overwrite: bool, extra: dict[str, str]) -> dict[str, Any]:
    from dynalora.export.common import load_run_checked
    from dynalora.export.merge import merged_model

    run = load_run_checked(run_dir)
    if run.info["task"]["problem"] not in ("generation", "multiple_choice"):
        raise ExportError(f"{run_dir} is a {run.info['task']['problem']} run: --runtime genai exports causal-LM runs "
                          "(generation or multiple choice); export a classifier with the default runtime")
    merged = merged_model(run)  # checked against the adapted model
    with tempfile.TemporaryDirectory(prefix="dynalora-genai-") as tmpdir:
        merged.save_pretrained(tmpdir, safe_serialization=True)
        run.tokenizer.save_pretrained(tmpdir)
        return _write(Path(tmpdir), out, precision, overwrite, kind="merged", run=run, merged=merged, extra=extra)


def _write(hf_dir: Path, out: Path, precision: str, overwrite: bool, *, kind: str, run: Any, merged: Any,
           extra: dict[str, str]) -> dict[str, Any]:
    from dynalora.export.genai import MANIFEST, build_genai_folder, tokenizer_status

    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:
        build = tmp / ".genai-build"
        info = build_genai_folder(hf_dir, build, precision, extra_options=extra)
        for item in build.iterdir():
            shutil.move(str(item), str(tmp / item.name))
        build.rmdir()
        info["folder"] = str(out)
        info["tokenizer_fix"] = fix_gguf_bytelevel_decoder(tmp)
        if info["tokenizer_fix"].get("applied"):
            info["tokenizer"] = tokenizer_status(tmp)
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "torch").mkdir()  # the PyTorch weights the graph came from: `dynalora bench --compare-torch`
        for item in hf_dir.iterdir():
            if item.suffix in (".json", ".safetensors") and not item.name.startswith("tokenizer"):
                shutil.copyfile(item, tmp / "torch" / item.name)
        sess = session(tmp / "model.onnx")
        manifest = base_manifest(kind=kind, run_info=None, model_type=str(config.get("model_type", "")),
                                 inputs=[i.name for i in sess.get_inputs()], outputs=[o.name for o in sess.get_outputs()],
                                 opset=opset_of(tmp / "model.onnx"), precision=precision, max_length=None,
                                 source_runs=[run.path] if run is not None else [])
        del sess
        manifest["runtime"] = {"genai": f"onnxruntime-genai (genai_config.json; {MANIFEST})", "dynalora": "manifest.json"}
        manifest["base_model"] = str(hf_dir) if run is None else run.info["base_model"]
        if run is not None:
            manifest["source_task"] = {k: run.info["task"].get(k) for k in ("name", "problem", "prompt", "prompt_format")}
            manifest["run_metrics"] = run.info.get("metrics", {})
        manifest["verification"] = {"builder": info.get("verification", {}), "tokenizer": info["tokenizer"]}
        manifest["model_bytes"] = sum(p.stat().st_size for p in tmp.glob("model.onnx*"))
        written = write_export_manifest(tmp, manifest)
        if precision != "fp32":
            manifest["verification"]["quality"] = quantised_quality(tmp, hf_dir if merged is None else merged, run)
        if run is not None:
            from dynalora.export.merged import _greedy_parity

            manifest["verification"]["greedy"] = _greedy_parity(run, merged, tmp, precision)
        written = write_export_manifest(tmp, manifest)
    return written


def export_genai_adapters(run_dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                          quantize: str | None = None, overwrite: bool = False,
                          block_size: int | None = None) -> dict[str, Any]:
    """`export adapters --runtime genai`: causal-LM runs of one base model -> one genai base decoder whose LoRA
    weights are graph inputs + adapters/NAME.onnx_adapter per run (export/genai.py `build_genai_adapters`;
    variable ranks zero-padded to one shape per layer). og.Adapters / set_active_adapter and dynalora's
    `use_adapter` switch them without reloading the base. Checked per run (fp32): greedy generations on the
    run's evaluation prompts identical to the run's PyTorch model; int8 / int4 record the agreement."""
    from dynalora.core.models import resolve_model_path
    from dynalora.export.adapters import _adapter_names
    from dynalora.export.common import load_run_checked
    from dynalora.export.genai import MANIFEST, _require_genai, build_genai_adapters

    if quantize not in PRECISION_OF:
        raise ExportError(f"--runtime genai supports fp32 (default), --quantize int8 and --quantize int4; got {quantize!r}")
    precision = PRECISION_OF[quantize]
    extra = builder_options(precision, block_size)
    if not run_dirs:
        raise ExportError("--runs needs at least one run folder")
    out = refuse_existing(out, overwrite)
    _require_genai()
    runs = [load_run_checked(d) for d in run_dirs]
    for run in runs:
        if run.info["task"]["problem"] not in ("generation", "multiple_choice"):
            raise ExportError(f"{run.path} is a {run.info['task']['problem']} run: --runtime genai exports causal-LM "
                              "runs (generation or multiple choice); export classifiers without --runtime genai")
        if run.info["base_model"] != runs[0].info["base_model"]:
            raise ExportError(f"runs {runs[0].path} and {run.path} were trained on different base models "
                              f"({runs[0].info['base_model']} vs {run.info['base_model']}): adapters share one decoder "
                              "only when they share the base model")
    names = _adapter_names(runs)
    hf_dir = Path(resolve_model_path(runs[0].info["base_model"]))
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:
        build = tmp / ".genai-build"
        info = build_genai_adapters(hf_dir, {n: r.path / "adapter" for n, r in zip(names, runs, strict=True)}, build,
                                    precision, extra_options=extra)
        for item in build.iterdir():
            shutil.move(str(item), str(tmp / item.name))
        build.rmdir()
        info["folder"] = str(out)
        info["tokenizer_fix"] = fix_gguf_bytelevel_decoder(tmp)
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        sess = session(tmp / "model.onnx")
        manifest = base_manifest(kind="adapters", run_info=None, model_type=str(config.get("model_type", "")),
                                 inputs=[i.name for i in sess.get_inputs()], outputs=[o.name for o in sess.get_outputs()],
                                 opset=opset_of(tmp / "model.onnx"), precision=precision, max_length=None,
                                 source_runs=[r.path for r in runs])
        del sess
        manifest.update(runtime={"genai": f"onnxruntime-genai (genai_config.json; {MANIFEST}; og.Adapters)",
                                 "dynalora": "manifest.json (use_adapter)"},
                        base_model=runs[0].info["base_model"],
                        adapters={n: a["file"] for n, a in info["adapters"].items()}, default_adapter=names[0],
                        adapter_runs={n: {"run": str(r.path.resolve()), "task": r.info["task"]["name"],
                                          "problem": r.info["task"]["problem"], "metrics": r.info.get("metrics", {})}
                                      for n, r in zip(names, runs, strict=True)},
                        adapter_ranks=info["lora_ranks"], model_bytes=sum(p.stat().st_size for p in tmp.glob("model.onnx*")))
        manifest["verification"] = {"builder": info.get("verification", {}), "tokenizer": info["tokenizer"]}
        written = write_export_manifest(tmp, manifest)
        if precision != "fp32":  # the quantised base decoder (no adapter active) against the fp32 base
            manifest["verification"]["quality"] = quantised_quality(tmp, hf_dir, None)
        from dynalora.export.merged import _greedy_parity

        manifest["verification"]["greedy"] = {n: _greedy_parity(r, r.model, tmp, precision, adapter=n)
                                              for n, r in zip(names, runs, strict=True)}
        written = write_export_manifest(tmp, manifest)
    return written


def quality_texts(run: Any) -> tuple[list[str], str]:
    """Held-out text for a quantised graph's quality: a run's evaluation prompts with their answers (as trained),
    else the bench's fixed sample sentences."""
    if run is not None:
        from dynalora.core.batches import load_data

        data = load_data(run.config)
        if data.spec.problem == "generation":
            from dynalora.core.generate import render

            texts = ["".join(render(run.tokenizer, data.spec, e)) for e in data.eval[:QUALITY_TEXTS]]
            return texts, f"the run's first {len(texts)} evaluation prompts with their answers"
        from dynalora.core.choice import prompt_text

        texts = [prompt_text(data.spec, e) for e in data.eval[:QUALITY_TEXTS]]
        return texts, f"the run's first {len(texts)} evaluation prompts"
    from dynalora.edge_runtime.bench import SAMPLE_SENTENCES

    texts = [" ".join(SAMPLE_SENTENCES[i:] + SAMPLE_SENTENCES[:i]) for i in range(min(QUALITY_TEXTS, len(SAMPLE_SENTENCES)))]
    return texts, f"{len(texts)} paragraphs of the bench's sample sentences (rotated)"


def quantised_quality(folder: Path, reference: Any, run: Any, extra_feeds: dict[str, np.ndarray] | None = None,
                      ) -> dict[str, Any]:
    """Perplexity change and next-token agreement of the folder's graph against PyTorch fp32 on held-out text;
    refuses a graph below the broken-graph floor (edge_runtime/lm_quality.py). extra_feeds: further graph inputs
    (a fused decoder's fusion_weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynalora.edge_runtime import load
    from dynalora.edge_runtime.feeds import ort_feeds
    from dynalora.edge_runtime.lm_quality import QUANT_TOP1_FLOOR, lm_quality

    model = reference
    if isinstance(reference, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32)
    model.eval()
    tokenizer = run.tokenizer if run is not None else AutoTokenizer.from_pretrained(str(reference))
    texts, what = quality_texts(run)
    runtime = load(folder, verify=False)
    context = json.loads((Path(folder) / "genai_config.json").read_text(encoding="utf-8"))["model"].get("context_length")
    limit = min(QUALITY_MAX_TOKENS, int(context or QUALITY_MAX_TOKENS))
    refs, gots, ids_all = [], [], []
    for text in texts:  # one text at a time: no padding, so every position is a real next token
        ids = np.asarray([tokenizer(text, add_special_tokens=True)["input_ids"][:limit]], dtype=np.int64)
        with torch.no_grad():
            refs.append(model(input_ids=torch.from_numpy(ids)).logits.float().numpy()[0])
        feeds = ort_feeds(runtime.session.get_inputs(), {"input_ids": ids}, runtime.head_dim)
        feeds.update(extra_feeds or {})
        gots.append(runtime.run_raw(feeds)[runtime.output_names.index("logits")][0])
        ids_all.append(ids[0])
    width = max(len(i) for i in ids_all)
    pad = lambda a, fill: np.stack([np.concatenate([x, np.full((width - len(x),) + x.shape[1:], fill, x.dtype)])  # noqa: E731
                                    for x in a])
    mask = np.stack([np.arange(width) < len(i) for i in ids_all]).astype(np.int64)
    quality = lm_quality(pad(refs, 0.0), pad(gots, 0.0), pad(ids_all, 0), mask)
    quality.update(text=what, floor_top1=QUANT_TOP1_FLOOR)
    if quality["top1_agreement"] < QUANT_TOP1_FLOOR:
        raise ExportError(f"the {runtime.manifest.precision} graph picks PyTorch fp32's next token on only "
                          f"{100 * quality['top1_agreement']:.1f}% of positions of {what} (floor "
                          f"{100 * QUANT_TOP1_FLOOR:.0f}%): it does not behave like the fp32 model; nothing was written")
    return quality


def fix_gguf_bytelevel_decoder(folder: Path) -> dict[str, Any]:
    """Replace a GGUF conversion's SentencePiece-style decoder chain on a byte-level BPE by the plain ByteLevel
    decoder, only when that decodes every probe text's tokens the same (see the module docstring)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return {"applied": False, "why": "no tokenizer.json"}
    data = json.loads(path.read_text(encoding="utf-8"))
    decoder, pre = data.get("decoder") or {}, data.get("pre_tokenizer") or {}
    parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else []
    kinds = [p.get("type") for p in parts]
    if not (pre.get("type") == "ByteLevel" and "ByteLevel" in kinds and "Replace" in kinds):
        return {"applied": False, "why": "not a GGUF-converted byte-level tokenizer"}
    from tokenizers import Tokenizer

    before = Tokenizer.from_str(json.dumps(data))
    fixed = dict(data)
    byte_level = next(p for p in parts if p.get("type") == "ByteLevel")
    fixed["decoder"] = {**byte_level, "add_prefix_space": pre.get("add_prefix_space", False)}
    if isinstance(fixed.get("model"), dict) and fixed["model"].get("byte_fallback"):
        fixed["model"] = {**fixed["model"], "byte_fallback": False}
    after = Tokenizer.from_str(json.dumps(fixed))
    for text in _PROBES:
        ids = before.encode(text).ids
        if after.encode(text).ids != ids or after.decode(ids) != before.decode(ids):
            return {"applied": False, "why": f"the plain ByteLevel decoder would change {text!r}"}
    path.write_text(json.dumps(fixed, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return {"applied": True, "was": kinds, "now": "ByteLevel", "checked": len(_PROBES)}
