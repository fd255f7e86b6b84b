"""Generation data: prompt/response and chat files, BIG-bench generative tasks, `--objective generate`
conversions (core/data.py, core/bigbench.py) and the generation metrics (core/gen_metrics.py).

Run: .venv/bin/python -m pytest tests/core/test_generate_data.py -x -q
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from dynalora.core.data import GENERATION, MULTIPLE_CHOICE, Example, TaskData, TaskSpec, for_objective, load_task
from dynalora.core.gen_metrics import generation_metrics, normalize_answer
from dynalora.errors import ConfigError, DataError


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _chat(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": f"first question {i}"},
                         {"role": "assistant", "content": f"first answer {i}"},
                         {"role": "user", "content": f"  what is {i} + 1?  "},
                         {"role": "assistant", "content": f" {i + 1}\n"}]}


# --- user files -------------------------------------------------------------------------------


def test_csv_prompt_response(tmp_path: Path) -> None:
    rows = [[f"Translate {i} to words", f" word {i} "] for i in range(10)]
    rows.append(["Translate 3 to words", "another answer"])  # same prompt again: one example, both answers references
    path = _csv(tmp_path / "qa.csv", ["prompt", "response"], rows)
    data = load_task(None, train_file=str(path), eval_size=2, seed=1)
    assert data.spec == TaskSpec("qa", GENERATION, (), False)
    assert data.spec.num_labels == 0
    assert (len(data.train), len(data.eval)) == (8, 2)
    by_prompt = {e.text: e for e in data.train + data.eval}
    assert by_prompt["Translate 3 to words"] == Example("Translate 3 to words", None, 0, response="word 3",
                                                        references=("word 3", "another answer"))
    assert by_prompt["Translate 3 to words"].targets == ("word 3", "another answer")  # trained on the first
    assert "generation (prompt/response)" in data.source and "1 repeated prompts merged" in data.source
    # the same seed gives the same split; no eval prompt is in train
    again = load_task(None, train_file=str(path), eval_size=2, seed=1)
    assert again.eval == data.eval
    assert not {e.text for e in data.eval} & {e.text for e in data.train}


def test_tsv_prompt_response_with_references_cell(tmp_path: Path) -> None:
    path = tmp_path / "qa.tsv"
    path.write_text('prompt\tresponse\treferences\nCapital of France?\tParis\t["Paris, France", "Paris"]\n'
                    "2+2?\t4\t\n", encoding="utf-8")
    data = load_task(None, train_file=str(path), eval_file=str(path))
    assert [(e.text, e.response, e.references) for e in data.train] == [
        ("Capital of France?", "Paris", ("Paris", "Paris, France")), ("2+2?", "4", ("4",))]


def test_jsonl_chat_messages_with_system_and_history(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [_chat(i) for i in range(6)])
    data = load_task("mychat", train_file=str(path), eval_size=2)
    assert data.spec.problem == GENERATION and data.spec.name == "mychat" and data.spec.prompt == ("", "")
    assert "generation (chat messages)" in data.source
    e = {x.text: x for x in data.train + data.eval}["what is 4 + 1?"]
    assert e == Example("what is 4 + 1?", None, 0, response="5", references=("5",),
                        history=(("system", "You are terse."), ("user", "first question 4"),
                                 ("assistant", "first answer 4")))


def test_jsonl_references_and_eval_file(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", [
        {"prompt": "Name a primary colour", "response": "red", "references": ["blue", " red ", "yellow", "blue"]},
        {"prompt": "Say hi", "response": "hi"},
    ])
    evals = _jsonl(tmp_path / "eval.jsonl", [{"prompt": "Say hi", "response": "hello", "references": ["hi"]}])
    data = load_task(None, train_file=str(train), eval_file=str(evals))
    assert data.train[0].references == ("red", "blue", "yellow") and data.train[0].response == "red"
    assert data.train[0].targets == ("red", "blue", "yellow")
    assert data.eval == [Example("Say hi", None, 0, response="hello", references=("hello", "hi"))]
    assert data.source.startswith(f"files train={train} (2) / eval={evals} (1), generation (prompt/response)")
    assert "warning: 1 eval texts also appear in train" in data.source


BAD_JSONL = [
    ({"prompt": "q"}, r"bad\.jsonl:2: missing field 'response'"),
    ({"response": "a"}, r"bad\.jsonl:2: missing field 'prompt'"),
    ({"prompt": "q", "response": "   "}, r"bad\.jsonl:2: empty response"),
    ({"prompt": " \n", "response": "a"}, r"bad\.jsonl:2: empty prompt"),
    ({"prompt": ["q"], "response": "a"}, r"bad\.jsonl:2: 'prompt' must be a string, got list"),
    ({"prompt": "q", "response": "a", "references": "b"}, r"bad\.jsonl:2: 'references' must be a list"),
    ({"prompt": "q", "response": "a", "references": ["b", ""]}, r"bad\.jsonl:2: 'references' must be a list"),
    ({"messages": "hi"}, r"bad\.jsonl:2: 'messages' must be a list of \{\"role\""),
    ({"messages": []}, r"bad\.jsonl:2: 'messages' must be a list"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, r"bad\.jsonl:2: 'messages' must be"),
    ({"messages": ["user: q", "assistant: a"]}, r"bad\.jsonl:2: 'messages' must be"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"bad\.jsonl:2: the last message must be the assistant's"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "more?"}]}, r"bad\.jsonl:2: the last message must be the assistant's"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     r"bad\.jsonl:2: the message before the assistant's answer must be the user's prompt, got a system message"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, r"bad\.jsonl:2: the message before .* got nothing"),
    ({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r"bad\.jsonl:2: message 1 has unknown role 'bot'; use system, user, assistant"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}, r"bad\.jsonl:2: empty response"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}, r"bad\.jsonl:2: empty prompt"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "prompt": "q"},
     r"bad\.jsonl:2: holds both 'messages' and 'prompt'"),
    ({"text": "q", "label": "a"}, r"bad\.jsonl:2: a text/label record, but line 1 is a prompt/response record"),
]


@pytest.mark.parametrize(("row", "msg"), BAD_JSONL)
def test_bad_generation_records(tmp_path: Path, row: dict, msg: str) -> None:
    first = _chat(0) if "messages" in row else {"prompt": "ok", "response": "fine"}  # a good record of its kind
    bad = _jsonl(tmp_path / "bad.jsonl", [first, row])
    with pytest.raises(DataError, match=msg) as info:
        load_task(None, train_file=str(bad), eval_size=1)
    assert "\n" not in str(info.value)


def test_mixed_kinds_and_eval_kind(tmp_path: Path) -> None:
    chat = _jsonl(tmp_path / "chat.jsonl", [_chat(0), {"prompt": "q", "response": "a"}])
    with pytest.raises(DataError, match=r"chat\.jsonl:2: a prompt/response record, but line 1 is a chat messages"):
        load_task(None, train_file=str(chat))
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "response": "a"} for i in range(3)])
    labeled = _jsonl(tmp_path / "labeled.jsonl", [{"text": "q", "label": 1}])
    with pytest.raises(DataError, match=r"labeled\.jsonl:1: holds text/label records but the train file holds "
                                        r"prompt/response records"):
        load_task(None, train_file=str(train), eval_file=str(labeled))
    chat_eval = _jsonl(tmp_path / "chat_eval.jsonl", [_chat(1)])
    with pytest.raises(DataError, match=r"chat_eval\.jsonl:1: holds chat messages records"):
        load_task(None, train_file=str(train), eval_file=str(chat_eval))
    with pytest.raises(DataError, match=r"train\.jsonl:1: holds prompt/response records but the train file holds text/label"):
        load_task(None, train_file=str(labeled), eval_file=str(train))


def test_bad_csv_generation_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^.*p\.csv:1: missing column 'response' \(found \['prompt', 'label'\]\)$"):
        load_task(None, train_file=str(_csv(tmp_path / "p.csv", ["prompt", "label"], [["q", "a"], ["r", "b"]])))
    with pytest.raises(DataError, match=r"r\.csv:1: missing column 'prompt'"):
        load_task(None, train_file=str(_csv(tmp_path / "r.csv", ["text", "response"], [["q", "a"], ["r", "b"]])))
    with pytest.raises(DataError, match=r"e\.csv:3: empty response"):
        load_task(None, train_file=str(_csv(tmp_path / "e.csv", ["prompt", "response"], [["q", "a"], ["r", " "]])))
    short = tmp_path / "s.csv"
    short.write_text("prompt,response\nq,a\nr\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.csv:3: empty response"):
        load_task(None, train_file=str(short))
    with pytest.raises(DataError, match=r"n\.csv holds no examples"):
        load_task(None, train_file=str(_csv(tmp_path / "n.csv", ["prompt", "response"], [])))


def test_text_label_files_unchanged(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(6)])
    data = load_task(None, train_file=str(path), eval_size=2)
    assert data.spec.problem == "classification" and data.spec.label_names == ("a", "b")
    assert all(e.response is None and e.references is None and e.history == () for e in data.train)


# --- BIG-bench generative tasks --------------------------------------------------------------


def _bigbench(root: Path, name: str, task: dict) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "task.json").write_text(json.dumps(task), encoding="utf-8")
    return root


def test_bigbench_generative_task(tmp_path: Path) -> None:
    examples = [{"input": f" {i} + {i} = ", "target": f" {2 * i} "} for i in range(8)]
    examples += [{"input": "one in French", "target": ["un", " une", "", "un"]},
                 {"input": "blank", "target": ["  ", ""]},  # no non-empty target: skipped
                 {"input": "empty list", "target": []}]
    root = _bigbench(tmp_path, "arith", {"examples": examples, "task_prefix": "Add.\n",
                                         "example_input_prefix": "\nQuestion: ", "example_output_prefix": "\nAnswer: "})
    data = load_task("bigbench:arith", data_dir=str(root), eval_size=3)
    assert data.spec == TaskSpec("bigbench:arith", GENERATION, (), False, prompt=("Add.\n\nQuestion: ", "\nAnswer:"))
    assert (len(data.train), len(data.eval)) == (6, 3)
    by_text = {e.text: e for e in data.train + data.eval}
    assert by_text["3 + 3 ="] == Example("3 + 3 =", None, 0, response="6", references=("6",))
    assert by_text["one in French"] == Example("one in French", None, 0, response="un", references=("un", "une"))
    assert "blank" not in by_text and "empty list" not in by_text
    assert "(generation)" in data.source
    # default prompt fields, as for multiple choice
    _bigbench(tmp_path, "plain", {"examples": examples[:4]})
    assert load_task("bigbench:plain", data_dir=str(root), eval_size=1).spec.prompt == ("Q: ", "\nA:")
    # target_scores and target together: scored options win (classification here)
    both = [{"input": f"q{i}", "target_scores": {"yes": i % 2, "no": 1 - i % 2}, "target": "yes"} for i in range(6)]
    _bigbench(tmp_path, "both", {"examples": both})
    assert load_task("bigbench:both", data_dir=str(root), eval_size=2).spec.label_names == ("no", "yes")
    # every target empty; neither target nor target_scores; a non-string target
    _bigbench(tmp_path, "blank", {"examples": [{"input": "q", "target": " "}]})
    with pytest.raises(DataError, match="no example with a non-empty target"):
        load_task("bigbench:blank", data_dir=str(root))
    _bigbench(tmp_path, "neither", {"examples": [{"input": "q", "target": "a"}, {"input": "r"}]})
    with pytest.raises(DataError, match="no scored answer options or targets"):
        load_task("bigbench:neither", data_dir=str(root))
    _bigbench(tmp_path, "number", {"examples": [{"input": "q", "target": 3}]})
    with pytest.raises(DataError, match="no scored answer options or targets"):
        load_task("bigbench:number", data_dir=str(root))
    # a parent task whose subtasks differ in kind: name one of them
    _bigbench(tmp_path, "parent", {"name": "parent"})
    _bigbench(tmp_path / "parent", "gen", {"examples": examples[:4]})
    _bigbench(tmp_path / "parent", "cls", {"examples": both})
    with pytest.raises(DataError, match=r"bigbench:parent: some subtasks score answer options .* name one subtask"):
        load_task("bigbench:parent", data_dir=str(root))
    assert load_task("bigbench:parent/gen", data_dir=str(root), eval_size=1).spec.problem == GENERATION


# --- --objective generate ---------------------------------------------------------------------


def test_objective_generate_conversions() -> None:
    spec = TaskSpec("yn", "classification", ("No", "Yes"), True, prompt=("Q: ", "\nA:"))
    data = TaskData(spec, [Example("is it", "really", 1)], [Example("is not", None, 0)], "toy")
    gen = for_objective(data, "generate")
    assert gen.spec == TaskSpec("yn", GENERATION, (), False, prompt=("Q: ", "\nA:"))
    assert gen.train == [Example("is it\nreally", None, 0, response="Yes", references=("Yes",))]
    assert gen.eval == [Example("is not", None, 0, response="No", references=("No",))]
    assert gen.source == "toy; as generation: response = label name ['No', 'Yes'], text pair joined to the prompt by a newline"
    assert for_objective(gen, "generate") is gen and for_objective(gen, "auto") is gen

    mc_spec = TaskSpec("mc", MULTIPLE_CHOICE, (), False, num_choices=3, prompt=("P ", " S"))
    mc = TaskData(mc_spec, [Example("pick", None, 2, ("a", "b", "c"))], [], "mc src")
    gen_mc = for_objective(mc, "generate")
    assert gen_mc.spec.problem == GENERATION and gen_mc.spec.prompt == ("P ", " S")
    assert gen_mc.train == [Example("pick", None, 0, response="c", references=("c",))]
    assert gen_mc.source == "mc src; as generation: response = the right option's text"

    reg = TaskData(TaskSpec("r", "regression", (), False), [Example("x", None, 0.5)], [], "r")
    with pytest.raises(ConfigError, match="^--objective generate needs .* r is regression"):
        for_objective(reg, "generate")
    for objective in ("classifier", "choice"):
        with pytest.raises(ConfigError, match=f"task yn has prompt/response pairs: --objective {objective} cannot "
                                              r"learn it; use --objective generate \(or auto\) with a causal LM") as info:
            for_objective(gen, objective)
        assert "\n" not in str(info.value)


def test_objective_on_loaded_generation_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "g.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(5)])
    data = load_task(None, train_file=str(path), eval_size=1)
    assert for_objective(data, "auto") is data
    with pytest.raises(ConfigError, match="prompt/response pairs"):
        for_objective(data, "choice")


# --- metrics ----------------------------------------------------------------------------------


def test_exact_match_normalisation() -> None:
    assert normalize_answer("  the\tcat \n sat ") == "the cat sat"
    m = generation_metrics(["  Paris ", "the  big\ncat", "paris", "4"], [["Paris"], ["the big cat"], ["Paris"], ["four", "4"]])
    assert m["exact_match"] == pytest.approx(3 / 4)  # case-sensitive: "paris" misses
    assert m["n"] == 4


def test_rouge_l_known_pair() -> None:
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": P = R = F = 5/6
    m = generation_metrics(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert m["rougeL"] == pytest.approx(5 / 6)
    # best over the references (5/6 beats 0), averaged with a miss (0): 5/12
    m = generation_metrics(["the cat sat on the mat", "hello world"],
                           [["a dog", "the cat is on the mat"], ["goodbye"]])
    assert m["rougeL"] == pytest.approx(5 / 12)
    assert m["exact_match"] == 0.0
    # prediction "the cat" vs "the cat sat on the mat": P = 1, R = 2/6, F = 2PR/(P+R) = 1/2
    assert generation_metrics(["the cat"], [["the cat sat on the mat"]])["rougeL"] == pytest.approx(0.5)


def test_bleu_identical_and_multi_reference() -> None:
    sentences = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine today"]
    m = generation_metrics(sentences, [[s] for s in sentences])
    assert m["bleu"] == pytest.approx(100.0) and m["exact_match"] == 1.0 and m["rougeL"] == pytest.approx(1.0)
    assert generation_metrics(["completely different words here now"], [[sentences[0]]])["bleu"] < 5
    # Different numbers of references per example. Example 1: "the cat" against one 6-token reference
    # (1-gram 2/2, 2-gram 1/1 matched, no 3/4-grams). Example 2: "a b c d" equals one of its 2 references
    # (1..4-grams 4/4, 3/3, 2/2, 1/1). Corpus precisions are all 1, hypothesis length 6, closest reference
    # lengths 6 + 4 = 10: BLEU = 100 * exp(1 - 10/6). (Padding with '' instead of None would make the
    # empty reference closest to "the cat", the reference length 4 and BLEU 100.)
    m = generation_metrics(["the cat", "a b c d"], [["the cat sat on the mat"], ["x y", "a b c d"]])
    assert m["bleu"] == pytest.approx(100 * math.exp(1 - 10 / 6))
    assert m["exact_match"] == pytest.approx(0.5)
    # the reference order within an example does not matter
    swapped = generation_metrics(["the cat", "a b c d"], [["the cat sat on the mat"], ["a b c d", "x y"]])
    assert swapped["bleu"] == pytest.approx(m["bleu"])


def test_metrics_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one prediction"):
        generation_metrics([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        generation_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="example 0 needs a list of at least one reference"):
        generation_metrics(["a"], [[]])
    with pytest.raises(ValueError, match="example 0 needs a list"):
        generation_metrics(["a"], ["a"])
