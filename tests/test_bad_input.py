"""Every bad input: one clear line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynalora import load_run
from dynalora.cli import main
from dynalora.core.errors import CheckpointError


def _run(capsys, args: list[str]) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("dynalora: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _base(tiny_dirs, csv_data, out: Path) -> list[str]:
    return ["train", "--model", str(tiny_dirs["bert"]), "--train-file", str(csv_data), "--task", "", "--out", str(out),
            "--steps", "4", "--batch-size", "4", "--rank", "2", "--no-progress"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--task", "nosuchtask"], "nosuchtask"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--target-modules", "nope"], "candidates"),
        (["--max-rank", "1"], "impossible budget"),
        (["--min-rank", "3"], "impossible budget"),
        (["--input-adaptive", "sometimes"], "input-adaptive"),
        (["--train-file", "/nonexistent/train.csv"], "/nonexistent/train.csv"),
        (["--backend", "carrier-pigeon"], "backend"),
        (["--batch-size", "100000"], "batch-size"),
    ],
)
def test_bad_training_input(extra, needle, tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = _base(tiny_dirs, csv_data, out)
    if extra[0] == "--task":  # a task name alone (no files): must be a known task
        i = args.index("--train-file")
        del args[i : i + 2]
    line = _run(capsys, args + extra)
    assert needle in line
    assert not out.exists(), "nothing may be written on bad input"


def test_missing_column(tiny_dirs, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello,1\nbye,0\n")
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, bad, out))
    assert "text" in line and not out.exists()


def test_labels_that_do_not_fit_the_task(tiny_dirs, tmp_path, capsys) -> None:
    bad = tmp_path / "sst.csv"
    bad.write_text("text,label\ngood,positive\nbad,negative\nmeh,maybe\n" * 3)
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, bad, out) + ["--task", "sst2"])
    assert "maybe" in line and not out.exists()


def test_eval_label_unknown_to_training(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    ev = tmp_path / "eval.csv"
    ev.write_text("text,label\ngood,7\n")
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + ["--eval-file", str(ev)])
    assert "7" in line and not out.exists()


def test_existing_output_is_refused_and_untouched(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    line = _run(capsys, _base(tiny_dirs, csv_data, out))
    assert "--overwrite" in line
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_corrupt_checkpoint_on_resume(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_base(tiny_dirs, csv_data, out) + ["--steps", "6", "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    ckpt = sorted((out / "checkpoints").iterdir())[-1] / "state.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    line = _run(capsys, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert "corrupt or truncated" in line and str(ckpt) in line
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage-config"])
def test_corrupt_adapter_is_a_clear_error(damage, tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_base(tiny_dirs, csv_data, out)) == 0
    if damage == "truncate":
        f = out / "adapter" / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    else:
        (out / "adapter" / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(out)


def test_not_a_run_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a finished dynalora run"):
        load_run(tmp_path)


def test_resume_without_a_run(tmp_path, capsys) -> None:
    line = _run(capsys, ["train", "--out", str(tmp_path / "none"), "--resume", "--no-progress"])
    assert "not a run folder" in line
