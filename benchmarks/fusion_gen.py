"""Routed generation evidence (issue #12, DLP-LoRA's question-answering half): SmolLM2-135M generative adapters.

    .venv/bin/python benchmarks/fusion_gen.py --bigbench-dir BENCHMARK_TASKS [--seeds 1] [--work /tmp/fusion_gen]

One generative adapter per task (`dynalora train --model smollm2-135m --objective generate`: response-token
loss, the model's chat template), a router over them (`dynalora fuse train`: mean input-token embeddings of
each prompt, MLP, top-p 0.6), and fused greedy generation: the router reads the prompt once and the top-p
adapters, stacked along the rank axis, apply to every generated token (fusion/model.py FusedModel.generate).

Tasks: four BIG-bench generative tasks with short references and distinguishable inputs (core/bigbench.py,
seeded 80/20 split; metrics on at most --max-eval held-out prompts, greedy, the task's max_new_tokens):
    sentence_negation   linguistic_mappings/sentence_negation_json ("John thinks X, but" -> X negated)
    past_tense          linguistic_mappings/past_tense_json (a verb -> its past tense)
    word_sorting        word_sorting (a list of words -> the list sorted)
    e2e_nlg             gem/e2e_nlg (restaurant attributes -> a description; several references per input)
Metrics (core/gen_metrics.py): exact match, ROUGE-L F (rouge-score), corpus BLEU (sacrebleu). The headline
column is ROUGE-L; exact match and BLEU are in the tables below it.

Variants per task: fused (router top-p weights), oracle (the task's own adapter, one-hot weights), multitask
(one adapter trained on all four tasks), base (SmolLM2 with no adapter). Seeds: adapters, router and
multi-task adapter are trained per seed; differences are reported as mean and range over seeds.

Latency (PyTorch, 2 threads, round-robin medians): greedy decoding with the KV cache of one negation prompt
(batch 1) and of eight (batch 8, left-padded), for base (no adapter), one adapter, fused K = 2, 4, 8 (router
+ top-p + stacked adapters; K > 4 repeats the trained adapters) and the per-adapter loop K = 2, 4, 8:
prefill ms (routing included) and decode tokens/s (a fixed number of new tokens, no early stop).

Writes benchmarks/results/fusion_gen.json and fusion_gen.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dynalora.atomic import write_json, write_text
from dynalora.core.config import TrainConfig
from dynalora.edge_runtime.envinfo import environment

sys.path.insert(0, str(Path(__file__).parent))
from fusion import round_robin, variants  # noqa: E402 - the encoder setting's timer and variant builder

RESULTS = Path(__file__).parent / "results"
# short name -> (BIG-bench task, max_new_tokens)
TASKS: dict[str, tuple[str, int]] = {
    "sentence_negation": ("linguistic_mappings/sentence_negation_json", 24),
    "past_tense": ("linguistic_mappings/past_tense_json", 8),
    "word_sorting": ("word_sorting", 48),
    "e2e_nlg": ("gem/e2e_nlg", 48),
}
VARIANTS = ("fused", "oracle", "multitask", "base")


def train_runs(work: Path, seed: int, args: argparse.Namespace) -> tuple[list[Path], dict[str, float]]:
    from dynalora.core.train import train

    runs, seconds = [], {}
    for short, (task, new_tokens) in TASKS.items():
        folder = work / f"seed{seed}" / "runs" / short
        if not (folder / "run.json").is_file():
            t0 = time.perf_counter()
            train(TrainConfig(model="smollm2-135m", task=f"bigbench:{task}", objective="generate", out=str(folder),
                              steps=args.steps, batch_size=8, lr=args.lr, seed=seed, max_length=args.max_length,
                              max_eval=args.max_eval, max_new_tokens=new_tokens, data_dir=args.bigbench_dir,
                              progress=False, overwrite=True, threads=args.threads))
            seconds[short] = time.perf_counter() - t0
            print(f"seed {seed}: trained {short} in {seconds[short]:.0f} s", flush=True)
        runs.append(folder)
    return runs, seconds


def fuse_and_eval(work: Path, seed: int, runs: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    from dynalora.fusion import FuseConfig, RouterConfig, evaluate_fusion, load_fusion, train_fusion
    from dynalora.fusion.train import task_data

    fuse = work / f"seed{seed}" / "fuse"
    record: dict[str, Any] = {}
    if not (fuse / "fusion.json").is_file():
        t0 = time.perf_counter()
        train_fusion(FuseConfig(runs=[str(r) for r in runs], out=str(fuse), overwrite=True,
                                multitask_steps=args.multitask_steps, router=RouterConfig(seed=seed)))
        record["fuse_train_seconds"] = time.perf_counter() - t0
    fusion = load_fusion(fuse)
    record["data"] = {s.name: task_data(s).source for s in fusion.specs}
    record["router"] = fusion.config["router"] | {"losses": None}
    record["multitask"] = fusion.config.get("multitask")
    record["run_metrics"] = {s.name: s.info.get("metrics") for s in fusion.specs}
    cached = fuse / "eval_cache.json"  # evaluation is deterministic (greedy); a re-run (e.g. for latency) reuses it
    if cached.is_file() and json.loads(cached.read_text())["max_eval"] == args.max_eval:
        saved = json.loads(cached.read_text())
        record["eval"], record["eval_seconds"] = saved["eval"], saved["eval_seconds"]
    else:
        t0 = time.perf_counter()
        record["eval"] = evaluate_fusion(fusion, max_eval=args.max_eval, batch=64)
        record["eval_seconds"] = time.perf_counter() - t0
        write_json(cached, {"max_eval": args.max_eval, "eval": record["eval"], "eval_seconds": record["eval_seconds"]})
    record["fuse"] = str(fuse)
    return record


# ---- latency ----------------------------------------------------------------------------------------
@torch.no_grad()
def decode(lm: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill s, decode s) of greedy decoding with the KV cache, exactly `new_tokens` new tokens."""
    from transformers import DynamicCache

    t0 = time.perf_counter()
    out = lm(input_ids=ids, attention_mask=mask, past_key_values=DynamicCache(), use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    past = out.past_key_values
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        out = lm(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    return t1 - t0, time.perf_counter() - t1


def latency(fusion: Any, rounds: int, new_tokens: int) -> dict[str, Any]:
    from dynalora.core.generate import prompt_ids
    from dynalora.core.models import load_causal_lm
    from dynalora.fusion.router import top_p_weights
    from dynalora.fusion.train import encode_texts, task_data

    torch.set_num_threads(2)
    tok = fusion.tokenizer
    data = task_data(fusion.specs[0])
    models = variants(fusion)  # single, fused_kK, loop_kK (K > 4 repeats the trained adapters)
    base = load_causal_lm(str(fusion.specs[0].info["base_model"]), head_restored=True).eval()
    report: dict[str, Any] = {"new_tokens": new_tokens, "batches": {}}
    for batch in (1, 8):
        chunk = data.eval[:batch]
        prompts = [prompt_ids(tok, data.spec, e) for e in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        route = encode_texts(tok, chunk, fusion.max_length)
        raw: dict[str, list[tuple[float, float]]] = {}

        def call(name: str, m: Any) -> Any:
            def run() -> None:
                t0 = time.perf_counter()
                if name != "single":  # route once per prompt, then hold the weights for the whole answer
                    m.context.weights = top_p_weights(m.route(route["input_ids"], route["attention_mask"]), m.top_p)
                routed = time.perf_counter() - t0
                try:
                    pre, dec = decode(m.model, ids, mask, new_tokens)
                finally:
                    m.context.weights = None
                raw.setdefault(name, []).append((routed + pre, dec))
            return run

        calls = {"base": lambda: raw.setdefault("base", []).append(decode(base, ids, mask, new_tokens))}
        calls |= {name: call(name, m) for name, m in models.items()}
        round_robin(calls, rounds, warmup=1)
        rows = {}
        for name, samples in raw.items():
            samples = samples[1:]  # the warm-up call
            pre = statistics.median(s[0] for s in samples) * 1e3
            dec = statistics.median(s[1] for s in samples)
            rows[name] = {"prefill_ms": pre, "decode_tokens_per_s": batch * (new_tokens - 1) / dec,
                          "decode_s_samples": [s[1] for s in samples], "prefill_ms_samples": [s[0] * 1e3 for s in samples]}
        single = rows["single"]["decode_tokens_per_s"]
        for r in rows.values():
            r["decode_vs_single"] = r["decode_tokens_per_s"] / single
        report["batches"][str(batch)] = {"prompt_tokens": width, "rows": rows}
    return report


# ---- report -----------------------------------------------------------------------------------------
def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"


def render(report: dict[str, Any]) -> str:
    a, env = report["args"], report["environment"]
    versions = env["versions"]
    seeds = sorted(report["seeds"], key=int)
    first = report["seeds"][seeds[0]]
    lines = ["# Routed generation: SmolLM2-135M generative adapters behind a router (issue #12)", "",
             f"Machine: {env['cpu']}, {env['logical_cores']} cores, torch {versions['torch']}, transformers "
             f"{versions['transformers']}; load average at start {env['load_average'][0]:.1f}; {env['date']}.", "",
             f"Adapters: SmolLM2-135M-Instruct (dequantised GGUF, fp32), `--objective generate` (response-token loss, "
             f"the model's chat template), dynamic LoRA rank 8 average on q_proj/v_proj, {a['steps']} steps x batch 8, "
             f"lr {a['lr']:g}, max {a['max_length']} tokens; seeds {', '.join(seeds)}. Multi-task baseline: one adapter, "
             f"same recipe, {a['multitask_steps']} steps on the four training splits interleaved. Greedy decoding with "
             "the KV cache; metrics on the held-out evaluation split of each task.", "", "## Data (seed 0 split)", ""]
    lines += [f"- {t}: {s}" for t, s in first["data"].items()] + [""]
    tasks = [t for t in first["eval"] if t != "mean"]
    routers = [report["seeds"][s]["router"]["eval_accuracy"] for s in seeds]
    lines += ["## Router", "", f"Held-out task identification (balanced): {', '.join(f'{r:.4f}' for r in routers)} "
              f"(seed {', '.join(seeds)}; target >= 0.98); {first['router']['parameters']:,} parameters; features: "
              f"{first['router']['features']}; top-p {a['top_p']}.", ""]
    for metric, label, scale in (("", "ROUGE-L F", 1.0), ("_exact_match", "exact match", 1.0), ("_bleu", "BLEU (0-100)", 1.0)):
        lines += [f"## {label} per task (seed {seeds[0]})", "", "| task | n | router | " + " | ".join(VARIANTS) + " |",
                  "|---|---|---|" + "---|" * len(VARIANTS)]
        for t in tasks:
            row = first["eval"][t]
            vals = " | ".join(f"{row.get(v + metric, float('nan')) * scale:.4f}" if metric != "_bleu"
                              else f"{row.get(v + metric, float('nan')):.2f}" for v in VARIANTS)
            lines.append(f"| {t} | {row['n']} | {row['router']:.4f} | {vals} |")
        lines.append("")
    lines += ["## Differences over seeds (points of ROUGE-L F x 100 / exact match x 100; mean [min, max])", "",
              "| task | oracle - base (ROUGE-L) | oracle - base (EM) | fused - oracle (ROUGE-L) | fused - oracle (EM) | "
              "multitask - oracle (ROUGE-L) |", "|---|---|---|---|---|---|"]
    met_margin, met_fused = True, True
    for t in tasks:
        per = [report["seeds"][s]["eval"][t] for s in seeds]
        ob = [100 * (r["oracle"] - r["base"]) for r in per]
        ob_em = [100 * (r["oracle_exact_match"] - r["base_exact_match"]) for r in per]
        fo = [100 * (r["fused"] - r["oracle"]) for r in per]
        fo_em = [100 * (r["fused_exact_match"] - r["oracle_exact_match"]) for r in per]
        mo = [100 * (r["multitask"] - r["oracle"]) for r in per if "multitask" in r]
        met_margin &= min(ob) > 5
        met_fused &= all(abs(x) <= 1 for x in fo + fo_em)
        lines.append(f"| {t} | {_spread(ob)} | {_spread(ob_em)} | {_spread(fo)} | {_spread(fo_em)} | "
                     f"{_spread(mo) if mo else '-'} |")
    lines += ["", "Targets (computed from the tables): each adapter beats the base model by a clear margin (> 5 points "
              f"ROUGE-L on every task and seed): {'met' if met_margin else 'not met'}; fused within 1 point of the oracle "
              f"(ROUGE-L and exact match, every task and seed): {'met' if met_fused else 'not met'}; router >= 0.98: "
              f"{'met' if min(routers) >= 0.98 else 'not met'}.", ""]
    lat = report.get("latency")
    if lat:
        lines += [f"## Generation latency (PyTorch, 2 threads, greedy with the KV cache, {lat['new_tokens']} new tokens, "
                  f"median of {a['rounds']} round-robin rounds)", ""]
        for b, block in lat["batches"].items():
            lines += [f"Batch {b} ({block['prompt_tokens']} prompt tokens, left-padded):", "",
                      "| variant | prefill ms (routing included) | decode tokens/s | vs single |", "|---|---|---|---|"]
            for name, r in sorted(block["rows"].items(), key=lambda kv: (kv[0] != "base", kv[0] != "single", kv[0])):
                lines.append(f"| {name} | {r['prefill_ms']:.1f} | {r['decode_tokens_per_s']:.1f} | "
                             f"{r['decode_vs_single']:.3f}x |")
            lines.append("")
        b1 = lat["batches"]["1"]["rows"]
        lines += [f"Throughput targets at batch 1 (computed): fused K=4 {b1['fused_k4']['decode_vs_single']:.3f}x single "
                  f"(target >= 0.95: {'met' if b1['fused_k4']['decode_vs_single'] >= 0.95 else 'not met'}); fused K=8 "
                  f"{b1['fused_k8']['decode_vs_single']:.3f}x (target >= 0.9: "
                  f"{'met' if b1['fused_k8']['decode_vs_single'] >= 0.9 else 'not met'}); the per-adapter loop: K=4 "
                  f"{b1['loop_k4']['decode_vs_single']:.3f}x, K=8 {b1['loop_k8']['decode_vs_single']:.3f}x.", ""]
    lines += ["## Reproduce", "", "```", ".venv/bin/python benchmarks/fusion_gen.py --bigbench-dir BENCHMARK_TASKS "
              f"--seeds {len(seeds)}", "```", "BENCHMARK_TASKS: the `benchmark_tasks` folder of the bigbench 1.0.0 sdist "
              "(README, data section).", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bigbench-dir", default=os.environ.get("DYNALORA_BIGBENCH_DIR"))
    ap.add_argument("--work", default="/tmp/fusion_gen")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--multitask-steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-eval", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--top-p", type=float, default=0.6)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation (latency: 2)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if not args.bigbench_dir:
        print("error: pass --bigbench-dir (the bigbench benchmark_tasks folder; README, data section)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    report: dict[str, Any] = {"environment": environment(), "args": vars(args), "seeds": {}}
    for seed in range(args.seeds):
        runs, seconds = train_runs(work, seed, args)
        record = fuse_and_eval(work, seed, runs, args)
        record["train_seconds"] = seconds
        report["seeds"][str(seed)] = record
        write_json(out / "fusion_gen.json", report)
        write_text(out / "fusion_gen.md", render(report))
        print(f"seed {seed}: evaluated in {record['eval_seconds']:.0f} s", flush=True)
    if not args.no_latency:
        from dynalora.fusion import load_fusion

        report["latency"] = latency(load_fusion(report["seeds"]["0"]["fuse"]), args.rounds, args.new_tokens)
    report["environment"]["load_average_end"] = os.getloadavg()
    write_json(out / "fusion_gen.json", report)
    write_text(out / "fusion_gen.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
