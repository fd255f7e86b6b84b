"""Fusion folders: train the router over K task adapters, save, and load them back (`load_fusion`).

    dynalora fuse train --runs runs/rt runs/bbc runs/intent runs/nli --out fuse/ [--top-p 0.6] [--multitask-steps 600]
    fusion = load_fusion("fuse/")        # evaluation: dynalora.fusion.evaluate (`dynalora fuse eval`)

    FUSE/
      fusion.json                 tasks, label names, top-p, router settings, data sources, held-out router accuracy
      router.safetensors          the router MLP (LayerNorm, fc1, fc2)
      adapters/<task>/            copy of each run: adapter/ (PEFT + dynalora.json), run.json, config.yaml
      tokenizer/                  the base tokenizer
      multitask/                  optional: one adapter trained on all tasks (a normal run folder), the baseline

The router is trained on task-labelled examples drawn from each adapter's own training split (seeded,
balanced: the same number per task) and evaluated on each task's held-out evaluation split.
Everything is checked before anything is written; the folder appears complete or not at all.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dynalora import __version__
from dynalora.atomic import atomic_dir, write_json
from dynalora.core.outdir import OutLock, check_out_path, check_replaceable, is_empty_dir, write_marker
from dynalora.core.data import Example, TaskData
from dynalora.errors import CheckpointError, DynaloraError
from dynalora.core.models import load_saved_tokenizer
from dynalora.core.run_io import _read_json
from dynalora.fusion.adapters import AdapterSpec, FusionError, check_compatible, read_adapter
from dynalora.fusion.config import FuseConfig
from dynalora.fusion.model import FusedModel, build_fused_model
from dynalora.fusion.router import Router, sentence_features, train_router

FORMAT = "dynalora-fusion"
FORMAT_VERSION = 1


@dataclass
class LoadedFusion:
    path: Path
    config: dict[str, Any]  # fusion.json
    model: FusedModel
    tokenizer: Any
    specs: list[AdapterSpec]

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])


def folder_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", task) or "task"


def task_config(spec: AdapterSpec) -> Any:
    """The run's TrainConfig (its data, max_length, and for generation max_new_tokens / stop)."""
    from dynalora.core.config import TrainConfig

    try:
        return TrainConfig.from_yaml(spec.path / "config.yaml")
    except DynaloraError as exc:
        raise FusionError(f"cannot read the configuration of task {spec.name} ({spec.path}): {exc}") from None


def task_data(spec: AdapterSpec) -> TaskData:
    """The run's own data (same seeded split it was trained and evaluated on)."""
    from dynalora.core.batches import load_data

    try:
        return load_data(task_config(spec))
    except DynaloraError as exc:
        raise FusionError(f"cannot load the data of task {spec.name} ({spec.path}): {exc}") from None


def encode_texts(tokenizer: Any, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    return dict(tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))


@torch.no_grad()
def features(fused: FusedModel, tokenizer: Any, examples: list[Example], max_length: int, batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(examples), batch):
        enc = encode_texts(tokenizer, examples[i : i + batch], max_length)
        out.append(sentence_features(fused.model, enc["input_ids"], enc.get("attention_mask")))
    return torch.cat(out)


def balanced(per_task: list[list[Example]], n: int, seed: int) -> list[list[Example]]:
    rng = random.Random(seed)
    return [rng.sample(ex, n) if len(ex) > n else list(ex) for ex in per_task]


def _router_from(folder: str, names: list[str], in_features: int) -> tuple[Router, dict[str, Any]]:
    """A trained router restricted / re-ordered to `names`; refuses a task it was not trained with."""
    path = Path(folder)
    cfg = _read_json(path / "fusion.json")
    trained = [t["name"] for t in cfg["tasks"]]
    unknown = [n for n in names if n not in trained]
    if unknown:
        raise FusionError(f"the router in {path} was trained for tasks {trained}, not {unknown[0]!r}: it cannot route "
                          "to an adapter it was not trained with; train a new router (drop --router-from)")
    router = load_router(path, len(trained), in_features, int(cfg["router"]["hidden"]))
    rows = torch.tensor([trained.index(n) for n in names])
    new = Router(in_features, len(names), router.fc1.out_features, 0.0)
    new.load_state_dict({k: v for k, v in router.state_dict().items() if not k.startswith("fc2.")}, strict=False)
    with torch.no_grad():
        new.fc2.weight.copy_(router.fc2.weight[rows])
        new.fc2.bias.copy_(router.fc2.bias[rows])
    return new.eval(), cfg


def load_router(path: Path, num_tasks: int, in_features: int, hidden: int) -> Router:
    try:
        state = load_file(str(path / "router.safetensors"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path / 'router.safetensors'} is missing or corrupt ({str(exc)[:80]})") from None
    if state.get("fc2.weight") is None or state["fc2.weight"].shape != (num_tasks, hidden):
        got = tuple(state["fc2.weight"].shape) if "fc2.weight" in state else None
        raise CheckpointError(f"the router in {path} has outputs {got}, but the fusion lists {num_tasks} tasks: "
                              "a router routes only to the adapters it was trained with; re-run `dynalora fuse train`")
    router = Router(in_features, num_tasks, hidden, 0.0)
    router.load_state_dict(state)
    return router.eval()


@torch.no_grad()
def router_accuracy(router: Router, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return float((router(feats).argmax(-1) == labels).float().mean())


def train_fusion(cfg: FuseConfig) -> Path:
    """Validate, train the router (and optionally the multi-task baseline), write the fusion folder."""
    cfg.validate()
    out = Path(cfg.out)
    check_out_path(out)
    if out.exists() and not is_empty_dir(out):
        if not cfg.overwrite:
            raise FusionError(f"output folder {out} exists; pass --overwrite to replace it")
        check_replaceable(out, "fusion")  # only a folder an earlier `fuse train` wrote
    specs = [read_adapter(r) for r in cfg.runs]
    check_compatible(specs)
    datas = [task_data(s) for s in specs]
    for s, d in zip(specs, datas, strict=True):
        if not d.train or not d.eval:
            raise FusionError(f"task {s.name} ({s.path}) has an empty {'training' if not d.train else 'evaluation'} "
                              "split: the router needs examples of every task")
    names = [s.name for s in specs]
    max_length = cfg.max_length or max(int(_read_yaml_max_length(s.path)) for s in specs)
    fused = build_fused_model(specs, None, cfg.top_p, seed=cfg.router.seed)
    tokenizer = load_saved_tokenizer(specs[0].path / "tokenizer")
    hidden_size = fused.model.get_input_embeddings().embedding_dim

    n_eval = min(len(d.eval) for d in datas)
    eval_sets = balanced([d.eval for d in datas], n_eval, cfg.router.seed + 1)
    eval_feats = torch.cat([features(fused, tokenizer, ex, max_length) for ex in eval_sets])
    eval_labels = torch.cat([torch.full((len(ex),), k) for k, ex in enumerate(eval_sets)])
    n_train = min(cfg.router.per_task, *(len(d.train) for d in datas))
    record: dict[str, Any]
    if cfg.router_from:
        router, _ = _router_from(cfg.router_from, names, hidden_size)
        record = {"reused_from": str(Path(cfg.router_from).resolve()), "train_per_task": None, "losses": []}
    else:
        train_sets = balanced([d.train for d in datas], n_train, cfg.router.seed)
        feats = torch.cat([features(fused, tokenizer, ex, max_length) for ex in train_sets])
        labels = torch.cat([torch.full((len(ex),), k) for k, ex in enumerate(train_sets)])
        router, losses = train_router(feats, labels, len(specs), cfg.router)
        record = {"train_per_task": n_train, "train_accuracy": router_accuracy(router, feats, labels), "losses": losses}
    record |= {"eval_per_task": n_eval, "eval_accuracy": router_accuracy(router, eval_feats, eval_labels),
               "features": "mean of input token embeddings (frozen base)", **asdict(cfg.router),
               "parameters": sum(p.numel() for p in router.parameters())}
    record["hidden"] = router.fc1.out_features
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dynalora_version": __version__,
        "base_model": specs[0].info["base_model"], "model_type": specs[0].info.get("model_type", ""),
        "top_p": cfg.top_p, "max_length": max_length, "target_modules": sorted(specs[0].ranks),
        "tasks": [{"name": s.name, "folder": f"adapters/{folder_name(s.name)}", "source": str(s.path.resolve()),
                   "label_names": s.label_names, "ranks": s.ranks, "data": d.source,
                   "run_metrics": s.info.get("metrics", {})} for s, d in zip(specs, datas, strict=True)],
        "router": record,
    }
    with OutLock(out, "fusion"), atomic_dir(out, overwrite=cfg.overwrite) as tmp:  # one writer at a time
        save_file({k: v.contiguous() for k, v in router.state_dict().items()}, str(tmp / "router.safetensors"))
        for s in specs:
            dst = tmp / "adapters" / folder_name(s.name)
            shutil.copytree(s.path / "adapter", dst / "adapter")
            for f in ("run.json", "config.yaml"):
                shutil.copyfile(s.path / f, dst / f)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if cfg.multitask_steps:
            info["multitask"] = train_multitask(specs, datas, tmp, cfg.multitask_steps, max_length)
        write_json(tmp / "fusion.json", info)
        write_marker(tmp, "fusion")
    return out


def _read_yaml_max_length(path: Path) -> int:
    from dynalora.core.config import TrainConfig

    return TrainConfig.from_yaml(path / "config.yaml").max_length


def _write_multitask_files(specs: list[AdapterSpec], datas: list[TaskData], folder: Path) -> dict[str, Path]:
    """train/eval files of the union of the tasks, interleaved (any prefix mixes the tasks).

    Classification: CSV, label "task|label" (one joint head). Multiple choice: JSONL whose text is each
    task's full prompt (core/choice.py) and whose choices are the example's own options. Generation (or a
    mix of generation and multiple choice): JSONL chat messages, the user turn each task's full prompt, the
    assistant turn its response (for a multiple-choice task: the right option's text).
    """
    from dynalora.core.choice import prompt_text

    problems = {s.problem for s in specs}
    choice = problems == {"multiple_choice"}
    generation = "generation" in problems
    files = {}
    for split in ("train", "eval"):
        files[split] = folder / f"{split}.{'jsonl' if choice or generation else 'csv'}"
        if generation:
            per_task = [[_generation_record(prompt_text(d.spec, e), e) for e in getattr(d, split)] for d in datas]
        elif choice:
            per_task = [[{"text": prompt_text(d.spec, e), "choices": list(e.choices or ()), "label": int(e.label)}
                         for e in getattr(d, split)] for d in datas]
        else:
            per_task = [[(e.text, f"{s.name}|{s.label_names[int(e.label)]}") for e in getattr(d, split)]
                        for s, d in zip(specs, datas, strict=True)]
        rows = [r[i] for i in range(max(len(r) for r in per_task)) for r in per_task if i < len(r)]
        with open(files[split], "w", newline="", encoding="utf-8") as fh:
            if choice or generation:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            else:
                w = csv.writer(fh)
                w.writerow(["text", "label"])
                w.writerows(rows)
    return files


def _generation_record(prompt: str, e: Example) -> dict[str, Any]:
    answer = e.response if e.response is not None else (e.choices or ())[int(e.label)]
    messages = [{"role": r, "content": c} for r, c in e.history]
    record: dict[str, Any] = {"messages": messages + [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": answer}]}
    if e.references and len(e.references) > 1:
        record["references"] = list(e.references)
    return record


def train_multitask(specs: list[AdapterSpec], datas: list[TaskData], folder: Path, steps: int, max_length: int) -> dict:
    """One adapter trained on every task's training split: with a joint head ("task|label" classes) for
    classification; as one multiple-choice task (each task's own prompt format) for causal-LM runs."""
    from dynalora.core.config import TrainConfig
    from dynalora.core.train import train

    base = TrainConfig.from_yaml(specs[0].path / "config.yaml")
    generation = [task_config(s) for s in specs if s.problem == "generation"]
    decoding: dict[str, Any] = {}
    if generation:  # one generation run over every task: the longest answers any task allows
        decoding = {"objective": "generate", "max_new_tokens": max(c.max_new_tokens for c in generation),
                    "stop": sorted({t for c in generation for t in (c.stop or [])}) or None}
    with tempfile.TemporaryDirectory(prefix="dynalora-multitask-") as tmpdir:
        files = _write_multitask_files(specs, datas, Path(tmpdir))
        cfg = TrainConfig.from_dict({**base.to_dict(), **decoding, "task": None, "train_file": str(files["train"]),
                                     "eval_file": str(files["eval"]), "eval_size": None, "max_train": None,
                                     "max_eval": 500,  # only its own end-of-training metric
                                     "steps": steps, "out": str(folder / "multitask"),
                                     "max_length": max_length, "overwrite": False, "resume": False,
                                     "progress": False, "backend": "local", "workers": 1})
        result = train(cfg)
    return {"folder": "multitask", "steps": steps, "metrics": result.metrics,
            "recipe": f"LoRA/dynamic settings of {specs[0].path.name}, all tasks' training splits, "
                      + _multitask_kind({s.problem for s in specs})}


def _multitask_kind(problems: set[str]) -> str:
    if "generation" in problems:
        return "one generation task (multiple-choice tasks answer with the right option's text)"
    return "one multiple-choice task" if problems == {"multiple_choice"} else "joint head"


def load_fusion(path: str | Path) -> LoadedFusion:
    """Load a fusion folder: `.model` (FusedModel, eval mode) and `.tokenizer`."""
    path = Path(path)
    if not (path / "fusion.json").is_file():
        raise FusionError(f"{path} is not a dynalora fusion folder (no fusion.json); create one with `dynalora fuse train`")
    cfg = _read_json(path / "fusion.json")
    if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / 'fusion.json'} is not a version-{FORMAT_VERSION} {FORMAT} file; re-run fuse train")
    specs = [read_adapter(path / t["folder"]) for t in cfg["tasks"]]
    for t, s in zip(cfg["tasks"], specs, strict=True):
        if s.name != t["name"]:
            raise CheckpointError(f"{path / t['folder']} holds task {s.name!r}, fusion.json says {t['name']!r}")
    fused = build_fused_model(specs, None, float(cfg["top_p"]))
    hidden_size = fused.model.get_input_embeddings().embedding_dim
    fused.router = load_router(path, len(specs), hidden_size, int(cfg["router"]["hidden"]))
    return LoadedFusion(path=path, config=cfg, model=fused, tokenizer=load_saved_tokenizer(path / "tokenizer"), specs=specs)
