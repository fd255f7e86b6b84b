"""GLUE tasks: the standard `glue_data/` folder layout (download_glue_data.py), or `datasets` when online.

Original file names, columns and label conventions of each task; label order as the Hugging Face `glue`
dataset. The evaluation split is the dev file (MNLI: dev_matched).
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dynalora.errors import DataError
from dynalora.core.task import CLASSIFICATION, REGRESSION, Example, TaskData, TaskSpec, read_utf8

@dataclass(frozen=True)
class _Glue:
    folder: str
    eval_file: str
    text: str | int  # header name, or column index for header-less CoLA
    pair: str | int | None
    label: str | int  # header name, column index, or -1 for "last column"
    labels: tuple[str, ...]  # () = regression
    raw_labels: tuple[str, ...]  # raw file value for each label index
    header: bool = True
    hf_text: str = "sentence"
    hf_pair: str | None = None


GLUE: dict[str, _Glue] = {
    "sst2": _Glue("SST-2", "dev.tsv", "sentence", None, "label", ("negative", "positive"), ("0", "1")),
    "mrpc": _Glue("MRPC", "dev.tsv", "#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"),
                  ("0", "1"), hf_text="sentence1", hf_pair="sentence2"),
    "qnli": _Glue("QNLI", "dev.tsv", "question", "sentence", "label", ("entailment", "not_entailment"),
                  ("entailment", "not_entailment"), hf_text="question", hf_pair="sentence"),
    "rte": _Glue("RTE", "dev.tsv", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), hf_text="sentence1", hf_pair="sentence2"),
    "cola": _Glue("CoLA", "dev.tsv", 3, None, 1, ("unacceptable", "acceptable"), ("0", "1"), header=False),
    "stsb": _Glue("STS-B", "dev.tsv", "sentence1", "sentence2", -1, (), (),
                  hf_text="sentence1", hf_pair="sentence2"),
    "qqp": _Glue("QQP", "dev.tsv", "question1", "question2", "is_duplicate", ("not_duplicate", "duplicate"),
                 ("0", "1"), hf_text="question1", hf_pair="question2"),
    "mnli": _Glue("MNLI", "dev_matched.tsv", "sentence1", "sentence2", -1,
                  ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                  hf_text="premise", hf_pair="hypothesis"),
}
_STSB_RANGE = (0.0, 5.0)


def glue_spec(task: str) -> TaskSpec:
    g = GLUE[task]
    return TaskSpec(task, REGRESSION if not g.labels else CLASSIFICATION, g.labels, g.pair is not None)



def _glue_task_dir(task: str, data_dir: str) -> Path:
    folder = GLUE[task].folder
    root = Path(data_dir).expanduser()
    for candidate in (root / folder, root):
        if (candidate / "train.tsv").is_file():
            return candidate
    raise DataError(
        f"GLUE {folder} not found: expected {root / folder / 'train.tsv'} (glue_data layout) or {root / 'train.tsv'}"
    )


def _read_tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file without quoting (GLUE text has bare quotes)."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not a valid TSV file ({exc})") from None


def _column(header: list[str], name: str | int, path: Path) -> int:
    if isinstance(name, int):
        return name
    clean = [h.strip().lstrip("\ufeff") for h in header]
    if name not in clean:
        raise DataError(f"{path}: missing column {name!r} in header {clean}")
    return clean.index(name)


def _read_glue_file(task: str, path: Path) -> tuple[list[Example], int]:
    """Examples of one GLUE TSV, and the number of malformed rows skipped (QQP only)."""
    g = GLUE[task]
    rows = _read_tsv_rows(path)
    header: list[str] = []
    if g.header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path} is empty")
        header = first[1]
    i_text = _column(header, g.text, path)
    i_pair = _column(header, g.pair, path) if g.pair is not None else None
    i_label = _column(header, g.label, path)
    needed = max(i for i in (i_text, i_pair, i_label, len(header) - 1 if g.label == -1 else 0) if i is not None) + 1
    label_index = {raw: k for k, raw in enumerate(g.raw_labels)}
    examples, skipped = [], 0
    for line, row in rows:
        if len(row) < needed:
            if task == "qqp":  # the official QQP files hold a few broken rows; GLUE loaders skip them too
                skipped += 1
                continue
            raise DataError(f"{path}:{line}: expected {needed} tab-separated columns, found {len(row)}")
        raw = row[i_label].strip()
        if g.labels:
            if raw not in label_index:
                raise DataError(f"{path}:{line}: label {raw!r} is not one of {list(g.raw_labels)}")
            label: int | float = label_index[raw]
        else:
            label = _parse_score(raw, path, line)
        pair = row[i_pair] if i_pair is not None else None
        examples.append(Example(row[i_text], pair, label))
    return examples, skipped


def _parse_score(raw: str, path: Path, line: int) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{line}: STS-B score {raw!r} is not a number") from None
    if not _STSB_RANGE[0] <= value <= _STSB_RANGE[1]:
        raise DataError(f"{path}:{line}: STS-B score {value} is outside {list(_STSB_RANGE)}")
    return value


def load_glue_dir(task: str, data_dir: str) -> TaskData:
    g = GLUE[task]
    folder = _glue_task_dir(task, data_dir)
    train, skipped_train = _read_glue_file(task, folder / "train.tsv")
    dev, skipped_dev = _read_glue_file(task, folder / g.eval_file)
    source = f"GLUE {g.folder} from {folder} (train.tsv / {g.eval_file})"
    if skipped_train or skipped_dev:
        source += f", skipped malformed rows: {skipped_train} train / {skipped_dev} eval"
    return TaskData(glue_spec(task), train, dev, source)


def load_glue_hub(task: str) -> TaskData:
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"GLUE {task} needs local files: pass --data-dir path/to/glue_data, or `pip install datasets`")
    import datasets  # noqa: PLC0415 - optional dependency, only for online users

    g = GLUE[task]
    eval_split = "validation_matched" if task == "mnli" else "validation"
    ds = datasets.load_dataset("glue", task)

    def convert(split: str) -> list[Example]:
        rows = ds[split]
        pairs = rows[g.hf_pair] if g.hf_pair else [None] * len(rows)
        labels = [float(v) for v in rows["label"]] if not g.labels else [int(v) for v in rows["label"]]
        return [Example(t, p, y) for t, p, y in zip(rows[g.hf_text], pairs, labels, strict=True)]

    source = f"GLUE {task} via datasets.load_dataset('glue', '{task}') (train / {eval_split})"
    return TaskData(glue_spec(task), convert("train"), convert(eval_split), source)
