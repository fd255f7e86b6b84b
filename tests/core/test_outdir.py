"""--overwrite cannot destroy what dynalora did not write; one writer per run; resume is explicit.

Run: .venv/bin/python -m pytest tests/core/test_outdir.py -q

Single-process runs of a tiny BERT (4 steps) through the CLI (`main`), as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dynalora.cli import main
from dynalora.core.config import TrainConfig
from dynalora.errors import ConfigError
from dynalora.core.outdir import MARKER, OutLock, check_replaceable, lock_path, read_marker, staging_path
from dynalora.core.train import TrainHooks, train


def _args(tiny_dirs, csv_data, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny_dirs["bert"]), "--train-file", str(csv_data), "--out", str(out),
            "--steps", "4", "--batch-size", "4", "--rank", "2", "--no-progress", "--threads", "1", *extra]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dynalora: error: "), lines
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tiny_dirs, csv_data, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    assert main(_args(tiny_dirs, csv_data, out)) == 0
    capsys.readouterr()
    return out


# ---- --overwrite ------------------------------------------------------------------------------
def test_run_folder_carries_marker(finished_run: Path) -> None:
    marker = read_marker(finished_run)
    assert marker is not None and marker["kind"] == "run"
    assert not lock_path(finished_run).exists(), "the lock file is removed when the run ends"


def test_overwrite_refuses_a_folder_dynalora_did_not_write(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work\n")
    line = _error(capsys, _args(tiny_dirs, csv_data, user, "--overwrite"))
    assert "did not write" in line and str(user) in line
    assert (user / "thesis.tex").read_text() == "years of work\n" and len(list(user.iterdir())) == 1


def test_overwrite_refuses_the_working_directory(tiny_dirs, csv_data, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "notes.txt").write_text("keep\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _error(capsys, _args(tiny_dirs, csv_data, Path("."), "--overwrite"))
    assert "did not write" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_refuses_other_kinds(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"kind": "export"}))
    (folder / "model.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a dynalora export folder, not a run"):
        check_replaceable(folder, "run")
    check_replaceable(folder, "export")  # its own kind: allowed


def test_overwrite_replaces_a_run_only_when_the_new_one_is_complete(finished_run, tiny_dirs, csv_data, capsys) -> None:
    before = _snapshot(finished_run)

    def interrupt(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    cfg = TrainConfig(model=str(tiny_dirs["bert"]), task=None, train_file=str(csv_data), out=str(finished_run), steps=4,
                      batch_size=4, progress=False, threads=1, overwrite=True, seed=1)
    cfg.lora.rank = 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, hooks=TrainHooks(on_step=interrupt))
    assert _snapshot(finished_run) == before, "an interrupted --overwrite must leave the previous run intact"
    assert staging_path(finished_run).is_dir()  # the half-built new run, beside it
    assert not lock_path(finished_run).exists()
    # the same command again replaces the old run (and the stale staging folder) once it completes
    assert main(_args(tiny_dirs, csv_data, finished_run, "--overwrite", "--seed", "1")) == 0
    assert not staging_path(finished_run).exists()
    after = _snapshot(finished_run)
    assert after["config.yaml"] != before["config.yaml"] and "seed: 1" in after["config.yaml"].decode()
    assert not any(p.name.startswith(f".{finished_run.name}.dynalora-old") for p in finished_run.parent.iterdir())


# ---- one writer -------------------------------------------------------------------------------
def test_second_writer_is_refused_while_the_first_holds_the_lock(finished_run, tiny_dirs, csv_data, capsys) -> None:
    (finished_run / "run.json").unlink()  # an unfinished run, so that --resume would write
    before = _snapshot(finished_run)
    with OutLock(finished_run):
        line = _error(capsys, _args(tiny_dirs, csv_data, finished_run, "--overwrite"))
        assert "being written by another dynalora process" in line and f"PID {os.getpid()}" in line
        line = _error(capsys, ["train", "--out", str(finished_run), "--resume", "--no-progress"])
        assert "being written by another dynalora process" in line
    assert _snapshot(finished_run) == before


def test_stale_lock_of_a_killed_process_is_taken_over(finished_run, tiny_dirs, csv_data, capsys) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dynalora.core.outdir import OutLock; "
         f"OutLock({str(finished_run)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = _error(capsys, _args(tiny_dirs, csv_data, finished_run, "--overwrite"))
        assert f"PID {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(finished_run).exists(), "SIGKILL leaves the lock file behind"
    assert main(_args(tiny_dirs, csv_data, finished_run, "--overwrite")) == 0  # the dead holder's lock is stale
    assert not lock_path(finished_run).exists()


def test_lock_released_when_acquire_races_with_unlink(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = OutLock(out).acquire()
    first.release()
    second = OutLock(out).acquire()  # re-created after the first holder unlinked it
    assert second.held and lock_path(out).exists()
    second.release()


# ---- --resume ---------------------------------------------------------------------------------
def test_resume_refuses_changed_flags_naming_them(finished_run, tiny_dirs, csv_data, capsys) -> None:
    ckpt_run = finished_run.parent / "ckpt"
    assert main(_args(tiny_dirs, csv_data, ckpt_run, "--checkpoint-every", "2")) == 0
    (ckpt_run / "run.json").unlink()  # as if it had stopped after its step-2 checkpoint
    before = _snapshot(ckpt_run)
    line = _error(capsys, ["train", "--out", str(ckpt_run), "--resume", "--rank", "4", "--lr", "0.05", "--steps", "20",
                           "--no-progress"])
    assert "--rank 4 (the run has 2)" in line and "--lr 0.05" in line and "--steps 20 (the run has 4)" in line
    assert _snapshot(ckpt_run) == before
    # the same values as saved, and runtime options, are fine
    assert main(["train", "--out", str(ckpt_run), "--resume", "--rank", "2", "--threads", "1", "--no-progress"]) == 0
    assert (ckpt_run / "run.json").is_file()


def test_resume_of_a_finished_run_does_nothing(finished_run, capsys) -> None:
    before = _snapshot(finished_run)
    assert main(["train", "--out", str(finished_run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "is finished (4 steps); nothing to resume" in out
    assert _snapshot(finished_run) == before


def test_resume_without_checkpoint_says_so(finished_run, capsys) -> None:
    (finished_run / "run.json").unlink()
    before = _snapshot(finished_run)
    line = _error(capsys, ["train", "--out", str(finished_run), "--resume", "--no-progress"])
    assert "no intact checkpoint" in line and "--overwrite" in line
    assert _snapshot(finished_run) == before


def test_resume_falls_back_to_newest_intact_checkpoint(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(_args(tiny_dirs, csv_data, ref, "--checkpoint-every", "1", "--steps", "6")) == 0
    assert main(_args(tiny_dirs, csv_data, out, "--checkpoint-every", "1", "--steps", "6")) == 0
    capsys.readouterr()
    # pretend the run stopped after step 5, and the disk damaged the step-5 checkpoint
    (out / "run.json").unlink()
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-0000004", "step-0000005"]
    state = ckpts[-1] / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "checkpoint step-0000005 is unreadable" in err[0] and "resuming from step-0000004" in err[0]
    a = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) <= 1e-6 for k in a)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_lock_is_held_for_the_run_lifetime(tiny_dirs, csv_data, tmp_path) -> None:
    out = tmp_path / "run"
    seen: list[bool] = []

    def probe(step: int) -> None:
        try:
            OutLock(out).acquire().release()
            seen.append(False)
        except ConfigError:
            seen.append(True)

    cfg = TrainConfig(model=str(tiny_dirs["bert"]), task=None, train_file=str(csv_data), out=str(out), steps=3,
                      batch_size=4, progress=False, threads=1)
    cfg.lora.rank = 2
    start = time.monotonic()
    train(cfg, hooks=TrainHooks(on_step=probe))
    assert seen == [True, True, True] and time.monotonic() - start < 120
    OutLock(out).acquire().release()  # free again afterwards


# ---- exports and fusions follow the same rule -----------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["export", "merged", "--run", "{run}", "--out", "{out}", "--overwrite"],
    ["export", "adapters", "--runs", "{run}", "--out", "{out}", "--overwrite"],
    ["fuse", "train", "--runs", "{run}", "{run}", "--out", "{out}", "--overwrite"],
])
def test_export_and_fuse_overwrite_refuse_foreign_folders(argv, finished_run, tmp_path, capsys) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("a,b\n")
    line = _error(capsys, [a.format(run=finished_run, out=user) for a in argv])
    assert "did not write" in line
    assert [p.name for p in user.iterdir()] == ["data.csv"]
    assert not any(p.name.startswith(".mine.") for p in tmp_path.iterdir())


def test_export_overwrite_replaces_its_own_export(finished_run, tmp_path, capsys) -> None:
    out = tmp_path / "exp"
    assert main(["export", "merged", "--run", str(finished_run), "--out", str(out)]) == 0
    assert read_marker(out)["kind"] == "export"
    first = (out / "manifest.json").read_bytes()
    line = _error(capsys, ["export", "merged", "--run", str(finished_run), "--out", str(out)])
    assert "--overwrite" in line
    with OutLock(out):
        line = _error(capsys, ["export", "merged", "--run", str(finished_run), "--out", str(out), "--overwrite"])
        assert "being written by another dynalora process" in line
    assert (out / "manifest.json").read_bytes() == first
    assert main(["export", "merged", "--run", str(finished_run), "--out", str(out), "--overwrite"]) == 0
    from dynalora.edge_runtime import load

    load(out)  # the manifest (checksums) covers the marker too
