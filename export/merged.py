"""`dynalora export merged` / `dynalora export base`: one plain ONNX graph per model.

    dynalora export merged --run runs/rt --out exports/rt [--quantize int8|fp16] [--opset 17] [--overwrite]
    dynalora export base --model smollm2-135m --task-kind text-generation-with-past --out exports/smol

merged: load the run -> `merged_model` (checked against the adapted model) -> save_pretrained into
EXPORT/torch/ -> optimum-onnx `main_export` (the plain export) -> graph optimisation -> [quantise] ->
verify against PyTorch on real evaluation texts -> manifest. The folder is built in a temporary sibling
and renamed only after every check passed.

Graph optimisation. BERT-family encoders go through `onnxruntime.transformers.optimizer` (Attention,
EmbedLayerNormalization, SkipLayerNormalization, BiasGelu fusions): ORT's own session-time optimiser
does not find these in optimum's graph, and they are what makes the export faster than the plain one.
Other architectures are saved after ORT's offline EXTENDED optimisation. Both the plain and the optimised
graph are timed on the verification batch; the optimised one is kept only if it matches PyTorch and is
at least 5% faster (the manifest records both latencies and the choice in verification.graph). Measured
here (benchmarks/results/edge.md) it usually is not: onnxruntime's session-time optimiser already fuses
optimum's MiniLM graph, so both graphs run at the same speed. int8 always starts from the plain graph.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dynalora.atomic import atomic_dir
from dynalora.core.outdir import OutLock
from dynalora.edge_runtime.feeds import ort_feeds
from dynalora.edge_runtime.tolerances import (
    BASE_LM_PARITY_ATOL_FP32,
    EMBEDDING_ACCURACY_LIMIT_POINTS,
    EXPORT_PARITY_ATOL_FP16,
    EXPORT_RECORDED_ATOL,
    QDQ_FAKE_QUANT_ATOL,
)
from dynalora.export.common import (
    PARITY_ATOL_FP32,
    accuracy,
    accuracy_of,
    base_manifest,
    encode,
    eval_logits,
    eval_examples,
    load_run_checked,
    max_abs,
    median_ms,
    opset_of,
    quiet_onnx_export,
    refuse_existing,
    run_logits,
    session,
    torch_logits,
    write_export_manifest,
)
from dynalora.export.errors import ExportError
from dynalora.export.mobile import FIXED_TARGETS, build_mobile, check_target, pad_token_id
from dynalora.export.quantize import DEFAULT_CALIBRATION_SAMPLES

QUANTIZE = (None, "int8", "qdq-int8", "fp16")
CALIBRATION_BATCH = 8  # calibration texts per onnxruntime run, padded to the longest like evaluation and runtime
BERT_FAMILY = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}
VERIFY_BATCH = 32
LM_PROBLEMS = ("multiple_choice", "generation")  # runs whose adapter is a causal-LM adapter
GREEDY_PROMPTS, GREEDY_TOKENS = 4, 16  # greedy-generation parity of a merged causal-LM export
WORK = ".work"  # scratch folder inside the temporary export folder; removed before the manifest


def optimum_export(model_dir: Path, output: Path, task: str, opset: int | None) -> Path:
    """optimum-onnx `main_export` of a saved HF folder; returns the model.onnx path."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from optimum.exporters.onnx import main_export

    try:
        with quiet_onnx_export():
            main_export(str(model_dir), output=str(output), task=task, opset=opset, do_validation=False,
                        local_files_only=True)
    except (ValueError, KeyError, NotImplementedError, RuntimeError, TypeError) as exc:
        raise ExportError(f"the ONNX exporter cannot handle this model ({_exporter_message(exc)})") from None
    path = output / "model.onnx"
    if not path.is_file():
        raise ExportError(f"the ONNX exporter wrote no model.onnx for {model_dir} (task {task})")
    return path


def _exporter_message(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}"


def optimise_graph(plain: Path, out: Path, config: Any) -> str:
    """Write the optimised graph of `plain` to `out`; returns the method used."""
    import onnxruntime as ort

    model_type = getattr(config, "model_type", "")
    if model_type in BERT_FAMILY:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(plain), model_type="bert", num_heads=int(config.num_attention_heads),
                                   hidden_size=int(config.hidden_size), opt_level=0)
        optimized.save_model_to_file(str(out))
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        return f"onnxruntime.transformers.optimizer(bert): {fused}"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(plain), sess_options=options, providers=["CPUExecutionProvider"])
    return "onnxruntime offline ORT_ENABLE_EXTENDED"


def _pick_graph(plain: Path, optimised: Path, feeds: dict[str, Any], reference: Any, verification: dict) -> Path:
    """Keep the optimised graph if it matches PyTorch and is >= 5% faster than the plain one."""
    s_plain, s_opt = session(plain), session(optimised)
    diff_plain = max_abs(run_logits(s_plain, feeds), reference)
    diff_opt = max_abs(run_logits(s_opt, feeds), reference)
    ms_plain, ms_opt = median_ms(s_plain, feeds), median_ms(s_opt, feeds)
    verification.update(plain_vs_torch_max_abs=diff_plain, optimized_vs_torch_max_abs=diff_opt,
                        plain_ms=ms_plain, optimized_ms=ms_opt)
    if diff_opt <= PARITY_ATOL_FP32 and ms_opt <= ms_plain * 0.95:
        verification["graph"] = "optimized"
        return optimised
    verification["graph"] = "plain"
    return plain


def export_merged(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, quantize: str | None = None,
                  opset: int | None = None, overwrite: bool = False, optimize: bool = True,
                  accuracy_limit: int | None = None, target: str | None = None,
                  calibration_samples: int | None = None) -> dict[str, Any]:
    """Export a run merged into its base weights; returns the manifest written.

    target: "android" | "ios" | "generic" also writes the mobile package (export/mobile.py).
    calibration_samples: training texts a qdq-int8 export calibrates on (default DEFAULT_CALIBRATION_SAMPLES)."""
    if quantize not in QUANTIZE:
        raise ExportError(f"--quantize must be one of {', '.join(q for q in QUANTIZE if q)}, got {quantize!r}")
    _check_calibration_samples(quantize, calibration_samples)
    out = refuse_existing(out, overwrite)
    run = load_run_checked(run_dir)
    problem = run.info["task"]["problem"]
    if quantize == "qdq-int8" and problem != "classification":  # refuse before any export work
        alternative = "fp32 or --quantize int8" if problem in LM_PROBLEMS else "fp32"
        raise ExportError("qdq-int8 export is only verified for classification runs (accuracy is the check); "
                          f"export this {problem} run with {alternative}")
    check_target(target)
    if run.info["task"]["problem"] in LM_PROBLEMS:
        if target is not None:
            raise ExportError("--target builds mobile packages of encoder exports (classification / regression); "
                              "a causal-LM decoder goes to devices through onnxruntime-genai, not ORT Mobile")
        return _export_merged_lm(run, out, quantize, opset, overwrite)
    if quantize == "int8" and run.info["task"]["problem"] != "classification":  # refuse before any export work
        raise ExportError("int8 export is only verified for classification runs (accuracy is the check); "
                          f"export this {run.info['task']['problem']} run with fp32")
    examples = eval_examples(run)
    max_length = int(run.config.max_length)
    input_names = list(run.tokenizer.model_input_names)
    feeds = encode(run.tokenizer, examples[:VERIFY_BATCH], max_length, input_names)
    import torch

    from dynalora.export.merge import merged_model

    merged = merged_model(run, {k: torch.from_numpy(v) for k, v in feeds.items()})
    labels = run.label_names
    if labels:
        merged.config.id2label = dict(enumerate(labels))
        merged.config.label2id = {n: i for i, n in enumerate(labels)}
    reference = torch_logits(merged, feeds)
    verification: dict[str, Any] = {"inputs": f"{len(examples[:VERIFY_BATCH])} evaluation texts of {run.path.name}"}

    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:  # one writer at a time
        work = tmp / WORK
        merged.save_pretrained(tmp / "torch", safe_serialization=True)
        merged.config.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
        plain = optimum_export(tmp / "torch", work / "plain", "text-classification", opset)
        chosen = plain
        if optimize and target in FIXED_TARGETS:
            # the optimiser's fusions are com.microsoft contrib ops (Attention, SkipLayerNormalization, BiasGelu)
            # that only the CPU / CUDA EPs run: a phone's NNAPI / CoreML needs the standard operators
            verification["optimization"] = f"skipped: --target {target} keeps standard ONNX operators for NNAPI / CoreML"
        elif optimize:
            try:
                verification["optimization"] = optimise_graph(plain, work / "optimized.onnx", merged.config)
            except (RuntimeError, ValueError, AttributeError) as exc:
                verification["optimization"] = f"failed, plain graph kept: {_exporter_message(exc)}"
            else:
                chosen = _pick_graph(plain, work / "optimized.onnx", feeds, reference, verification)
        fp32 = session(chosen)
        fp32_logits = run_logits(fp32, feeds)
        diff = max_abs(fp32_logits, reference)
        verification["fp32_vs_torch_max_abs"] = diff
        if not diff <= PARITY_ATOL_FP32:
            raise ExportError(f"the ONNX export of {run.path} differs from PyTorch by {diff:.3g} on evaluation "
                              f"inputs (> {PARITY_ATOL_FP32:g}); nothing was written")
        precision = "fp32"
        final = chosen
        if quantize == "int8":
            # from the plain graph: quantize_dynamic's shape inference cannot type the fused contrib ops, and
            # onnxruntime re-applies its own fusions to the quantised graph at load time
            final, precision = _int8(plain, work, run, examples, max_length, fp32, accuracy_limit, verification)
        elif quantize == "qdq-int8":  # from the plain graph too, for the same reason
            final, precision = _qdq_int8(plain, work, run, examples, max_length, fp32, accuracy_limit, verification,
                                         calibration_samples or DEFAULT_CALIBRATION_SAMPLES)
        elif quantize == "fp16":
            final, precision = _fp16(plain, work, feeds, reference, verification)
        # the keys edge_runtime's bench reads: the final graph's max abs logit diff vs PyTorch and its tolerance
        verification["max_abs_diff"] = max_abs(run_logits(session(final), feeds), reference)
        verification["tolerance"] = EXPORT_RECORDED_ATOL[precision]
        shutil.copyfile(final, tmp / "model.onnx")
        if (final.parent / (final.name + ".data")).is_file():
            raise ExportError("the model needs external data (> 2 GB); this exporter writes single-file models")
        shutil.rmtree(work)
        sess = session(tmp / "model.onnx")
        manifest = base_manifest(
            kind="merged", run_info=run.info, model_type=str(merged.config.model_type),
            inputs=[i.name for i in sess.get_inputs()], outputs=[o.name for o in sess.get_outputs()],
            opset=opset_of(tmp / "model.onnx"), precision=precision, max_length=max_length,
            source_runs=[str(run.path)])
        manifest["verification"] = verification
        if quantize in ("int8", "qdq-int8"):
            manifest["quantization"] = "dynamic-int8" if quantize == "int8" else "qdq-int8"
        manifest["torch_dir"] = "torch"
        manifest["run_metrics"] = run.info.get("metrics", {})
        if target is not None:
            manifest["mobile"] = build_mobile(tmp, target, feeds, seq=max_length, pad_id=pad_token_id(run.tokenizer),
                                              precision=precision)
        written = write_export_manifest(tmp, manifest)
    return written


def _check_calibration_samples(quantize: str | None, samples: int | None) -> None:
    if samples is None:
        return
    if quantize != "qdq-int8":
        raise ExportError("--calibration-samples applies to --quantize qdq-int8 only (dynamic int8 is not calibrated)")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExportError(f"--calibration-samples must be an integer >= 1, got {samples!r}")


def _int8(src: Path, work: Path, run: Any, examples: list, max_length: int, fp32: Any, limit: int | None,
          verification: dict) -> tuple[Path, str]:
    """int8 graph of `src`, judged by accuracy (classification runs only: export_merged refuses others up front).
    Its vocabulary embedding table is int8 too where accuracy allows (`_with_int8_embeddings`)."""
    from dynalora.export.quantize import quantize_int8

    dst = work / "int8.onnx"
    info = quantize_int8(src, dst, embeddings=False)
    subset = examples[:limit] if limit else examples
    acc32 = accuracy(fp32, run.tokenizer, subset, max_length)
    acc8 = accuracy(session(dst), run.tokenizer, subset, max_length)
    final, acc8 = _with_int8_embeddings(dst, work / "int8_embeddings.onnx", acc8, run, subset, max_length, info)
    verification["int8"] = info
    verification.update(accuracy_split=f"evaluation split of {run.path.name} ({len(subset)} examples)",
                        accuracy_fp32=acc32, accuracy_int8=acc8, accuracy_change_points=100 * (acc8 - acc32))
    return final, "int8"


def _with_int8_embeddings(graph: Path, dst: Path, acc_without: float, run: Any, subset: list, max_length: int,
                          info: dict) -> tuple[Path, float]:
    """`graph` with its vocabulary embedding table stored as int8 (quantize.quantize_embeddings), kept only if
    that costs at most EMBEDDING_ACCURACY_LIMIT_POINTS of accuracy against the same graph with the fp32 table,
    on the same evaluation texts (see edge_runtime/tolerances.py for why the comparison is with that graph
    and not with fp32). Returns the graph kept and its accuracy; the decision goes to info["embeddings"]."""
    from dynalora.export.quantize import quantize_embeddings

    try:
        record = quantize_embeddings(graph, dst)
    except ExportError as exc:
        info["embeddings"] = {"quantized": False, "reason": str(exc)}
        return graph, acc_without
    acc_with = accuracy(session(dst), run.tokenizer, subset, max_length)
    change = 100 * (acc_with - acc_without)
    record.update(accuracy_fp32_table=acc_without, accuracy_int8_table=acc_with, accuracy_change_points=change,
                  limit_points=EMBEDDING_ACCURACY_LIMIT_POINTS)
    keep = change >= -EMBEDDING_ACCURACY_LIMIT_POINTS
    record["quantized"] = keep
    info["embeddings"] = record
    if not keep:
        record["reason"] = (f"the int8 table cost {-change:.2f} points of accuracy (limit "
                            f"{EMBEDDING_ACCURACY_LIMIT_POINTS:g}); the table stays fp32")
        return graph, acc_without
    info["op_types"] = [*info["op_types"], "Gather"]
    return dst, acc_with


def _qdq_int8(src: Path, work: Path, run: Any, examples: list, max_length: int, fp32: Any, limit: int | None,
              verification: dict, samples: int) -> tuple[Path, str]:
    """Static int8 in QDQ format (quantize.quantize_qdq_int8), calibrated on `samples` texts of the run's own
    training split; judged by accuracy on the evaluation split like `_int8`, the embedding table likewise.

    Parity with its own fake-quant reference: the same graph run with ORT_DISABLE_ALL executes every
    QuantizeLinear / DequantizeLinear literally in float (fake quantisation, what the calibration and any
    other backend's QDQ reading compute), with ORT_ENABLE_ALL the CPU EP fuses them into int8 kernels. The
    export is refused when their logits differ by more than QDQ_FAKE_QUANT_ATOL on any evaluation text."""
    import onnxruntime as ort

    from dynalora.export.common import train_examples
    from dynalora.export.quantize import quantize_qdq_int8

    texts = train_examples(run, samples)
    names = [i.name for i in fp32.get_inputs()]
    calibration = [encode(run.tokenizer, texts[i : i + CALIBRATION_BATCH], max_length, names)
                   for i in range(0, len(texts), CALIBRATION_BATCH)]
    dst = work / "qdq.onnx"
    info = quantize_qdq_int8(src, dst, calibration, embeddings=False)
    info.update(calibration_samples=len(texts), calibration_batch=CALIBRATION_BATCH,
                calibration_texts=f"seeded random sample of the training split of {run.path.name}")
    subset = examples[:limit] if limit else examples
    acc32 = accuracy(fp32, run.tokenizer, subset, max_length)
    acc8 = accuracy(session(dst), run.tokenizer, subset, max_length)
    final, acc8 = _with_int8_embeddings(dst, work / "qdq_embeddings.onnx", acc8, run, subset, max_length, info)
    fused = eval_logits(session(final), run.tokenizer, subset, max_length)
    fake = eval_logits(session(final, opt_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL), run.tokenizer, subset,
                       max_length)
    diff = max_abs(fused, fake)
    info["fake_quant_parity"] = {
        "reference": "the same QDQ graph with ORT_DISABLE_ALL (QuantizeLinear / DequantizeLinear in float)",
        "compared": "ORT_ENABLE_ALL on the CPU EP (QDQ fused into int8 kernels)",
        "texts": len(subset), "max_abs": diff, "argmax_agreement": float((fused.argmax(-1) == fake.argmax(-1)).mean()),
        "accuracy_fake_quant": accuracy_of(fake, subset), "tolerance": QDQ_FAKE_QUANT_ATOL}
    verification["int8"] = info
    verification.update(accuracy_split=f"evaluation split of {run.path.name} ({len(subset)} examples)",
                        accuracy_fp32=acc32, accuracy_int8=acc8, accuracy_change_points=100 * (acc8 - acc32))
    if not diff <= QDQ_FAKE_QUANT_ATOL:
        raise ExportError(f"the qdq-int8 graph's int8 kernels differ from its fake-quant reference by {diff:.3g} "
                          f"(> {QDQ_FAKE_QUANT_ATOL:g}) on evaluation texts; nothing was written (use --quantize int8)")
    return final, "int8"


def _fp16(src: Path, work: Path, feeds: dict, reference: Any, verification: dict) -> tuple[Path, str]:
    from dynalora.export.quantize import convert_fp16

    dst = work / "fp16.onnx"
    verification["fp16"] = convert_fp16(src, dst)
    diff = max_abs(run_logits(session(dst), feeds), reference)
    verification["fp16_vs_torch_max_abs"] = diff
    if not diff <= EXPORT_PARITY_ATOL_FP16:
        raise ExportError(f"the fp16 export differs from PyTorch fp32 by {diff:.3g} (> {EXPORT_PARITY_ATOL_FP16:g}); "
                          "export with fp32")
    return dst, "fp16"


def _export_merged_lm(run: Any, out: Path, quantize: str | None, opset: int | None, overwrite: bool) -> dict[str, Any]:
    """A multiple-choice or generation run is a causal-LM adapter: merge it and export the LM as text
    generation with KV cache (option scores are the LM's log-probabilities; the runtime's generate() runs it).

    Besides the base check (logits of a fixed prompt), the export's greedy generations on the run's first
    evaluation prompts are compared with the merged PyTorch model's (`_greedy_parity`): fp32 must produce
    the same tokens or nothing is written; an int8 export records its token agreement."""
    import tempfile

    from dynalora.export.merge import merged_model

    if quantize == "fp16":
        raise ExportError("fp16 is not offered for causal-LM exports; use fp32 or --quantize int8")
    merged = merged_model(run)  # checked against the adapted model
    with tempfile.TemporaryDirectory(prefix="dynalora-merged-lm-") as tmpdir:
        merged.save_pretrained(tmpdir, safe_serialization=True)
        run.tokenizer.save_pretrained(tmpdir)
        return export_base(tmpdir, out, quantize=quantize, opset=opset, overwrite=overwrite,
                           merged_from=(run.path, run.info),
                           check=lambda folder, precision: _greedy_parity(run, merged, folder, precision))


def _greedy_parity(run: Any, merged: Any, folder: Path, precision: str, adapter: str | None = None) -> dict[str, Any]:
    """Greedy tokens of the export (our ORT runtime, KV cache; with `adapter` active) vs the PyTorch model
    (`merged`: the merged or the adapted model of the run), one prompt at a time."""
    import numpy as np

    from dynalora.core.batches import load_data
    from dynalora.core.choice import prompt_text
    from dynalora.core.generate import eos_ids, generate_ids, prompt_ids
    from dynalora.edge_runtime import load

    data = load_data(run.config)
    examples = data.eval[:GREEDY_PROMPTS]
    if data.spec.problem == "generation":
        prompts = [prompt_ids(run.tokenizer, data.spec, e) for e in examples]
        steps = min(GREEDY_TOKENS, int(run.config.max_new_tokens))
    else:
        prompts = [list(run.tokenizer(prompt_text(data.spec, e))["input_ids"]) for e in examples]
        steps = GREEDY_TOKENS
    runtime = load(folder, verify=False)
    if adapter is not None:
        runtime.use_adapter(adapter)
    eos = set(eos_ids(run.tokenizer, merged))
    same = total = identical = 0
    for p in prompts:
        want = generate_ids(merged, run.tokenizer, [p], steps)[0]
        got = runtime.greedy_decode(np.asarray([p], dtype=np.int64), steps, stop_at_eos=True)["tokens"][0].tolist()
        got = got[: next((k for k, t in enumerate(got) if t in eos), len(got))]  # as generate_ids: up to eos
        n = max(len(want), len(got))
        same += sum(a == b for a, b in zip(want, got))
        total += n
        identical += want == got
    record = {"prompts": len(prompts), "max_new_tokens": steps, "identical_sequences": identical,
              "token_agreement": same / total if total else 1.0, "tokens": total,
              "data": "the run's evaluation split, first prompts"}
    if precision == "fp32" and identical != len(prompts):
        raise ExportError(f"the fp32 export's greedy generations differ from PyTorch on {len(prompts) - identical} of "
                          f"{len(prompts)} evaluation prompts{f' (adapter {adapter})' if adapter else ''}; nothing was written")
    return record


def export_base(model: str, out: str | os.PathLike[str], *, task_kind: str = "text-generation-with-past",
                quantize: str | None = None, opset: int | None = None, overwrite: bool = False,
                with_torch: bool = True, merged_from: tuple[Path, dict[str, Any]] | None = None,
                check: Any = None) -> dict[str, Any]:
    """Export a plain base model (no run), e.g. a causal LM with its KV cache for decode benchmarks.

    with_torch: copy the HF weights into EXPORT/torch/ so `dynalora bench --compare-torch` can run them.
    merged_from: (run folder, run.json) when `model` is a run's merged causal LM (`export merged`).
    check(folder, precision) -> dict: a further verification of the finished folder (recorded under
    verification.greedy); it raises to refuse the export, and then nothing is written.
    """
    from dynalora.errors import DynaloraError
    from dynalora.core.models import resolve_model_path

    if quantize not in (None, "int8"):
        raise ExportError(f"export base supports --quantize int8 only, got {quantize!r}")
    out = refuse_existing(out, overwrite)
    try:
        path = Path(resolve_model_path(model))
    except DynaloraError as exc:
        raise ExportError(str(exc)) from None
    import transformers

    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    with OutLock(out, "export"), atomic_dir(out, overwrite=overwrite) as tmp:  # one writer at a time
        work = tmp / WORK
        plain = optimum_export(path, work / "plain", task_kind, opset)
        for item in (work / "plain").iterdir():  # config, generation config, tokenizer files
            if item.is_file() and item.suffix != ".onnx" and not item.name.endswith(".onnx.data"):
                shutil.copyfile(item, tmp / item.name)
        _save_padded_tokenizer(tmp)
        verification = _verify_base(path, plain, task_kind)
        final, precision = plain, "fp32"
        if quantize == "int8":
            from dynalora.export.quantize import quantize_int8, quantize_int8_blockwise

            final, precision = work / "int8.onnx", "int8"
            # causal LMs: block-wise (see quantize.py for the measurements behind this choice)
            if task_kind.startswith("text-generation"):
                verification["int8"] = quantize_int8_blockwise(plain, final)
            else:  # MatMul-only: a base model has no evaluation split to judge an int8 embedding table by
                verification["int8"] = quantize_int8(plain, final, embeddings=False)
        shutil.copyfile(final, tmp / "model.onnx")
        shutil.rmtree(work)
        if with_torch:
            (tmp / "torch").mkdir()
            for item in path.iterdir():
                if item.suffix in (".json", ".safetensors") and not item.name.startswith("tokenizer"):
                    shutil.copyfile(item, tmp / "torch" / item.name)
        sess = session(tmp / "model.onnx")
        causal = task_kind.startswith("text-generation")
        manifest = base_manifest(
            kind="base", run_info=None if causal else {"task": {"name": task_kind, "problem": "classification",
                                                                 "label_names": []}},
            model_type=str(config.model_type), inputs=[i.name for i in sess.get_inputs()],
            outputs=[o.name for o in sess.get_outputs()], opset=opset_of(tmp / "model.onnx"),
            precision=precision, max_length=None, source_runs=[])
        manifest["base_model"] = str(path)
        if merged_from is not None:
            run_path, info = merged_from
            manifest.update(kind="merged", source_runs=[str(Path(run_path).resolve())], base_model=info["base_model"],
                            source_task={k: info["task"].get(k) for k in ("name", "problem", "prompt")},
                            run_metrics=info.get("metrics", {}))
        manifest["verification"] = verification
        written = write_export_manifest(tmp, manifest)
        if check is not None:
            manifest["verification"]["greedy"] = check(tmp, precision)
            written = write_export_manifest(tmp, manifest)
    return written


def _verify_base(path: Path, plain: Path, task_kind: str) -> dict[str, Any]:
    """fp32 graph vs PyTorch on a fixed 16-token prompt (empty KV cache); refuses a mismatch."""
    import numpy as np
    import torch
    import transformers

    if not task_kind.startswith("text-generation"):
        return {}
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    ids = (np.arange(16, dtype=np.int64)[None, :] * 37 + 11) % int(model.config.vocab_size)  # (1, 16)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    sess = session(plain)
    feeds = ort_feeds(sess.get_inputs(), {"input_ids": ids})  # full mask, positions, empty KV cache
    diff = max_abs(sess.run(["logits"], feeds)[0], want)
    if not diff <= BASE_LM_PARITY_ATOL_FP32:
        raise ExportError(f"the ONNX export of {path} differs from PyTorch by {diff:.3g} "
                          f"(> {BASE_LM_PARITY_ATOL_FP32:g}); nothing was written")
    return {"inputs": "a fixed 16-token prompt", "max_abs_diff": diff, "tolerance": BASE_LM_PARITY_ATOL_FP32,
            "checked_graph": "fp32 (the int8 graph is derived from it; its quality is measured by perplexity)"}


def _save_padded_tokenizer(folder: Path) -> None:
    """Give a tokenizer without a pad token one (core.models.ensure_pad_token: eos, else unk), so batched
    encoding works in the runtime and the bench."""
    from transformers import AutoTokenizer

    from dynalora.core.models import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None and ensure_pad_token(tokenizer):
        tokenizer.save_pretrained(folder)
