"""`dynalora bench`: latency, throughput and memory of an export folder, optionally against PyTorch.

    dynalora bench exports/rt --threads 1,2 --batch 1,8 --seq 32,128 --compare-torch \
        --json bench.json --plot bench.png

Order of work (after onnxruntime's benchmark_helper): check every input first (flags, export folder,
checksums, providers, output files) so that nothing runs on bad input; validate numerics (onnxruntime
against the PyTorch weights in EXPORT/torch with --compare-torch, otherwise finite outputs plus the
manifest's export-time verification); then time each configuration in a fresh subprocess
(`bench_worker`) so its peak RSS is its own. Records keep raw floats; only `markdown_table` formats.
The runtime-only install (`pip install dynalora`) runs everything here but --compare-torch (torch,
transformers) and --plot (matplotlib), which ask for the `train` extra in one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynalora.atomic import atomic_path, write_json
from dynalora.errors import TRAIN_INSTALL
from dynalora.edge_runtime.bench_worker import BenchError, OnnxEngine, TorchEngine
from dynalora.edge_runtime.envinfo import environment
from dynalora.edge_runtime.manifest import Manifest, read_manifest, verify_checksums
from dynalora.edge_runtime.predictor import max_positions, model_variant
from dynalora.edge_runtime.providers import canonical_provider, get_profile, resolve_providers
from dynalora.edge_runtime.tokenizer import load_tokenizer
from dynalora.edge_runtime.tolerances import BENCH_PARITY_ATOL, INT8_BROKEN_ACCURACY_DROP_POINTS

SAMPLE_SENTENCES = (
    "The film is a gripping story with a great cast and a script that never lets go.",
    "I thought the plot was boring and the music was far too loud for such a quiet movie.",
    "Shares of the company rose after the bank reported better profit than the market expected.",
    "The team won the match late in the season when their young player scored twice.",
    "She said the new phone had better software but the price was still too high.",
    "Nothing in this dull, overlong sequel is as funny as the first ten minutes of the original.",
    "The government will hold an election next year, the minister told people in the city.",
    "A bright, warm and surprisingly moving film about children growing up in a small town.",
)
# Tokens (batch x seq) of one configuration: far beyond any edge workload, and the synthetic batch alone
# would fill the memory of the machine long before a worker could time it.
MAX_TOKENS = 1 << 20


def parse_int_list(text: str | Sequence[int], flag: str, minimum: int = 1) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; anything else is a BenchError naming the flag."""
    if not isinstance(text, str):
        values = list(text)
    else:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise BenchError(f"{flag} takes comma-separated integers like 1,2,4; got {text!r}") from None
    if not values or any(not isinstance(v, int) or v < minimum for v in values):
        raise BenchError(f"{flag} takes integers >= {minimum}; got {text!r}")
    return list(dict.fromkeys(values))


def check_arguments(threads: Sequence[int], batches: Sequence[int], seqs: Sequence[int], repeats: int, warmup: int,
                    decode_tokens: int, profile: str | None, timeout_s: float) -> None:
    """Refuse bad settings in the parent, before any export is read or any worker starts (one line each)."""
    if profile is not None:
        get_profile(profile)  # ProviderError naming the known profiles
    cores = os.cpu_count() or 1
    if max(threads) > cores:
        raise BenchError(f"--threads {max(threads)} exceeds the {cores} logical cores of this machine: "
                         "more threads than cores measures contention, not the model; use at most "
                         f"--threads {cores}")
    if max(batches) * max(seqs) > MAX_TOKENS:
        raise BenchError(f"--batch {max(batches)} x --seq {max(seqs)} = {max(batches) * max(seqs)} tokens per run is "
                         f"beyond the benchmark's {MAX_TOKENS} tokens; use a smaller --batch or --seq")
    if repeats < 1:
        raise BenchError(f"--repeats must be >= 1, got {repeats}")
    if warmup < 0 or decode_tokens < 0:
        raise BenchError(f"--warmup and --decode-tokens must be >= 0, got {warmup} and {decode_tokens}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise BenchError(f"--timeout must be a finite number of seconds > 0, got {timeout_s}")


def check_output_path(flag: str, value: str | None, overwrite: bool) -> None:
    """--json / --plot: a file path, not a folder; an existing file only with --overwrite."""
    if not value:
        return
    path = Path(value)
    if path.is_dir():
        raise BenchError(f"{flag} {value} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise BenchError(f"{flag} file {value} already exists; pass --overwrite or choose another path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BenchError(f"{flag} {value}: {parent} is a file, not a folder")


def synthetic_batch(tokenizer: Any, batch: int, seq: int) -> dict[str, np.ndarray]:
    """`batch` rows of real-looking text, each exactly `seq` tokens (deterministic: same call, same ids)."""
    n = len(SAMPLE_SENTENCES)
    # Each row starts at a different sentence and repeats enough text to overflow `seq`, so truncation
    # (not padding) sets the length and the attention mask is all ones, as in a full batch.
    repeat = seq // 8 + 2
    texts = [" ".join(SAMPLE_SENTENCES[(i + k) % n] for k in range(repeat)) for i in range(batch)]
    # (a tokenizer without a pad token, e.g. a genai folder's SmolLM2: the rows are full, nothing to pad)
    padding = "max_length" if tokenizer.pad_token is not None else False
    enc = tokenizer(texts, padding=padding, truncation=True, max_length=seq, return_tensors="np")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
    assert arrays["input_ids"].shape == (batch, seq), arrays["input_ids"].shape
    return arrays


def require_training_stack(flag: str, modules: Sequence[str]) -> None:
    """--compare-torch / --plot need packages of the `train` extra; the runtime-only install has none of them."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        raise BenchError(f"{flag} needs {' and '.join(absent)}, which the runtime-only install does not include: "
                         f"{TRAIN_INSTALL}, or drop {flag}")


def _progress(items: Sequence[Any], enabled: bool) -> Any:
    """A tqdm progress bar on stderr where tqdm is installed (the `train` extra); no bar without it."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return items
        return tqdm(items, desc="bench", unit="config", file=sys.stderr)
    return items


def validate(folder: Path, manifest: Manifest, provider: str, arrays: dict[str, np.ndarray], compare_torch: bool,
             threads: int, allow_fallback: bool, adapter: str | None = None, variant: str | None = None,
             ) -> dict[str, Any]:
    """Check numerics before timing: onnxruntime vs torch, or finiteness + the export-time verification."""
    ort_logits = OnnxEngine(folder, provider, threads, None, allow_fallback, adapter, variant).forward(arrays)()
    finite = bool(np.all(np.isfinite(ort_logits)))
    if not finite:
        raise BenchError(f"onnxruntime ({provider}) produced NaN/inf on the synthetic batch; re-export the model")
    result: dict[str, Any] = {"provider": provider, "finite": finite, "batch": int(arrays["input_ids"].shape[0]),
                              "seq": int(arrays["input_ids"].shape[1])}
    recorded = manifest.verification or {}
    tolerance = float(recorded.get("tolerance", BENCH_PARITY_ATOL[manifest.precision]))
    if compare_torch and manifest.problem == "causal-lm" and manifest.precision != "fp32":
        # a quantised LM is judged by what quantisation promises (edge_runtime/lm_quality.py): the next-token
        # choice and the perplexity of the same text, not an fp32 logit bound its full-vocabulary logits exceed
        from dynalora.edge_runtime.lm_quality import QUANT_TOP1_FLOOR, lm_quality

        torch_logits = TorchEngine(folder, manifest.problem, threads, "cpu").forward(arrays)()
        quality = lm_quality(np.asarray(torch_logits), np.asarray(ort_logits), arrays["input_ids"],
                             arrays.get("attention_mask"))
        diff = float(np.max(np.abs(ort_logits.astype(np.float64) - torch_logits)))
        result.update(compared_to="torch (fp32) next-token agreement", max_abs_diff=diff, **quality,
                      top1_floor=QUANT_TOP1_FLOOR)
        if not quality["top1_agreement"] >= QUANT_TOP1_FLOOR:
            raise BenchError(f"the {manifest.precision} graph picks the same next token as PyTorch fp32 on only "
                             f"{100 * quality['top1_agreement']:.1f}% of positions (floor {100 * QUANT_TOP1_FLOOR:.0f}%): "
                             "it does not behave like the fp32 model; re-export (int8, or fp32)")
    elif compare_torch and manifest.precision == "int8" and "accuracy_change_points" in recorded:
        # an int8 classifier: the logit gap to fp32 is shown, the verdict is the recorded accuracy (below)
        torch_logits = TorchEngine(folder, manifest.problem, threads, "cpu").forward(arrays)()
        diff = float(np.max(np.abs(ort_logits.astype(np.float64) - torch_logits)))
        agree = float(np.mean(np.asarray(ort_logits).argmax(-1) == np.asarray(torch_logits).argmax(-1)))
        result.update(compared_to="torch (fp32), verdict by the recorded accuracy", max_abs_diff=diff,
                      label_agreement=agree)
        _check_int8_accuracy(recorded, result)
    elif compare_torch:
        torch_logits = TorchEngine(folder, manifest.problem, threads, "cpu").forward(arrays)()
        diff = float(np.max(np.abs(ort_logits.astype(np.float64) - torch_logits)))
        tolerance = max(tolerance, BENCH_PARITY_ATOL[manifest.precision])
        result.update(compared_to="torch", max_abs_diff=diff, tolerance=tolerance)
        if not diff <= tolerance:
            raise BenchError(f"onnxruntime ({provider}) and PyTorch disagree: max abs diff {diff:.3g} > {tolerance:.3g}; "
                             "the export does not match torch/ (re-export)")
    elif manifest.precision == "int8" and "accuracy_change_points" in recorded:
        # an int8 classifier is judged by what quantisation promises, its accuracy on the run's evaluation split
        # (recorded by the export), not by an fp32 logit bound: a fully int8 QDQ graph's logits move by more
        # than 0.5 while its accuracy moves by under a point
        result.update(compared_to="manifest accuracy", max_abs_diff=recorded.get("max_abs_diff"))
        _check_int8_accuracy(recorded, result)
    elif recorded and "max_abs_diff" not in recorded:
        # genai folders record the builder's, the router's and the greedy checks, each of which refused the export
        # had it failed: their presence is the verdict
        result.update(compared_to="manifest (export checks: " + ", ".join(sorted(recorded)) + ")",
                      max_abs_diff=None, tolerance=None)
    elif recorded:
        diff = float(recorded.get("max_abs_diff", float("nan")))
        result.update(compared_to="manifest", max_abs_diff=diff, tolerance=tolerance)
        if not diff <= tolerance:
            raise BenchError(f"the manifest records a failed export check (max abs diff {diff:.3g} > tolerance "
                             f"{tolerance:.3g}); re-export before benchmarking")
    else:
        result.update(compared_to=None, max_abs_diff=None, tolerance=None)
    return result


def _check_int8_accuracy(recorded: dict[str, Any], result: dict[str, Any]) -> None:
    change = float(recorded["accuracy_change_points"])
    result.update(accuracy_change_points=change, limit_points=-INT8_BROKEN_ACCURACY_DROP_POINTS)
    if not change >= -INT8_BROKEN_ACCURACY_DROP_POINTS:
        raise BenchError(f"the manifest records an int8 graph {-change:.2f} points less accurate than fp32 (more "
                         f"than {INT8_BROKEN_ACCURACY_DROP_POINTS:g}: a broken quantisation); re-export with fp32")


def _run_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dynalora.edge_runtime.bench_worker", "--spec", json.dumps(spec)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(spec["threads"]))
    what = f"{spec['engine']} {spec['provider']} threads={spec['threads']} batch={spec['batch']} seq={spec['seq']}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"benchmark configuration ({what}) ran past {timeout_s:.0f} s; lower --repeats or --seq") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1]) if lines else None
    if record is None or "error" in record or proc.returncode != 0:
        why = record["error"] if record and "error" in record else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"benchmark configuration ({what}) failed: {why}")
    return record


def run_bench(export_dir: str | os.PathLike[str], providers: Sequence[str] | None = None,
              threads: Sequence[int] = (1,), batches: Sequence[int] = (1,), seqs: Sequence[int] = (32,),
              compare_torch: bool = False, repeats: int = 20, warmup: int = 3, *, allow_fallback: bool = False,
              profile: str | None = None, decode_tokens: int = 32, adapter: str | None = None,
              timeout_s: float = 600.0, progress: bool = True, variant: str | None = None,
              genai: bool = False) -> dict[str, Any]:
    """Benchmark an export folder; returns {"environment", "settings", "validation", "records", "device_eps"}.

    variant: which graph of the folder (onnx, ort, fixed, fixed-ort: see edge_runtime.load); a fixed-shape graph
    takes exactly its batch x sequence. profile: a device profile; one with a memory cap (mobile-cpu) marks each
    record `within_memory_cap` (bench_main exits 1 if one is not).

    providers: names like "cpu" / "cuda" (None = the best available). One record per (engine,
    provider, threads, batch, seq); with compare_torch also a torch record per (threads, batch, seq),
    and each onnxruntime record gets `speedup_vs_torch` (torch p50 / onnxruntime p50). genai: also time the
    folder with onnxruntime-genai (an `export ... --runtime genai` or causal-LM `export fused` folder, CPU); each
    onnxruntime record then gets `decode_vs_genai` (our decode tokens/s / genai's).
    """
    folder = Path(export_dir)
    threads, batches, seqs = (parse_int_list(threads, "--threads"), parse_int_list(batches, "--batch"),
                              parse_int_list(seqs, "--seq"))
    check_arguments(threads, batches, seqs, repeats, warmup, decode_tokens, profile, timeout_s)
    if compare_torch:
        require_training_stack("--compare-torch", ("torch", "transformers"))
    manifest = read_manifest(folder)
    verify_checksums(folder, manifest)
    chosen = list(dict.fromkeys(resolve_providers(p, allow_fallback)[0] for p in (providers or [None])))
    limit = max_positions(folder)
    extra = decode_tokens if manifest.problem == "causal-lm" else 0
    if limit is not None and max(seqs) + extra > limit:
        raise BenchError(f"--seq {max(seqs)}{f' + {extra} decode tokens' if extra else ''} exceeds the model's "
                         f"{limit} positions; use a smaller --seq")
    if compare_torch and not (folder / "torch").is_dir():
        raise BenchError(f"--compare-torch needs the PyTorch weights in {folder / 'torch'} (written by "
                         "`dynalora export` for merged exports); re-export or drop --compare-torch")
    if adapter is not None and adapter not in manifest.adapters:
        raise BenchError(f"unknown adapter {adapter!r}; this export has: {', '.join(manifest.adapters) or 'none'}")
    fixed = model_variant(folder, manifest, variant)[1]  # RuntimeLoadError (one line) for a variant it lacks
    if fixed is not None and (batches != [fixed[0]] or seqs != [fixed[1]]):
        raise BenchError(f"the {variant} graph takes exactly batch {fixed[0]} x {fixed[1]} tokens; pass --batch "
                         f"{fixed[0]} --seq {fixed[1]} (or leave both out)")
    if compare_torch and variant not in (None, "onnx") and manifest.kind != "merged":
        raise BenchError("--compare-torch needs a merged export")
    if genai:
        if not (folder / "genai_config.json").is_file():
            raise BenchError(f"--genai needs an onnxruntime-genai folder (genai_config.json); {folder} has none: export "
                             "with --runtime genai")
        if variant not in (None, "onnx"):
            raise BenchError("--genai runs model.onnx; drop --variant")
        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise BenchError("--genai needs onnxruntime-genai; pip install onnxruntime-genai")

    tokenizer = load_tokenizer(folder)  # tokenizer.json through `tokenizers`: no transformers on a device
    special = tokenizer.num_special_tokens_to_add()
    if min(seqs) <= special:
        raise BenchError(f"--seq {min(seqs)} leaves no room for text: the tokenizer adds {special} special tokens; "
                         f"use --seq >= {special + 1}")
    engines = [("onnxruntime", p) for p in chosen] + ([("torch", "torch:cpu")] if compare_torch else [])
    engines += [("genai", "onnxruntime-genai:cpu")] if genai else []
    configs = [(e, p, t, b, s) for e, p in engines for t in threads for b in batches for s in seqs]
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dynalora-bench-") as tmp:
        inputs: dict[tuple[int, int], str] = {}
        for b in batches:
            for s in seqs:
                inputs[(b, s)] = str(Path(tmp) / f"inputs_b{b}_s{s}.npz")
                np.savez(inputs[(b, s)], **synthetic_batch(tokenizer, b, s))
        small = dict(np.load(inputs[(min(batches), min(seqs))]))
        validation = [validate(folder, manifest, p, small, compare_torch, threads[0], allow_fallback, adapter,
                               variant) for p in chosen]
        for engine, provider, t, b, s in _progress(configs, progress):
            spec = {"export": str(folder.resolve()), "engine": engine, "provider": provider, "threads": t,
                    "batch": b, "seq": s, "inputs": inputs[(b, s)], "repeats": repeats, "warmup": warmup,
                    "allow_fallback": allow_fallback, "profile": profile, "decode_tokens": decode_tokens,
                    "adapter": adapter if engine in ("onnxruntime", "genai") else None, "device": "cpu",
                    "variant": variant if engine == "onnxruntime" else None}
            records.append(_run_worker(spec, timeout_s))
    torch_p50 = {(r["threads"], r["batch"], r["seq"]): r["latency_ms"]["p50"] for r in records if r["engine"] == "torch"}
    genai_rate = {(r["threads"], r["batch"], r["seq"]): r.get("decode_tokens_per_s") for r in records
                  if r["engine"] == "onnxruntime-genai"}
    for r in records:
        key = (r["threads"], r["batch"], r["seq"])
        if r["engine"] == "onnxruntime" and key in torch_p50:
            r["speedup_vs_torch"] = torch_p50[key] / r["latency_ms"]["p50"]
        if r["engine"] == "onnxruntime" and genai_rate.get(key) and r.get("decode_tokens_per_s"):
            r["decode_vs_genai"] = r["decode_tokens_per_s"] / genai_rate[key]
    settings = {"export": str(folder.resolve()), "providers": chosen, "threads": threads, "batches": batches,
                "seqs": seqs, "compare_torch": compare_torch, "repeats": repeats, "warmup": warmup,
                "profile": profile, "decode_tokens": decode_tokens if manifest.problem == "causal-lm" else None,
                "adapter": adapter, "kind": manifest.kind, "problem": manifest.problem, "precision": manifest.precision,
                "variant": variant or "onnx", "genai": genai}
    cap = get_profile(profile).memory_cap_mb if profile else None
    if cap is not None:
        settings["memory_cap_mb"] = cap
        for r in records:
            if r["engine"] == "onnxruntime":
                r["memory_cap_mb"], r["within_memory_cap"] = cap, r["peak_rss_mb"] <= cap
    return {"environment": environment(), "settings": settings, "validation": validation, "records": records,
            "device_eps": device_eps(manifest)}


def device_eps(manifest: Manifest) -> dict[str, Any]:
    """Which execution providers a phone would give this graph, from the export's mobile package (onnxruntime's
    usability checker, run at export time: see export/mobile_report.py); CPU where there is no package."""
    mobile = manifest.raw.get("mobile")
    if not mobile:
        return {"source": None, "would_use": ["CPUExecutionProvider"],
                "note": "no mobile package: export with --target android|ios to see NNAPI / CoreML coverage"}
    graph = "mobile/model.fixed.onnx" if "fixed" in mobile else "model.onnx"
    coverage = mobile.get("coverage", {}).get(graph, {})
    would = [ep for ep, c in coverage.items() if c.get("suitability") in ("YES", "MAYBE")]
    return {"source": mobile["report"], "target": mobile["target"], "graph": graph,
            "would_use": [*would, "CPUExecutionProvider"], "coverage": coverage}


def device_eps_line(result: dict[str, Any]) -> str:
    eps = result.get("device_eps") or {}
    if not eps.get("source"):
        return f"device EPs: CPU only ({eps.get('note', 'no mobile package')})"
    parts = [f"{ep} {100 * c['node_share']:.0f}% of nodes, {c['partitions']} partition(s): {c['suitability']}"
             for ep, c in eps["coverage"].items()]
    return (f"device EPs for {eps['graph']} ({eps['target']}): would use {' + '.join(eps['would_use'])}; "
            + "; ".join(parts))


def markdown_table(result: dict[str, Any]) -> str:
    """One row per configuration; the only place numbers are formatted."""
    records = result["records"]
    causal = any("prefill_ms" in r for r in records)
    head = ["engine", "graph", "provider", "threads", "batch", "seq", "p50 ms", "p90 ms", "mean ms", "examples/s",
            "load s", "first ms", "peak RSS MB", "model MB"]
    capped = any("within_memory_cap" in r for r in records)
    head += ["RSS cap"] if capped else []
    head += ["prefill ms", "TTFT ms", "decode tok/s"] if causal else []
    compared = any("speedup_vs_torch" in r for r in records)
    head += ["vs torch"] if compared else []
    vs_genai = any("decode_vs_genai" in r for r in records)
    head += ["decode vs genai"] if vs_genai else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lat = r["latency_ms"]
        first = r.get("first_run_ms")
        row = [r["engine"], r.get("variant") or "", r["provider"].replace("ExecutionProvider", ""), str(r["threads"]),
               str(r["batch"]), str(r["seq"]), f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['mean']:.2f}",
               f"{r['throughput']:.1f}", f"{r['load_s']:.2f}", "" if first is None else f"{first:.2f}",
               f"{r['peak_rss_mb']:.0f}", f"{r['model_mb']:.1f}"]
        if capped:
            row.append("" if "within_memory_cap" not in r else
                       f"{'ok' if r['within_memory_cap'] else 'OVER'} ({r['memory_cap_mb']:.0f})")
        if causal:
            row += [f"{r['prefill_ms']:.2f}" if "prefill_ms" in r else "",
                    f"{r['ttft_ms']:.2f}" if "ttft_ms" in r else "",
                    f"{r['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in r else ""]
        if compared:
            row.append(f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "")
        if vs_genai:
            row.append(f"{r['decode_vs_genai']:.2f}x" if "decode_vs_genai" in r else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Bar chart of p50 latency per configuration with p10-p90 error bars, written atomically as PNG."""
    require_training_stack("--plot", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = result["records"]
    labels = [f"{r['engine'][:4]} {r['provider'].replace('ExecutionProvider', '')}\n"
              f"t{r['threads']} b{r['batch']} s{r['seq']}" for r in records]
    p50 = np.array([r["latency_ms"]["p50"] for r in records])
    low = p50 - np.array([r["latency_ms"]["p10"] for r in records])
    high = np.array([r["latency_ms"]["p90"] for r in records]) - p50
    colors = [{"onnxruntime": "tab:blue", "torch": "tab:orange"}.get(r["engine"], "tab:green") for r in records]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(records) + 2), 4.5))
    ax.bar(range(len(records)), p50, yerr=[low, high], capsize=4, color=colors)
    ax.set_xticks(range(len(records)), labels, fontsize=7)
    ax.set_ylabel("latency ms (p50, bars p10-p90)")
    ax.set_title(f"{Path(result['settings']['export']).name}: {result['settings']['kind']} "
                 f"{result['settings']['precision']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `dynalora bench` flags; lists stay strings so bench_main can report bad ones clearly."""
    parser.add_argument("export", help="export folder written by `dynalora export`")
    parser.add_argument("--provider", default=None,
                        help="comma-separated providers: cpu, cuda, tensorrt, coreml, nnapi, qnn, xnnpack, dml "
                             "(default: the best available)")
    parser.add_argument("--allow-fallback", action="store_true",
                        help="run on CPU with a warning when a requested provider is unavailable")
    parser.add_argument("--profile", default=None, help="device profile, e.g. mobile-cpu, jetson-cuda")
    parser.add_argument("--threads", default=None,
                        help="comma-separated intra-op thread counts (default 1; the profile's, e.g. 1,2 for "
                             "mobile-cpu)")
    parser.add_argument("--variant", default=None, choices=("onnx", "ort", "fixed", "fixed-ort"),
                        help="which graph of the export: model.onnx (default), or the mobile package's ORT-format "
                             "model / fixed-shape graph (`dynalora export ... --target`)")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1; a fixed-shape variant's own)")
    parser.add_argument("--seq", default=None,
                        help="comma-separated sequence lengths in tokens (default 32; a fixed-shape variant's own)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per configuration (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="causal LMs: greedy tokens to decode (default 32)")
    parser.add_argument("--adapter", default=None, help="kind=adapters exports: the adapter to activate")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also time the PyTorch weights in EXPORT/torch and check outputs against them")
    parser.add_argument("--genai", action="store_true",
                        help="also time the folder with onnxruntime-genai (folders from --runtime genai and causal-LM "
                             "`export fused`): the same graph, genai's own generation loop")
    parser.add_argument("--json", default=None, help="write records + environment to this JSON file")
    parser.add_argument("--plot", default=None, help="write a p50 latency bar chart to this PNG file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json / --plot files")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration (default 600)")


def bench_main(args: argparse.Namespace) -> int:
    """Run `dynalora bench` from parsed flags; DynaloraError propagates for the CLI to print as one line."""
    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        check_output_path(flag, value, args.overwrite)
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise BenchError(f"--plot writes PNG: give a path ending in .png, not {args.plot!r}")
    if args.plot:
        require_training_stack("--plot", ("matplotlib",))  # before the benchmark runs, not after
    providers = [p for p in args.provider.split(",") if p.strip()] if args.provider else None
    for name in providers or []:
        canonical_provider(name)  # unknown names fail here, before the export is read
    profile = get_profile(args.profile) if args.profile else None  # unknown profile: one line, before any work
    thread_default = ",".join(map(str, profile.bench_threads)) if profile and profile.bench_threads else "1"
    batch, seq = args.batch, args.seq
    if args.variant in ("fixed", "fixed-ort") and (batch is None or seq is None):
        from dynalora.edge_runtime.predictor import model_variant

        fixed = model_variant(Path(args.export), read_manifest(args.export), args.variant)[1]
        batch, seq = batch or str(fixed[0]), seq or str(fixed[1])
    threads, batches, seqs = (parse_int_list(args.threads or thread_default, "--threads"),
                              parse_int_list(batch or "1", "--batch"), parse_int_list(seq or "32", "--seq"))
    result = run_bench(args.export, providers, threads, batches, seqs, args.compare_torch,
                       args.repeats, args.warmup, allow_fallback=args.allow_fallback, profile=args.profile,
                       decode_tokens=args.decode_tokens, adapter=args.adapter, timeout_s=args.timeout,
                       variant=args.variant, genai=args.genai)
    print(markdown_table(result))
    if result["device_eps"].get("source") or args.profile:  # a mobile package, or a device profile asked for
        print(device_eps_line(result))
    if args.plot:  # the plot first: if it fails, no JSON claims a complete run
        plot(result, args.plot)
    if args.json:
        write_json(args.json, result)
    over = [r for r in result["records"] if r.get("within_memory_cap") is False]
    if over:
        worst = max(over, key=lambda r: r["peak_rss_mb"])
        print(f"dynalora bench: peak RSS {worst['peak_rss_mb']:.0f} MB (threads={worst['threads']} batch="
              f"{worst['batch']} seq={worst['seq']}) exceeds the {args.profile} profile's cap of "
              f"{worst['memory_cap_mb']:.0f} MB", file=sys.stderr)
        return 1
    return 0
