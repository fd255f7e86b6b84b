"""Mobile-class benchmark of dynalora exports (issue 14) -> benchmarks/results/edge_mobile.{md,json}.

    python benchmarks/edge_mobile.py --run RUN                   # a MiniLM classification run (the demo's)
    python benchmarks/edge_mobile.py --run RUN --repeats 10 --variants fp32,int8

For each precision variant of the run (fp32, int8 = dynamic int8 with the int8 embedding table, qdq-int8 = static
QDQ), `dynalora export merged --target android` builds the folder and its mobile package. Then, per variant:
  * size: model.onnx, mobile/model.ort, mobile/model.fixed.ort (MB);
  * accuracy on the run's evaluation split: the export's own check (model.onnx vs the run's fp32 merged graph),
    and the device graph (mobile/model.fixed.ort through edge_runtime.load(variant="fixed-ort").predict, one
    text at a time padded to the fixed length) so the number is the phone graph's, not a proxy;
  * coverage from the package's report (onnxruntime's usability checker): NNAPI / CoreML share of nodes and of
    MatMul compute, partitions and CPU-fallback operators of the fixed graph; QNN's structural share for QDQ;
  * timing under `dynalora bench --profile mobile-cpu` (1 and 2 threads, no arena, no spinning, peak RSS cap):
    load time, first inference, p50 latency and peak RSS of model.onnx, model.ort and model.fixed.ort side by side
    in the same invocation (one fresh subprocess per configuration), batch 1 at the run's max_length.
The machine is shared: compare within this report, as ratios against fp32 / .onnx measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VARIANTS = {"fp32": None, "int8": "int8", "qdq-int8": "qdq-int8"}
GRAPHS = ("onnx", "ort", "fixed-ort")


def _log(msg: str) -> None:
    print(f"[edge_mobile {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export_variant(run: Path, out: Path, quantize: str | None) -> dict[str, Any]:
    from dynalora.export.merged import export_merged

    if (out / "manifest.json").is_file():
        return json.loads((out / "manifest.json").read_text())
    t0 = time.perf_counter()
    manifest = export_merged(run, out, quantize=quantize, target="android", overwrite=True)
    manifest["export_s"] = time.perf_counter() - t0
    return manifest


def device_accuracy(folder: Path, run: Path, variant: str) -> tuple[float, int]:
    """Accuracy of one graph of the folder on the run's evaluation split, through the edge runtime."""
    import numpy as np

    from dynalora.edge_runtime import load
    from dynalora.export.common import eval_examples, load_run_checked

    examples = eval_examples(load_run_checked(run))
    predictor = load(folder, threads=2, variant=variant)
    texts = [e.text if e.text_pair is None else (e.text, e.text_pair) for e in examples]
    labels = np.array([e.label for e in examples])
    got = np.concatenate([predictor.predict(texts[i : i + 64])["label_ids"] for i in range(0, len(texts), 64)])
    return float((got == labels).mean()), len(examples)


def mb(path: Path) -> float | None:
    return path.stat().st_size / 1024**2 if path.is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a classification run folder (MiniLM for the issue's targets)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--work", default="/tmp/dynalora-edge-mobile")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from dynalora.edge_runtime.bench import run_bench
    from dynalora.edge_runtime.envinfo import environment

    run, work = Path(args.run), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for name in args.variants.split(","):
        folder = work / name
        _log(f"export {name} -> {folder}")
        manifest = export_variant(run, folder, VARIANTS[name])
        mobile, ver = manifest["mobile"], manifest["verification"]
        seq = mobile["fixed"]["sequence"]
        _log(f"accuracy of {name}: model.onnx and the device graph")
        acc_onnx, n_eval = device_accuracy(folder, run, "onnx")
        acc_fixed, _ = device_accuracy(folder, run, "fixed-ort")
        report = json.loads((folder / mobile["report"]).read_text())
        fixed_graph = report["graphs"]["mobile/model.fixed.onnx"]
        row = {
            "variant": name, "precision": manifest["precision"], "quantization": ver.get("int8"),
            "model_onnx_mb": mb(folder / "model.onnx"), "model_ort_mb": mb(folder / "mobile/model.ort"),
            "model_fixed_ort_mb": mb(folder / "mobile/model.fixed.ort"),
            "accuracy_fp32": ver.get("accuracy_fp32"), "accuracy_export": ver.get("accuracy_int8"),
            "accuracy_change_points": ver.get("accuracy_change_points"),
            "accuracy_onnx": acc_onnx, "accuracy_fixed_ort": acc_fixed, "eval_examples": n_eval,
            "fixed_sequence": seq, "load_average": os.getloadavg(),
            "mobile_verification": mobile["verification"],
            "coverage_fixed": {ep: {k: e.get(k) for k in ("node_share", "compute_share", "partitions", "suitability",
                                                         "unsupported_ops", "in_qdq_units", "matmul_nodes")}
                               for ep, e in fixed_graph["eps"].items()},
            "coverage_dynamic_nnapi": {k: report["graphs"]["model.onnx"]["eps"]["NNAPI"][k]
                                       for k in ("node_share", "partitions", "suitability", "unsupported_ops")},
            "rewrites": mobile["fixed"]["rewrites"],
        }
        rows.append(row)
        for graph in GRAPHS:
            _log(f"bench {name} {graph}")
            result = run_bench(folder, threads=[1, 2], batches=[1], seqs=[seq], repeats=args.repeats,
                               warmup=args.warmup, profile="mobile-cpu", variant=graph, progress=False)
            for r in result["records"]:
                timings.append({"variant": name, "graph": graph, "threads": r["threads"], "seq": r["seq"],
                                "p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                                "load_s": r["load_s"], "first_run_ms": r["first_run_ms"],
                                "peak_rss_mb": r["peak_rss_mb"], "model_mb": r["model_mb"],
                                "within_memory_cap": r["within_memory_cap"], "memory_cap_mb": r["memory_cap_mb"],
                                "raw_ms": r["latency_ms"].get("raw")})
    base = {(t["graph"], t["threads"]): t for t in timings if t["variant"] == "fp32"}
    onnx = {(t["variant"], t["threads"]): t for t in timings if t["graph"] == "onnx"}
    for t in timings:
        ref = base.get((t["graph"], t["threads"]))
        t["p50_vs_fp32"] = t["p50_ms"] / ref["p50_ms"] if ref else None
        same = onnx.get((t["variant"], t["threads"]))
        t["load_vs_onnx"] = t["load_s"] / same["load_s"] if same else None
        t["first_run_vs_onnx"] = t["first_run_ms"] / same["first_run_ms"] if same else None
    result = {"environment": environment(), "run": str(run.resolve()), "settings": vars(args),
              "variants": rows, "timings": timings}
    out = Path(args.out)
    from dynalora.atomic import write_json, write_text

    write_json(out / "edge_mobile.json", result)
    write_text(out / "edge_mobile.md", render(result))
    _log(f"wrote {out / 'edge_mobile.md'}")
    return 0


def _f(x: Any, fmt: str = ".1f") -> str:
    return "" if x is None else format(x, fmt)


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = ["# Mobile-class exports (issue 14)", "",
             f"Run `{Path(result['run']).name}` ({result['run']}); evaluation split of the run. Machine: "
             f"{env.get('cpu', '')}, {env.get('logical_cores', '')} logical cores, onnxruntime "
             f"{env.get('versions', {}).get('onnxruntime', '')}, load average {env.get('load_average')} (shared "
             "machine: compare within this report). Regenerate: `python benchmarks/edge_mobile.py --run RUN`.", "",
             "Accuracy columns: `model.onnx` through the edge runtime (batches padded to the longest text), the "
             "export's own check (int8 variants, the same graph through onnxruntime directly), and the phone graph "
             "`mobile/model.fixed.ort` (one text at a time, padded to the fixed length; dynamic int8 computes its "
             "activation scales over the padding too, so its number differs slightly from model.onnx's).", "",
             "## Size, accuracy and device coverage (`export merged --target android`)", "",
             "| variant | model.onnx MB | .ort MB | fixed .ort MB | accuracy, model.onnx | export check | change vs "
             "fp32 (pt) | accuracy, fixed .ort | NNAPI nodes / compute / partitions | CoreML MLProgram | QNN QDQ units |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["variants"]:
        c = r["coverage_fixed"]
        nn, ml, q = c["NNAPI"], c["CoreML MLProgram"], c["QNN"]
        qnn = (f"{q['in_qdq_units']}/{q['matmul_nodes']} MatMul, {_f(100 * q['compute_share'] if q.get('compute_share') is not None else None)}% of compute"
               if q.get("matmul_nodes") is not None else "n/a (float graph)")
        lines.append(
            f"| {r['variant']} | {_f(r['model_onnx_mb'])} | {_f(r['model_ort_mb'])} | {_f(r['model_fixed_ort_mb'])} | "
            f"{_f(r.get('accuracy_onnx'), '.4f')} | {_f(r['accuracy_export'], '.4f')} | "
            f"{_f(r['accuracy_change_points'], '+.2f')} | {_f(r['accuracy_fixed_ort'], '.4f')} | "
            f"{100 * nn['node_share']:.1f}% / {_f(100 * nn['compute_share'] if nn['compute_share'] is not None else None)}% "
            f"/ {nn['partitions']} ({nn['suitability']}) | {100 * ml['node_share']:.1f}%, {ml['partitions']} partitions | "
            f"{qnn} |")
    lines += ["", "CPU-fallback operators of the fixed-shape graph (after the rewrites in export/mobile_rewrite.py):", ""]
    for r in result["variants"]:
        c = r["coverage_fixed"]
        lines.append(f"- {r['variant']}: NNAPI {', '.join(c['NNAPI']['unsupported_ops']) or 'none'}; "
                     f"CoreML MLProgram {', '.join(c['CoreML MLProgram']['unsupported_ops']) or 'none'}; "
                     f"dynamic-shape model.onnx for comparison: NNAPI {100 * r['coverage_dynamic_nnapi']['node_share']:.1f}% "
                     f"of nodes in {r['coverage_dynamic_nnapi']['partitions']} partitions")
    lines += ["", "## Timing under `--profile mobile-cpu` (batch 1, run's max_length, median of repeats)", "",
              "`model.ort` is the CPU EP's graph; `model.fixed.ort` is built for NNAPI / CoreML (BASIC optimisations "
              "only, standard operators), so on this CPU it runs without onnxruntime's fusions: its CPU timing is "
              "what a phone would see only for nodes an EP hands back. Peak RSS is the worker process's high-water "
              "mark. An `.ort` load peaks higher than the `.onnx` one here (measured, cause not isolated); "
              "ORT Mobile's `session.use_ort_model_bytes_for_initializers` is meant to avoid copying the "
              "weights on a device, but it crashed the desktop Python package in a quick trial, so it is not "
              "used.", "",
              "| variant | graph | threads | p50 ms | p50 vs fp32 | load s | load vs .onnx | first inference ms "
              "| first vs .onnx | peak RSS MB | within cap |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in result["timings"]:
        lines.append(f"| {t['variant']} | {t['graph']} | {t['threads']} | {t['p50_ms']:.2f} | {_f(t['p50_vs_fp32'], '.2f')}x | "
                     f"{t['load_s']:.3f} | {_f(t['load_vs_onnx'], '.2f')}x | {t['first_run_ms']:.1f} | "
                     f"{_f(t['first_run_vs_onnx'], '.2f')}x | {t['peak_rss_mb']:.0f} | "
                     f"{'yes' if t['within_memory_cap'] else 'NO'} ({t['memory_cap_mb']:.0f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
