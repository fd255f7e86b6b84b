"""Fusion evidence, causal-LM setting (issue #5): SmolLM2-135M, multiple-choice adapters, option log-likelihood.

    DYNALORA_BIGBENCH_DIR=/tmp/bigbench/tasks .venv/bin/python benchmarks/fusion_lm.py [--work /tmp/fusion_lm]

As in DLP-LoRA: one adapter per multiple-choice task on a small causal LM, a router that reads each question,
and fused inference that scores every answer option by its log-likelihood (core/choice.py: mean token
log-probability of " " + option after the task's BIG-bench prompt; prediction = the best-scoring option).

Tasks (BIG-bench JSON tasks, each with its seeded split from core/bigbench.py; accuracy on at most --max-eval
held-out examples per task):
    bigbench:social_iqa           3 options per question (2 for a few), per-example options
    bigbench:goal_step_wikihow    2-5 options, per-example (union of goal / step inference and step ordering)
    bigbench:strategyqa           Yes / No (label names as options: --objective choice)
    bigbench:epistemic_reasoning  entailment / non-entailment (label names as options)

Adapters: `dynalora train --model smollm2-135m --objective choice` with default dynamic LoRA (rank 8 average
on q_proj / v_proj of all 30 layers), batch 8, lr 2e-3, seed 0. Router: `dynalora fuse train` defaults
(mean input-token embeddings of the frozen LM, MLP). Multi-task baseline: one adapter trained on the four
training splits together (each example with its own task's prompt), `--multitask-steps` steps.

Latency (PyTorch; the causal-LM fusion is not exported to ONNX, see fusion.md): scoring one social_iqa
question (its 3 option rows), batch 1, 2 threads, for the single adapter, fused K (router + top-p + stacked
adapters) and the per-adapter loop, K = 2, 4, 8 (K > 4 repeats the trained adapters); round-robin medians.

Writes benchmarks/results/fusion_lm.json and fusion_lm.md.
"""

from __future__ import annotations

import argparse
import os
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
TASKS = ("bigbench:social_iqa", "bigbench:goal_step_wikihow", "bigbench:strategyqa", "bigbench:epistemic_reasoning")
SEED = 0


def train_runs(work: Path, steps: int, max_length: int, max_eval: int, lr: float) -> tuple[list[Path], dict[str, float]]:
    from dynalora.core.train import train

    runs, seconds = [], {}
    for task in TASKS:
        folder = work / "runs" / task.split(":")[1]
        if not (folder / "run.json").is_file():
            t0 = time.perf_counter()
            train(TrainConfig(model="smollm2-135m", task=task, objective="choice", out=str(folder), steps=steps,
                              batch_size=8, lr=lr, seed=SEED, max_length=max_length, max_eval=max_eval,
                              data_dir=os.environ.get("DYNALORA_BIGBENCH_DIR"), progress=False, overwrite=True,
                              threads=2))
            seconds[task] = time.perf_counter() - t0
            print(f"trained {task} in {seconds[task]:.0f} s", flush=True)
        runs.append(folder)
    return runs, seconds


@torch.no_grad()
def latency(fusion: Any, rounds: int) -> dict[str, Any]:
    """single vs fused K vs loop K, PyTorch, one social_iqa question (all its options), batch 1."""
    from dynalora.core.choice import encode_choices
    from dynalora.fusion.train import encode_texts, task_data

    torch.set_num_threads(2)
    specs = fusion.specs
    data = task_data(specs[0])
    example = [data.eval[0]]
    choices = encode_choices(fusion.tokenizer, data.spec, example, fusion.max_length)
    route = encode_texts(fusion.tokenizer, example, fusion.max_length)
    models = variants(fusion)  # the encoder setting's single / fused K / loop K builder (K > 4 repeats adapters)
    check = {f"fused_vs_loop_k{k}": float((models[f"fused_k{k}"].score_choices(choices, route["input_ids"], route["attention_mask"]).logits
                                           - models[f"loop_k{k}"].score_choices(choices, route["input_ids"], route["attention_mask"]).logits).abs().max())
             for k in (2, 4, 8)}
    calls = {n: (lambda m=m: m.score_choices(choices, route["input_ids"], route["attention_mask"])) for n, m in models.items()}
    timings = round_robin(calls, rounds, warmup=2)
    single = timings["single"]["p50"]
    return {"input": f"one {specs[0].name} evaluation question, {int(choices['input_ids'].shape[0])} option rows of "
                     f"<= {int(choices['input_ids'].shape[1])} tokens", "max_abs_check": check, "torch": timings,
            "ratio_vs_single": {n: t["p50"] / single for n, t in timings.items()}}


def render(report: dict[str, Any]) -> str:
    a, env = report["args"], report["environment"]
    versions = env["versions"]
    lines = ["# Fusion, causal-LM setting: SmolLM2-135M multiple-choice adapters (issue #5)", "",
             f"Machine: {env['cpu']}, {env['logical_cores']} cores, torch {versions['torch']}, transformers "
             f"{versions['transformers']}; load average at start {env['load_average'][0]:.1f}; {env['date']}.", "",
             f"Adapters: SmolLM2-135M-Instruct (dequantised GGUF, fp32), dynamic LoRA rank 8 average on q_proj/v_proj "
             f"(60 layers), `--objective choice`, {a['steps']} steps x batch 8, lr {a['lr']:g}, max {a['max_length']} tokens, "
             f"seed {SEED}. Multi-task baseline: one adapter, same recipe, {a['multitask_steps']} steps on the four "
             "training splits interleaved. Scoring: mean token log-likelihood of each option (core/choice.py).", ""]
    lines += ["## Data", ""] + [f"- {t}: {s}" for t, s in report["data"].items()] + [""]
    r = report["router"]
    lines += ["## Router", "", f"Held-out task identification (balanced, {r['eval_per_task']} per task): "
              f"**{r['eval_accuracy']:.4f}** (target >= 0.98); {r['parameters']:,} parameters; features: {r['features']}; "
              f"top-p {report['top_p']}.", ""]
    ev = report["eval"]
    cols = [c for c in ("router", "fused", "oracle", "multitask", "base", "fused_p0.9", "fused_p1", "mean_kept_adapters")
            if c in ev["mean"]]
    lines += ["## Accuracy (held-out evaluation splits, option log-likelihood)", "",
              "fused = router's top-p weights; oracle = the task's own adapter; multitask = one adapter for all four; "
              "base = SmolLM2 with no adapter; fused_pX = top-p X.", "",
              "| task | n | " + " | ".join(cols) + " | fused - oracle (points) |", "|---|---|" + "---|" * (len(cols) + 1)]
    for task, row in ev.items():
        vals = " | ".join(f"{row[c]:.4f}" for c in cols)
        gap = f"{100 * (row['fused'] - row['oracle']):+.2f}"
        lines.append(f"| {task} | {row.get('n', '')} | {vals} | {gap} |")
    tasks = [t for t in ev if t != "mean"]
    lines += ["", "Reading (computed from the table): adapter gain over the base LM, oracle - base = "
              + ", ".join(f"{t.split(':')[-1]} {100 * (ev[t]['oracle'] - ev[t]['base']):+.1f}" for t in tasks)
              + " points; one multi-task adapter vs the task's own, multitask - oracle = "
              + ", ".join(f"{t.split(':')[-1]} {100 * (ev[t].get('multitask', float('nan')) - ev[t]['oracle']):+.1f}" for t in tasks)
              + " points. Targets: router >= 0.98 "
              + ("met" if report["router"]["eval_accuracy"] >= 0.98 else "not met")
              + "; fused within 1 point of the oracle on every task: "
              + ("met" if all(abs(ev[t]["fused"] - ev[t]["oracle"]) <= 0.01 for t in tasks) else "not met") + "."]
    lat = report.get("latency")
    if lat:
        lines += ["", "## Latency (PyTorch, batch 1, 2 threads, p50 of round-robin rounds)", "", f"Input: {lat['input']}.", "",
                  "| variant | p50 ms | vs single |", "|---|---|---|"]
        for n, t in lat["torch"].items():
            lines.append(f"| {n} | {t['p50']:.1f} | {lat['ratio_vs_single'][n]:.3f}x |")
        lines += ["", f"fused vs loop max |diff| of option scores: {lat['max_abs_check']}"]
    lines += ["", "## Reproduce", "", "```", "DYNALORA_BIGBENCH_DIR=/path/to/bigbench/benchmark_tasks "
              ".venv/bin/python benchmarks/fusion_lm.py", "```", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/fusion_lm")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--multitask-steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-eval", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if not os.environ.get("DYNALORA_BIGBENCH_DIR"):
        print("error: set DYNALORA_BIGBENCH_DIR to the bigbench benchmark_tasks folder (see the README's data section)", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    work = Path(args.work)
    report: dict[str, Any] = {"environment": environment(), "args": vars(args)}  # load average at the start
    out = Path(args.out)
    runs, seconds = train_runs(work, args.steps, args.max_length, args.max_eval, args.lr)
    report["train_seconds"] = seconds

    from dynalora.fusion import FuseConfig, evaluate_fusion, load_fusion, train_fusion
    from dynalora.fusion.train import task_data

    fuse = work / "fuse"
    if not (fuse / "fusion.json").is_file():
        t0 = time.perf_counter()
        train_fusion(FuseConfig(runs=[str(r) for r in runs], out=str(fuse), overwrite=True,
                                multitask_steps=args.multitask_steps))
        report["fuse_train_seconds"] = time.perf_counter() - t0
    fusion = load_fusion(fuse)
    report["data"] = {s.name: task_data(s).source for s in fusion.specs}
    report["router"] = fusion.config["router"] | {"losses": None}
    report["top_p"] = fusion.config["top_p"]
    report["multitask"] = fusion.config.get("multitask")
    report["run_metrics"] = {s.name: s.info.get("metrics") for s in fusion.specs}
    write_json(out / "fusion_lm.json", report)
    t0 = time.perf_counter()
    report["eval"] = evaluate_fusion(fusion, max_eval=args.max_eval)
    report["eval_seconds"] = time.perf_counter() - t0
    write_json(out / "fusion_lm.json", report)
    write_text(out / "fusion_lm.md", render(report))
    report["latency"] = latency(fusion, args.rounds)
    report["environment"]["load_average_end"] = os.getloadavg()
    write_json(out / "fusion_lm.json", report)
    write_text(out / "fusion_lm.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
