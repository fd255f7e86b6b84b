"""Task files for the rank study: every method reads the same train / validation / evaluation JSONL files.

    .venv/bin/python benchmarks/rank_study_data.py --out /tmp/rank_study/data \
        --bigbench-dir /tmp/bigbench --vader-sdist /tmp/vaderSentiment-3.3.2.tar.gz

Each task is loaded once through the toolkit's own loaders (built-in corpora, `bigbench:`, and the GLUE
loader on GLUE-layout folders made here from offline sources), split with the loader's seeded split, and
written as three files:

    TASK/train.jsonl   the first `max_train` examples of the loader's training split
    TASK/val.jsonl     the next `n_val` examples of the training split (learning-rate selection only)
    TASK/eval.jsonl    the first `max_eval` examples of the loader's evaluation split (every reported figure)

Validation examples never overlap train or eval; the evaluation split is never used for a choice.

GLUE-layout folders made from offline data (the GLUE loader reads them as it reads `glue_data/`):
    SST-2  <- VADER tweets (hutto_ICWSM_2014, tweets_GroundTruth.txt): mean valence >= +0.5 -> positive,
              <= -0.5 -> negative, the rest dropped; seeded 80 / 20 split into train.tsv / dev.tsv
    RTE    <- BIG-bench epistemic_reasoning: "Premise: P Hypothesis: H" split into sentence1 / sentence2,
              entailment / non-entailment -> entailment / not_entailment; seeded 80 / 20 split
Regression: VADER movie-review snippets (movieReviewSnippets_GroundTruth.txt), mean valence in [-4, 4].
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

from dynalora.atomic import write_text
from dynalora.core.data import load_task
from dynalora.core.task import REGRESSION, Example, TaskData

SPLIT_SEED = 0

# name -> (loader task, data source kind, max_train, n_val, max_eval)
TASKS: dict[str, dict[str, Any]] = {
    "rotten_tomatoes": {"load": "rotten_tomatoes", "kind": "single sentence, binary sentiment"},
    "bbc_news": {"load": "bbc_news", "kind": "single document, 5 topics"},
    "intent": {"load": "bigbench:intent_recognition", "source": "bigbench", "kind": "single utterance, 7 intents",
               "n_val": 100},
    "tweets_sst2": {"load": "sst2", "source": "glue", "kind": "single tweet, binary sentiment (GLUE SST-2 layout)"},
    "epistemic_rte": {"load": "rte", "source": "glue", "kind": "sentence pair, entailment (GLUE RTE layout)"},
    "movie_valence": {"load": "movie_valence", "source": "vader", "kind": "single sentence, regression (valence)"},
}
DEFAULTS = {"max_train": 1000, "n_val": 300, "max_eval": 1000}


def _vader_member(sdist: Path, name: str) -> str:
    """A ground-truth file from the tarball that sits inside the vaderSentiment sdist."""
    with tarfile.open(sdist) as outer:
        inner_info = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_info).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = next(m for m in inner.getmembers() if m.name.endswith(name))
        return inner.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]


def _vader_rows(sdist: Path, name: str) -> list[tuple[str, float]]:
    rows = []
    for line in _vader_member(sdist, name).splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            text = " ".join(p.strip() for p in parts[2:]).strip()
            if text:
                rows.append((text, float(parts[1])))
    return rows


def _tsv_field(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def _split(rows: list[Any], seed: int = SPLIT_SEED, frac: float = 0.8) -> tuple[list[Any], list[Any]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    k = int(len(rows) * frac)
    return rows[:k], rows[k:]


def make_glue_sst2(sdist: Path, glue_dir: Path) -> None:
    rows = [(t, 1 if v >= 0.5 else 0) for t, v in _vader_rows(sdist, "tweets_GroundTruth.txt") if abs(v) >= 0.5]
    train, dev = _split(rows)
    for fname, part in (("train.tsv", train), ("dev.tsv", dev)):
        body = "sentence\tlabel\n" + "".join(f"{_tsv_field(t)}\t{y}\n" for t, y in part)
        write_text(glue_dir / "SST-2" / fname, body)


def make_glue_rte(bigbench_dir: Path, glue_dir: Path) -> None:
    task = json.loads((bigbench_dir / "epistemic_reasoning" / "task.json").read_text(encoding="utf-8"))
    rows = []
    for ex in task["examples"]:
        m = re.match(r"\s*Premise:\s*(.*?)\s*Hypothesis:\s*(.*)\s*$", ex["input"], flags=re.S)
        if not m:
            continue
        label = max(ex["target_scores"], key=ex["target_scores"].get)
        rows.append((m.group(1), m.group(2), "entailment" if label == "entailment" else "not_entailment"))
    train, dev = _split(rows)
    for fname, part in (("train.tsv", train), ("dev.tsv", dev)):
        body = "index\tsentence1\tsentence2\tlabel\n" + "".join(
            f"{i}\t{_tsv_field(a)}\t{_tsv_field(b)}\t{y}\n" for i, (a, b, y) in enumerate(part))
        write_text(glue_dir / "RTE" / fname, body)


def _records(examples: list[Example], data: TaskData) -> str:
    out = []
    for e in examples:
        rec: dict[str, Any] = {"text": e.text}
        if e.text_pair is not None:
            rec["text_pair"] = e.text_pair
        rec["label"] = float(e.label) if data.spec.problem == REGRESSION else data.spec.label_names[int(e.label)]
        out.append(json.dumps(rec, ensure_ascii=False))
    return "\n".join(out) + "\n"


def load_source(name: str, spec: dict[str, Any], glue_dir: Path, bigbench_dir: Path | None,
                sdist: Path | None, work: Path) -> TaskData:
    source = spec.get("source")
    if source == "glue":
        return load_task(spec["load"], data_dir=str(glue_dir))
    if source == "bigbench":
        return load_task(spec["load"], data_dir=str(bigbench_dir))
    if source == "vader":
        rows = list({t: (t, v) for t, v in _vader_rows(sdist, "movieReviewSnippets_GroundTruth.txt")}.values())  # type: ignore[arg-type]
        train, dev = _split(rows)  # duplicate texts dropped first (the last one kept), so no text is in both
        for fname, part in (("all_train.jsonl", train), ("all_eval.jsonl", dev)):
            write_text(work / fname, "".join(json.dumps({"text": t, "label": v}) + "\n" for t, v in part))
        return load_task(None, train_file=str(work / "all_train.jsonl"), eval_file=str(work / "all_eval.jsonl"))
    return load_task(spec["load"], seed=SPLIT_SEED)


def available(name: str, bigbench_dir: Path | None, sdist: Path | None) -> str | None:
    """None when the task's source data is at hand, else why not."""
    spec = TASKS[name]
    needs_bb = spec.get("source") == "bigbench" or name == "epistemic_rte"
    needs_vader = spec.get("source") == "vader" or name == "tweets_sst2"
    if needs_bb and not (bigbench_dir and (bigbench_dir / "intent_recognition").is_dir()):
        return "needs --bigbench-dir (the benchmark_tasks folder of the bigbench==1.0.0 sdist)"
    if needs_vader and not (sdist and sdist.is_file()):
        return "needs --vader-sdist (vaderSentiment-3.3.2.tar.gz from `pip download --no-binary :all: --no-deps`)"
    return None


def prepare(out: Path, names: list[str], bigbench_dir: Path | None, sdist: Path | None) -> dict[str, Any]:
    """Write the split files of every available task under `out`; returns {task: description or skip reason}."""
    glue_dir = out / "_glue"
    info: dict[str, Any] = {}
    for name in names:
        why = available(name, bigbench_dir, sdist)
        if why:
            info[name] = {"skipped": why}
            continue
        spec = {**DEFAULTS, **TASKS[name]}
        folder = out / name
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            info[name] = json.loads(meta_path.read_text())
            continue
        if name == "tweets_sst2":
            make_glue_sst2(sdist, glue_dir)  # type: ignore[arg-type]
        if name == "epistemic_rte":
            make_glue_rte(bigbench_dir, glue_dir)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        data = load_source(name, spec, glue_dir, bigbench_dir, sdist, folder)
        n_train = min(spec["max_train"], len(data.train) - spec["n_val"])
        train = data.train[:n_train]
        val = data.train[n_train : n_train + spec["n_val"]]
        ev = data.eval[: spec["max_eval"]]
        for fname, part in (("train.jsonl", train), ("val.jsonl", val), ("eval.jsonl", ev)):
            write_text(folder / fname, _records(part, data))
        meta = {"kind": spec["kind"], "loader": spec["load"], "source": data.source, "problem": data.spec.problem,
                "labels": list(data.spec.label_names), "has_pair": data.spec.has_pair,
                "n_train": len(train), "n_val": len(val), "n_eval": len(ev)}
        from dynalora.atomic import write_json

        write_json(meta_path, meta)
        info[name] = meta
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--bigbench-dir", default=None)
    ap.add_argument("--vader-sdist", default=None)
    args = ap.parse_args()
    info = prepare(Path(args.out), args.tasks.split(","), Path(args.bigbench_dir) if args.bigbench_dir else None,
                   Path(args.vader_sdist) if args.vader_sdist else None)
    json.dump(info, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
