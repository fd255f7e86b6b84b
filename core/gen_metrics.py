"""Generation metrics: exact match, ROUGE-L and corpus BLEU of generated answers against references.

    from dynalora.core.gen_metrics import generation_metrics
    generation_metrics(["Paris", "4"], [["Paris"], ["four", "4"]])
    # {"exact_match": 1.0, "rougeL": 1.0, "bleu": ..., "n": 2}

Each prediction is compared with every reference of its example (an example may have any number >= 1):

    exact_match  fraction 0..1 of predictions equal to one of their references after stripping and
                 collapsing internal whitespace runs to one space; case-sensitive, punctuation counts.
    rougeL       mean over examples of the best ROUGE-L F-measure (longest common subsequence of words)
                 over the example's references; fraction 0..1. `rouge-score`'s RougeScorer(["rougeL"]):
                 lower-cased, non-alphanumerics dropped, no stemming.
    bleu         corpus BLEU (sacrebleu.corpus_bleu, default 13a tokenizer and exp smoothing) on sacrebleu's
                 0..100 scale. Multiple references: n-gram matches are clipped against all the example's
                 references and the brevity penalty uses the reference length closest to the prediction.
                 Reference streams are padded with None where an example has fewer references than the most
                 any example has; sacrebleu drops None (an '' padding would count as an empty reference and
                 distort the brevity penalty). BLEU counts up to 4-grams: a corpus of answers under 4 tokens
                 scores 0 even when right; read exact_match for short answers.
    n            the number of examples.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynalora.errors import ConfigError

GEN_METRICS_INSTALL = "pip install rouge-score==0.1.2 sacrebleu==2.6.0"


def normalize_answer(text: str) -> str:
    """What exact match compares: the text stripped, each whitespace run collapsed to one space."""
    return " ".join(text.split())


def generation_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """exact_match, rougeL (fractions 0..1), bleu (0..100) and n for predictions against their references."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences (one entry per example), not a string")
    if not predictions:
        raise ValueError("generation_metrics needs at least one prediction")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    refs: list[list[str]] = []
    for i, (pred, example_refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i} is {type(pred).__name__}, not a string")
        if isinstance(example_refs, str) or not example_refs or not all(isinstance(r, str) for r in example_refs):
            raise ValueError(f"example {i} needs a list of at least one reference string, got {example_refs!r}")
        refs.append(list(example_refs))
    try:
        import sacrebleu  # noqa: PLC0415 - optional: only generation runs need it
        from rouge_score import rouge_scorer  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise ConfigError(f"generation metrics need the {exc.name} package: {GEN_METRICS_INSTALL}") from None

    preds = list(predictions)
    exact = sum(normalize_answer(p) in {normalize_answer(r) for r in rs} for p, rs in zip(preds, refs))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = sum(max(scorer.score(r, p)["rougeL"].fmeasure for r in rs) for p, rs in zip(preds, refs))
    width = max(len(rs) for rs in refs)
    streams = [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)]
    bleu = sacrebleu.corpus_bleu(preds, streams).score
    n = len(preds)
    return {"exact_match": exact / n, "rougeL": rouge / n, "bleu": float(bleu), "n": n}
