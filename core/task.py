"""Task types shared by every data source: examples, task specs, and the seeded split.

    Example(text, text_pair, label, choices=None)     one input and its answer
    TaskSpec(name, problem, label_names, has_pair)    what the model must learn
    TaskData(spec, train, eval, source)               splits plus the line that says where they came from

Seeded splits sort the deduplicated examples into a stable order, shuffle with `random.Random(seed)`
and cut: the same seed gives the same split on every machine, and no eval input is in train.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dynalora.errors import ConfigError, DataError, not_utf8_message

CLASSIFICATION = "classification"
REGRESSION = "regression"
MULTIPLE_CHOICE = "multiple_choice"  # per-example answer options, scored by a causal LM (core/choice.py)
GENERATION = "generation"  # prompt -> response, a causal LM generates the answer (core/generate.py)
PROBLEMS = (CLASSIFICATION, REGRESSION, MULTIPLE_CHOICE, GENERATION)
OBJECTIVES = ("auto", "classifier", "choice", "generate")


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None
    label: int | float  # class index; value for regression; index into `choices` for multiple choice; 0 for generation
    choices: tuple[str, ...] | None = None  # multiple choice only: this example's answer options
    response: str | None = None  # generation only: the answer trained on (the first reference)
    references: tuple[str, ...] | None = None  # generation only: every acceptable answer (metrics take the best)
    history: tuple[tuple[str, str], ...] = ()  # generation only: (role, content) messages before the prompt

    @property
    def targets(self) -> tuple[str, ...]:
        """Generation: the reference answers the metrics compare against (the response when no others)."""
        if self.references:
            return self.references
        return (self.response,) if self.response is not None else ()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    problem: str  # "classification", "regression", "multiple_choice" or "generation"
    label_names: tuple[str, ...]  # index -> name; () for regression and multiple choice
    has_pair: bool
    num_choices: int = 0  # multiple choice: the largest number of options of any example
    prompt: tuple[str, str] = ("", "")  # multiple choice / generation: text before / after the input

    def __post_init__(self) -> None:
        if self.problem not in PROBLEMS:
            raise ConfigError(f"problem must be one of {', '.join(PROBLEMS)}, got {self.problem!r}")

    @property
    def num_labels(self) -> int:
        if self.problem == MULTIPLE_CHOICE:
            return self.num_choices
        if self.problem == GENERATION:
            return 0
        return 1 if self.problem == REGRESSION else len(self.label_names)


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: list[Example]
    eval: list[Example]
    source: str



def read_utf8(path: Path) -> str:
    """The text of a data file (a UTF-8 byte-order mark is dropped); not UTF-8 is a DataError naming the byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8_message(path, raw, exc)) from None


# ---- seeded split and truncation ------------------------------------------------------------
def example_key(e: Example) -> tuple:
    """What makes two examples the same input: the text(s), the options of a multiple-choice example, the
    earlier messages of a generation example (its response is the answer, not the input)."""
    if e.response is not None:
        return (e.text, e.text_pair, e.history)
    return (e.text, e.text_pair) if e.choices is None else (e.text, e.text_pair, e.choices)


def _answer(e: Example) -> object:
    """What two copies of one input must agree on: the label; for generation nothing (one prompt may have
    several good answers: the first copy is kept)."""
    return None if e.response is not None else e.label


def _dedupe(examples: Sequence[Example]) -> tuple[list[Example], int, int]:
    """Drop exact duplicate inputs (keep one) and inputs seen with conflicting labels (drop all).

    Generation: copies of one prompt are one example whose references are all the copies' answers (in file
    order; the first copy's response is the one trained on), as a data-to-text corpus lists several
    acceptable texts for one input."""
    labels: dict[tuple, set[object]] = {}
    answers: dict[tuple, list[str]] = {}
    for e in examples:
        labels.setdefault(example_key(e), set()).add(_answer(e))
        if e.response is not None:
            bucket = answers.setdefault(example_key(e), [])
            bucket += [t for t in e.targets if t not in bucket]
    conflicting = {k for k, v in labels.items() if len(v) > 1}
    seen: set[tuple] = set()
    kept = []
    for e in examples:
        key = example_key(e)
        if key in conflicting or key in seen:
            continue
        seen.add(key)
        if e.response is not None and len(answers[key]) > len(e.targets):
            e = replace(e, references=tuple(answers[key]))
        kept.append(e)
    n_conflict = sum(1 for e in examples if example_key(e) in conflicting)
    return kept, len(examples) - len(kept) - n_conflict, n_conflict


def _eval_count(eval_size: int | float, n: int) -> int:
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, float)):
        raise ConfigError(f"eval_size must be a count or a fraction in (0, 1), got {eval_size!r}")
    if isinstance(eval_size, float):
        if not 0.0 < eval_size < 1.0:
            raise ConfigError(f"eval_size as a fraction must be in (0, 1), got {eval_size}")
        count = max(1, round(eval_size * n))
    else:
        count = eval_size
    if not 1 <= count < n:
        raise ConfigError(f"eval_size {eval_size} leaves no training data: only {n} unique examples")
    return count


def seeded_split(examples: Sequence[Example], seed: int, eval_size: int | float | None,
                  default: int | float) -> tuple[list[Example], list[Example], str]:
    unique, duplicates, conflicts = _dedupe(examples)
    ordered = sorted(unique, key=lambda e: (e.text, e.text_pair or "", str(e.label), e.choices or (), e.history,
                                            e.response or ""))
    random.Random(seed).shuffle(ordered)
    n_eval = _eval_count(default if eval_size is None else eval_size, len(ordered))
    evals, train = ordered[:n_eval], ordered[n_eval:]
    note = f"seeded split seed={seed}: {len(train)} train / {len(evals)} eval"
    if unique and unique[0].response is not None and duplicates:
        note += f" ({duplicates} repeated prompts merged: their answers are the first copy's references)"
    elif duplicates or conflicts:
        note += f" (dropped {duplicates} duplicate and {conflicts} conflicting-label examples)"
    return train, evals, note


def _subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or len(examples) <= n:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))  # seeded, keeps file order
    return [examples[i] for i in keep]


def truncate(data: TaskData, max_train: int | None, max_eval: int | None, seed: int) -> TaskData:
    train, evals = _subsample(data.train, max_train, seed), _subsample(data.eval, max_eval, seed)
    if len(train) == len(data.train) and len(evals) == len(data.eval):
        return data
    source = f"{data.source}; subsampled (seed={seed}) to {len(train)} train / {len(evals)} eval"
    return TaskData(data.spec, train, evals, source)
