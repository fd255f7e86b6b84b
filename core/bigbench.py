"""BIG-bench JSON tasks (`bigbench:<task>`) from the `benchmark_tasks` folder of the bigbench sdist.

    load_task("bigbench:intent_recognition", data_dir=".../bigbench/benchmark_tasks")
    load_task("bigbench:social_iqa")            # DYNALORA_BIGBENCH_DIR=.../benchmark_tasks

A task whose examples all share one `target_scores` key set is a fixed-label classification task (the
keys, sorted, are the labels). A task whose options differ per example (social_iqa, goal_step_wikihow)
is multiple choice: each example keeps its own options, in file order, and needs a causal LM that scores
them (`--objective choice`, core/choice.py). The right answer is the option with the highest score.
A task whose examples carry `target` (a string or a list of strings) and no `target_scores` is generative
(`--objective generate`, core/generate.py): text = the input, response = the first target, references =
every target (stripped, empty ones and repeats dropped, order kept); an example with no non-empty target
is skipped. Examples with both keep the scored-options reading above.

A task folder without a task.json of its own but with subtask folders (goal_step_wikihow:
goal_inference, step_inference, step_ordering) is the union of its subtasks; `bigbench:<task>/<subtask>`
names one.

Prompt format (multiple choice and generation): BIG-bench's own fields. prefix = task_prefix +
example_input_prefix (default "Q: "), suffix = example_output_prefix (default "\\nA:"), each option scored
as " " + option; a generative task gets the same prefix and suffix around its input.
Examples keep the raw input as their text, so a router reads the input, not a constant task prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dynalora.core.task import (
    CLASSIFICATION,
    GENERATION,
    MULTIPLE_CHOICE,
    Example,
    TaskData,
    TaskSpec,
    read_utf8,
    seeded_split,
)
from dynalora.errors import DataError

_DEFAULT_EVAL_FRACTION = 0.2
_INPUT_PREFIX = "\nQ: "  # BIG-bench's JSON-task defaults
_OUTPUT_PREFIX = "\nA: "


def _read(path: Path, name: str) -> dict[str, Any]:
    try:
        task = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg})") from None
    examples = task.get("examples") if isinstance(task, dict) else None
    if examples and all(isinstance(e, dict) and "input" in e for e in examples):
        if all(isinstance(e.get("target_scores"), dict) and e["target_scores"] for e in examples):
            return task
        if all("target_scores" not in e and _is_target(e.get("target")) for e in examples):
            return task
    raise DataError(f"{path}: bigbench:{name} has no scored answer options or targets (examples need input and "
                    "target_scores, or input and target)")


def _is_target(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))


def _generative(name: str, where: Path, raw: list[dict[str, Any]]) -> list[Example]:
    examples = []
    for e in raw:
        targets = [e["target"]] if isinstance(e["target"], str) else e["target"]
        refs = tuple(dict.fromkeys(t.strip() for t in targets if t.strip()))
        if refs:  # an example with no non-empty target has nothing to train on
            examples.append(Example(str(e["input"]).strip(), None, 0, response=refs[0], references=refs))
    if not examples:
        raise DataError(f"{where}: bigbench:{name} has no example with a non-empty target")
    return examples


def _task_files(root: Path, name: str) -> list[Path]:
    folder = root / name
    subtasks = sorted(folder.glob("*/task.json")) if folder.is_dir() else []
    if (folder / "task.json").is_file() and not (subtasks and '"examples"' not in read_utf8(folder / "task.json")):
        return [folder / "task.json"]  # a task of its own (a parent task.json without examples lists subtasks)
    if not subtasks:
        raise DataError(f"missing BIG-bench task file {folder / 'task.json'}")
    return subtasks


def _prompt(task: dict[str, Any]) -> tuple[str, str]:
    prefix = str(task.get("task_prefix", "")) + str(task.get("example_input_prefix", _INPUT_PREFIX))
    return prefix.lstrip("\n"), str(task.get("example_output_prefix", _OUTPUT_PREFIX)).rstrip()


def load_bigbench(name: str, data_dir: str | None, seed: int, eval_size: int | float | None) -> TaskData:
    root_s = data_dir or os.environ.get("DYNALORA_BIGBENCH_DIR")
    if not root_s:
        raise DataError(f"bigbench:{name} needs --data-dir (or DYNALORA_BIGBENCH_DIR) = the benchmark_tasks folder")
    files = _task_files(Path(root_s).expanduser(), name)
    tasks = [_read(f, name) for f in files]
    prompts = {_prompt(t) for t in tasks}
    if len(prompts) != 1:
        raise DataError(f"bigbench:{name}: its subtasks use different prompt formats; name one subtask "
                        f"(bigbench:{name}/<subtask>)")
    raw = [e for t in tasks for e in t["examples"]]
    where = files[0] if len(files) == 1 else files[0].parent.parent
    scored = {"target_scores" in e for e in raw}
    if scored == {False}:  # targets only: a generative task
        examples = _generative(name, where, raw)
        spec = TaskSpec(f"bigbench:{name}", GENERATION, (), False, prompt=next(iter(prompts)))
        train, evals, note = seeded_split(examples, seed, eval_size, _DEFAULT_EVAL_FRACTION)
        return TaskData(spec, train, evals, f"BIG-bench {name} from {where} (generation), {note}")
    if scored != {True}:
        raise DataError(f"bigbench:{name}: some subtasks score answer options (target_scores) and some only have "
                        f"targets; name one subtask (bigbench:{name}/<subtask>)")
    key_sets = {frozenset(e["target_scores"]) for e in raw}
    if len(key_sets) == 1:  # fixed labels: a classification task
        names = tuple(sorted(next(iter(key_sets))))
        examples = [Example(str(e["input"]).strip(), None, max(range(len(names)), key=lambda k, s=e["target_scores"]: s[names[k]]))
                    for e in raw]
        spec = TaskSpec(f"bigbench:{name}", CLASSIFICATION, names, False, prompt=next(iter(prompts)))
    else:
        examples = []
        for e in raw:
            scores = e["target_scores"]
            choices = tuple(str(c).strip() for c in scores)
            if len(choices) < 2 or len(set(choices)) != len(choices):
                continue  # a malformed example (one option, or the same option twice) cannot be scored
            best = max(range(len(choices)), key=lambda k, v=list(scores.values()): v[k])
            examples.append(Example(str(e["input"]).strip(), None, best, choices))
        if not examples:
            raise DataError(f"{where}: bigbench:{name} has no example with at least 2 distinct options")
        spec = TaskSpec(f"bigbench:{name}", MULTIPLE_CHOICE, (), False,
                        num_choices=max(len(e.choices or ()) for e in examples), prompt=next(iter(prompts)))
    train, evals, note = seeded_split(examples, seed, eval_size, _DEFAULT_EVAL_FRACTION)
    kind = "multiple choice" if spec.problem == MULTIPLE_CHOICE else f"{len(spec.label_names)} fixed labels"
    return TaskData(spec, train, evals, f"BIG-bench {name} from {where} ({kind}), {note}")
