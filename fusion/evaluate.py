"""Evaluate a fusion folder on every task's held-out split: router accuracy, and accuracy of the fused
model against its oracle (each task's own adapter), the base model and the optional multi-task baseline.

    dynalora fuse eval fuse/ [--max-eval 500] [--json eval.json]
    results = evaluate_fusion(load_fusion("fuse/"), max_eval=500)   # {task: {...}, "mean": {...}}

Classifier fusions read each task's own head; causal-LM multiple-choice fusions score every answer option.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from dynalora.core.data import Example
from dynalora.fusion.adapters import AdapterSpec
from dynalora.fusion.router import dlp_lora_weights, top_p_weights
from dynalora.fusion.train import LoadedFusion, encode_texts, task_data


@torch.no_grad()
def evaluate_fusion(fusion: LoadedFusion, max_eval: int | None = 500, batch: int = 64, extra_p: tuple[float, ...] = (),
                    dlp_softmax: bool = False) -> dict[str, Any]:
    """Per task (its held-out split): router accuracy; accuracy of fused / oracle / base / multi-task.

    fused: the router's top-p weights, read on the task's own head; fused_top1: the routed answer (wrong
    whenever the top-1 task is wrong); oracle: one-hot weight on the task = its adapter alone; base: no
    adapter, the task's head; multitask: the joint adapter, argmax over the task's own classes.
    """
    model, tok, ml = fusion.model, fusion.tokenizer, fusion.max_length
    multitask = _load_multitask(fusion)
    specs = fusion.specs
    if model.causal:
        return _evaluate_causal(fusion, multitask, max_eval, max(1, batch // 4), extra_p)
    results: dict[str, Any] = {}
    for k, s in enumerate(specs):
        examples = task_data(s).eval[:max_eval]
        counts: dict[str, float] = {}
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            enc = encode_texts(tok, chunk, ml)
            y = torch.tensor([int(e.label) for e in chunk])
            lo, _ = model.label_slices[k]
            routed = model(**enc)
            variants = {"fused": routed}
            onehot = torch.zeros(len(chunk), len(specs))
            onehot[:, k] = 1.0
            variants["oracle"] = model(**enc, fusion_weights=onehot)
            variants["base"] = model(**enc, fusion_weights=torch.zeros_like(onehot))
            for p in extra_p:
                variants[f"fused_p{p:g}"] = model(**enc, fusion_weights=top_p_weights(routed.router_probs, p))
            if dlp_softmax:
                variants["fused_dlp_softmax"] = model(**enc, fusion_weights=dlp_lora_weights(routed.router_probs, model.top_p))
            _add(counts, "router", routed.router_probs.argmax(-1) == k)
            _add(counts, "fused_top1", routed.logits.argmax(-1) == y + lo)
            for name, out in variants.items():
                _add(counts, name, model.task_logits(out, k).argmax(-1) == y)
            _add(counts, "mean_kept_adapters", (routed.fusion_weights > 0).float().sum(-1))
            if multitask is not None:
                _add(counts, "multitask", _multitask_pred(multitask, enc, s) == y)
        n = len(examples)
        results[s.name] = {"n": n, **{name: v / n for name, v in counts.items()}, "data": "held-out evaluation split"}
    keys = [k for k in next(iter(results.values())) if k not in ("n", "data")]
    results["mean"] = {key: sum(r[key] for r in results.values()) / len(specs) for key in keys}
    return results


def _add(counts: dict[str, float], key: str, values: torch.Tensor) -> None:
    counts[key] = counts.get(key, 0.0) + float(values.float().sum())


def _load_multitask(fusion: LoadedFusion) -> Any:
    if not (fusion.path / "multitask" / "run.json").is_file():
        return None
    from dynalora.core.run_io import load_run

    return load_run(fusion.path / "multitask")


def _multitask_pred(run: Any, enc: dict[str, torch.Tensor], spec: AdapterSpec) -> torch.Tensor:
    names = run.label_names
    cols = [names.index(f"{spec.name}|{label}") for label in spec.label_names]
    logits = run.model(**enc).logits[:, cols]
    return logits.argmax(-1)


def _evaluate_causal(fusion: LoadedFusion, multitask: Any, max_eval: int | None, batch: int,
                     extra_p: tuple[float, ...]) -> dict[str, Any]:
    """evaluate_fusion for causal-LM fusions: multiple-choice tasks score every option, generation tasks
    generate (the run's max_new_tokens / stop) and report exact_match, rougeL and bleu per variant."""
    from dynalora.core.choice import ChoiceScorer, encode_choices, prompt_text

    model, tok, ml = fusion.model, fusion.tokenizer, fusion.max_length
    results: dict[str, Any] = {}
    for k, s in enumerate(fusion.specs):
        data = task_data(s)
        examples = data.eval[:max_eval]
        if s.problem == "generation":
            results[s.name] = _evaluate_generation_task(fusion, k, s, data, examples, multitask, batch * 4, extra_p)
            continue
        counts: dict[str, float] = {}
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            choices = encode_choices(tok, data.spec, chunk, ml)
            route = encode_texts(tok, chunk, ml)
            y = choices["labels"]
            onehot = torch.zeros(len(chunk), len(fusion.specs))
            onehot[:, k] = 1.0
            routed = model.score_choices(choices, route["input_ids"], route.get("attention_mask"))
            variants = {"fused": routed,
                        "oracle": model.score_choices(choices, route["input_ids"], route.get("attention_mask"), onehot),
                        "base": model.score_choices(choices, route["input_ids"], route.get("attention_mask"),
                                                    torch.zeros_like(onehot))}
            for p in extra_p:
                variants[f"fused_p{p:g}"] = model.score_choices(choices, route["input_ids"], route.get("attention_mask"),
                                                                top_p_weights(routed.router_probs, p))
            _add(counts, "router", routed.router_probs.argmax(-1) == k)
            for name, out in variants.items():
                _add(counts, name, out.logits.argmax(-1) == y)
            _add(counts, "mean_kept_adapters", (routed.fusion_weights > 0).float().sum(-1))
            if multitask is not None:  # the multi-task run was trained on full prompts (its file's text)
                full = [Example(prompt_text(data.spec, e), None, e.label, e.choices) for e in chunk]
                enc = encode_choices(multitask.tokenizer, _plain_prompt(data.spec), full, ml)
                out = ChoiceScorer(multitask.model)(**enc)
                _add(counts, "multitask", out.logits.argmax(-1) == y)
        n = len(examples)
        results[s.name] = {"n": n, **{name: v / n for name, v in counts.items()}, "data": "held-out evaluation split"}
    return _with_mean(results)


def _with_mean(results: dict[str, Any]) -> dict[str, Any]:
    """results + "mean": each column averaged over the tasks that report it (a mixed fusion's tasks differ)."""
    columns: list[str] = []
    for r in results.values():
        columns += [c for c in r if c not in ("n", "data", "metric") and c not in columns and isinstance(r[c], float)]
    results["mean"] = {c: sum(r[c] for r in results.values() if c in r) / sum(c in r for r in results.values())
                       for c in columns}
    return results


def _evaluate_generation_task(fusion: LoadedFusion, k: int, s: AdapterSpec, data: Any, examples: list[Example],
                              multitask: Any, batch: int, extra_p: tuple[float, ...]) -> dict[str, Any]:
    """One generation task of a fusion: router accuracy, then the generation metrics of each variant
    (fused = routed top-p weights for the whole answer; oracle = one-hot; base = no adapter; multitask)."""
    from dynalora.core.gen_metrics import generation_metrics
    from dynalora.core.generate import cut_at_stop, prompt_ids
    from dynalora.fusion.train import task_config

    model, tok, ml = fusion.model, fusion.tokenizer, fusion.max_length
    cfg = task_config(s)
    texts: dict[str, list[str]] = {}
    routed_right = kept = 0.0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        prompts = [prompt_ids(tok, data.spec, e) for e in chunk]
        route = encode_texts(tok, chunk, ml)
        probs = model.route(route["input_ids"], route.get("attention_mask"))
        onehot = torch.zeros(len(chunk), len(fusion.specs))
        onehot[:, k] = 1.0
        variants = {"fused": None, "oracle": onehot, "base": torch.zeros_like(onehot)}
        for p in extra_p:
            variants[f"fused_p{p:g}"] = top_p_weights(probs, p)
        for name, w in variants.items():
            new, weights = model.generate(tok, prompts, route["input_ids"], route.get("attention_mask"), w,
                                          max_new_tokens=cfg.max_new_tokens, stop=cfg.stop)
            texts.setdefault(name, []).extend(cut_at_stop(tok.decode(t, skip_special_tokens=True), cfg.stop) for t in new)
            if name == "fused":
                kept += float((weights > 0).float().sum())
        routed_right += float((probs.argmax(-1) == k).float().sum())
        if multitask is not None:
            texts.setdefault("multitask", []).extend(_multitask_generate(multitask, data, chunk, cfg))
    refs = [e.targets for e in examples]
    n = len(examples)
    out: dict[str, Any] = {"n": n, "router": routed_right / n, "mean_kept_adapters": kept / n}
    for name, t in texts.items():
        m = generation_metrics(t, refs)
        out[name] = m["rougeL"]  # the headline column of a generation task (as accuracy for the others)
        out.update({f"{name}_{key}": float(v) for key, v in m.items() if key != "n"})
    out["metric"] = "rougeL"
    out["data"] = "held-out evaluation split"
    return out


def _multitask_generate(run: Any, data: Any, chunk: list[Example], cfg: Any) -> list[str]:
    """The multi-task run's answers: it was trained on full prompts (prompt_text), so it reads them plain."""
    from dynalora.core.choice import prompt_text
    from dynalora.core.generate import generate_texts

    full = [replace(e, text=prompt_text(data.spec, e), text_pair=None) for e in chunk]
    return generate_texts(run.model, run.tokenizer, _plain_prompt(data.spec), full, cfg.max_new_tokens, cfg.stop,
                          batch_size=len(full))


def _plain_prompt(spec: Any) -> Any:
    from dataclasses import replace

    return replace(spec, prompt=("", ""))
