"""Every bad input: one clear line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynalora import load_run
from dynalora.cli import main
from dynalora.errors import CheckpointError


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
    (out / "run.json").unlink()  # an unfinished run (a finished one has nothing to resume)
    # every checkpoint truncated: nothing intact to fall back to (one damaged checkpoint is a fallback, see test_outdir)
    ckpts = [p / "state.safetensors" for p in sorted((out / "checkpoints").iterdir())]
    for ckpt in ckpts:
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])  # truncated
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    line = _run(capsys, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert "corrupt or truncated" in line and str(ckpts[-1]) in line and "no intact checkpoint" in line
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


# ---- non-finite numbers: refused with the flag's name -----------------------------------------
@pytest.mark.parametrize(
    "flag, value",
    [("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "inf"), ("--warmup-ratio", "nan"), ("--epochs", "inf"),
     ("--eval-size", "inf"), ("--lora-alpha", "inf"), ("--lora-dropout", "nan"), ("--input-weight", "nan"),
     ("--ema", "nan"), ("--example-gamma", "inf"), ("--interval-frac", "nan")],
)
def test_non_finite_float_flags(flag, value, tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + [flag, value])
    assert f"{flag} must be a finite number, got {value}" in line and not out.exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lr", "-1"], "--lr must be > 0"),
        (["--head-lr", "0"], "--head-lr must be > 0"),
        (["--eval-size", "1.5"], "--eval-size must be a fraction in (0, 1) or a whole number"),
        (["--eval-size", "0"], "--eval-size must be a fraction"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--max-train", "0"], "--max-train must be >= 1"),
        (["--max-eval", "-3"], "--max-eval must be >= 1"),
        (["--log-every", "0"], "--log-every must be >= 1"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["--max-length", str(10**9)], "--max-length 1000000000 is beyond any model's context"),
        (["--max-length", str(10**30)], "--max-length"),
        (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1]"),
        (["--device", "bogus"], "--device must be cpu, cuda, cuda:N or auto"),
        (["--eval-file", ""], "--eval-file is empty"),
        (["--sketch-dim", "1"], "--sketch-dim must be >= 2"),
        (["--seed", str(10**20)], "--seed must be between -4294967295 and 4294967295"),
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),  # argparse's own errors: one line too
    ],
)
def test_bad_numbers_and_names(extra, needle, tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + extra)
    assert needle in line and not out.exists()


# ---- files: not UTF-8, empty, header only, a folder, mixed labels ---------------------------------
@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("latin1.csv", b"text,label\ncaf\xe9 good,1\nbad,0\n", "latin1.csv is not UTF-8 text (byte 0xe9 at offset 14, line 2)"),
        ("latin1.tsv", b"text\tlabel\nok\t1\n\xff\t0\n", "latin1.tsv is not UTF-8 text (byte 0xff at offset 16, line 3)"),
        ("latin1.jsonl", b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', "latin1.jsonl is not UTF-8"),
        ("empty.csv", b"", "missing column 'text'"),
        ("header.csv", b"text,label\n", "header.csv holds no examples"),
        ("empty.jsonl", b"\n\n", "empty.jsonl holds no examples"),
        ("mixed.csv", b"text,label\na,1\nb,pos\nc,0\nd,neg\n", "labels mix numbers and names ('1' on line 2, 'pos' on line 3)"),
        ("list.jsonl", b'{"text": "a", "label": [1]}\n', "'label' must be a string or a number, got list"),
        ("nan.jsonl", b'{"text": "a", "label": NaN}\n{"text": "b", "label": 1.5}\n', "label nan is not a finite number"),
        ("nan.csv", b"text,label\na,0.5\nb,nan\n", "nan.csv:3: label 'nan' is not a finite number"),
    ],
)
def test_bad_data_files(name, content, needle, tiny_dirs, tmp_path, capsys) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, bad, out))
    assert needle in line and not out.exists()


def test_folder_given_as_train_file(tiny_dirs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, tmp_path, out))
    assert f"data file {tmp_path} is a folder" in line and not out.exists()


def test_glue_and_bigbench_files_not_utf8(tmp_path) -> None:
    from dynalora.core.data import load_task
    from dynalora.errors import DataError

    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_bytes(b"sentence\tlabel\nfine\t1\nna\xefve\t0\n")
    (sst / "dev.tsv").write_text("sentence\tlabel\nok\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv is not UTF-8 text \(byte 0xef at offset 24, line 3\)"):
        load_task("sst2", data_dir=str(tmp_path))
    task = tmp_path / "bench" / "mytask"
    task.mkdir(parents=True)
    (task / "task.json").write_bytes(b'{"examples": [{"input": "caf\xe9", "target_scores": {"a": 1}}]}')
    with pytest.raises(DataError, match=r"task\.json is not UTF-8 text"):
        load_task("bigbench:mytask", data_dir=str(tmp_path / "bench"))


# ---- YAML --config: encoding, types, hyphenated keys --------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        (b"steps: 4\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 14, line 2)"),
        (b'steps: "four"\n', "option 'steps' (--steps) must be an integer or null, got 'four' (str)"),
        (b"steps: 4.5\n", "option 'steps' (--steps) must be an integer or null, got 4.5 (float)"),
        (b"lora: {rank: two}\n", "option 'lora.rank' (--rank) must be an integer, got 'two' (str)"),
        (b"lora: [1, 2]\n", "option 'lora' must be a mapping of lora options"),
        (b"dynamic: 3\n", "option 'dynamic' must be a mapping of dynamic options"),
        (b"lr: [1]\n", "option 'lr' (--lr) must be a number or null, got [1] (list)"),
        (b"progress: 'yes'\n", "option 'progress' (--progress) must be true or false, got 'yes' (str)"),
        (b"dynamic: {reallocate: 1}\n", "option 'dynamic.reallocate' (--reallocate) must be true or false, got 1 (int)"),
        (b"lora: {target_modules: query}\n", "(--target-modules) must be a list of strings or null"),
        (b"model: 3\n", "option 'model' (--model) must be a string, got 3 (int)"),
        (b"lora: {max_rank: 8, max-rank: 4}\n", "option 'lora.max_rank' is given twice"),
        (b"lr: .inf\n", "--lr must be a finite number, got inf"),
        (b"- a\n- b\n", "must hold a mapping of option: value"),
    ],
)
def test_bad_yaml_config(yaml_text, needle, tiny_dirs, csv_data, tmp_path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(yaml_text)
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + ["--config", str(cfg)])
    assert needle in line and not out.exists()


def test_config_folder_is_refused(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + ["--config", str(tmp_path)])
    assert "is a folder; pass a YAML file" in line and not out.exists()


def test_yaml_hyphen_and_underscore_keys_and_python_types(tmp_path) -> None:
    from dynalora.core.config import TrainConfig

    for key in ("max-rank", "max_rank"):
        cfg_file = tmp_path / f"{key}.yaml"
        cfg_file.write_text(f"max-length: 32\neval-size: 16\nlora:\n  {key}: 12\n  target-modules: [query]\n", encoding="utf-8")
        cfg = TrainConfig.from_yaml(cfg_file)
        assert (cfg.lora.max_rank, cfg.max_length, cfg.lora.target_modules) == (12, 32, ["query"])
        assert cfg.eval_size == 16.0 and isinstance(cfg.eval_size, float)  # ints are accepted for floats
    cfg = TrainConfig.from_dict({"model": tmp_path, "train_file": tmp_path / "t.csv", "lr": 1, "task": None})
    assert cfg.model == str(tmp_path) and cfg.train_file == str(tmp_path / "t.csv") and cfg.lr == 1.0
    assert TrainConfig.from_dict(TrainConfig(out="x").to_dict()) == TrainConfig(out="x")  # round trip


# ---- a model path that does not exist is never sent to the hub ------------------------------------
@pytest.mark.parametrize("name", ["assets/nope", "./nope", "~/nope", "/abs/nope", "assets/sub/nope"])
def test_missing_model_path_is_not_a_hub_id(name, csv_data, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "out"
    args = ["train", "--model", name, "--train-file", str(csv_data), "--task", "", "--out", str(out), "--steps", "4",
            "--batch-size", "4", "--rank", "2", "--no-progress"]
    line = _run(capsys, args)
    shown = str(Path(name).expanduser())
    assert f"model path {shown} does not exist" in line or f"model path {name} does not exist" in line
    assert not out.exists()


def test_hub_ids_stay_hub_ids(tmp_path, monkeypatch) -> None:
    from dynalora.core.models import load_tokenizer, looks_like_path, resolve_model_path
    from dynalora.errors import ModelError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").mkdir()
    assert resolve_model_path("org/name") == "org/name"  # no local org/ folder: a hub id
    assert not looks_like_path("org/name") and looks_like_path("assets/name") and looks_like_path("./x")
    with pytest.raises(ModelError, match="model path assets/nope does not exist"):
        load_tokenizer("assets/nope")  # the tokenizer resolves the same way


# ---- rank capped by layer width -----------------------------------------------------------------
def test_rank_beyond_layer_width_is_refused(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + ["--rank", "40"])  # tiny BERT: 32-wide query/value
    assert "impossible budget: --rank 40 over 4 adapted layers" in line
    assert "the largest possible average rank is 32" in line and not out.exists()
    line = _run(capsys, _base(tiny_dirs, csv_data, out) + ["--rank", "33", "--static"])
    assert "the largest possible average rank is 32" in line and not out.exists()


def test_ranks_never_exceed_layer_width(tiny_dirs, csv_data, tmp_path, capsys) -> None:
    import json

    out = tmp_path / "out"
    assert main(_base(tiny_dirs, csv_data, out) + ["--rank", "24", "--steps", "12"]) == 0  # capacity 48 > width 32
    capsys.readouterr()
    events = [json.loads(line) for line in (out / "allocation.jsonl").read_text().splitlines()]
    assert events
    for event in events:
        assert sum(event["ranks"].values()) == 24 * 4 and max(event["ranks"].values()) <= 32
    layers = load_run(out).layers
    assert all(layer.capacity <= 32 and layer.rank <= 32 for layer in layers.values())


# ---- bench: every argument checked in the parent, before any worker ---------------------------------
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--profile", "bogus"], "unknown device profile 'bogus'; choose one of mobile-cpu"),
        (["--threads", "0"], "--threads takes integers >= 1"),
        (["--threads", "100000"], "--threads 100000 exceeds the"),
        (["--batch", "-2"], "--batch takes integers >= 1"),
        (["--batch", "100000000"], "tokens per run is beyond the benchmark's"),
        (["--seq", "x"], "--seq takes comma-separated integers"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup and --decode-tokens must be >= 0"),
        (["--timeout", "inf"], "--timeout must be a finite number of seconds > 0, got inf"),
        (["--timeout", "-1"], "--timeout must be a finite number of seconds > 0"),
        (["--provider", "bogus"], "unknown execution provider 'bogus'"),
        (["--plot", "x.jpg"], "--plot writes PNG"),
    ],
)
def test_bench_arguments_refused_before_any_worker(extra, needle, tmp_path, capsys, monkeypatch) -> None:
    import dynalora.edge_runtime.bench as bench

    def no_worker(*args, **kwargs):
        raise AssertionError("a bad argument must be refused before any worker or export is touched")

    monkeypatch.setattr(bench, "_run_worker", no_worker)
    monkeypatch.setattr(bench, "read_manifest", no_worker)
    line = _run(capsys, ["bench", str(tmp_path / "export"), *extra])
    assert needle in line


def test_bench_output_paths(tmp_path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    line = _run(capsys, ["bench", str(tmp_path), "--json", str(tmp_path), "--overwrite"])
    assert f"--json {tmp_path} is a folder" in line
    line = _run(capsys, ["bench", str(tmp_path), "--plot", str(tmp_path / "file.txt" / "p.png")])
    assert "is a file, not a folder" in line
    line = _run(capsys, ["bench", str(tmp_path / "file.txt")])
    assert "is not a folder" in line


# ---- fuse: flags named in the error -------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--router-epochs", "--router-hidden", "--router-per-task"])
def test_fuse_router_flags_named(flag, tmp_path) -> None:
    from dynalora.errors import ConfigError
    from dynalora.fusion import RouterConfig

    name = {"--router-epochs": "epochs", "--router-hidden": "hidden", "--router-per-task": "per_task"}[flag]
    with pytest.raises(ConfigError, match=f"{flag} must be >= 1, got 0"):
        RouterConfig(**{name: 0}).validate()
    with pytest.raises(ConfigError, match="router lr"):
        RouterConfig(lr=float("nan")).validate()


# ---- runtime-only install: a subcommand that needs the training stack ----------------------------
def test_missing_training_stack_is_one_line(capsys, monkeypatch) -> None:
    """What `dynalora train` prints on `pip install dynalora` (no torch): one line naming the `train` extra.
    Only the training stack's modules: any other missing module stays a traceback (a bug, not a user error)."""
    import dynalora.cli as cli

    def needs(module: str):
        def run(args) -> int:
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)
        return run

    monkeypatch.setattr(cli, "_cmd_train", needs("torch.nn"))
    line = _run(capsys, ["train", "--model", "minilm", "--task", "rotten_tomatoes", "--out", "x"])
    assert line == ("dynalora: error: `dynalora train` needs the training stack (torch is not installed): "
                    "pip install 'dynalora[train]'")
    monkeypatch.setattr(cli, "_cmd_train", needs("no_such_helper"))
    with pytest.raises(ModuleNotFoundError, match="no_such_helper"):
        main(["train", "--model", "minilm", "--task", "rotten_tomatoes", "--out", "x"])


def test_head_lr_on_a_model_without_a_task_head_is_refused(tiny_dirs, tmp_path, capsys) -> None:
    """A causal LM scored by likelihood (multiple choice) has no task head: --head-lr is refused, nothing written."""
    from tiny_data import WORDS, write_choice_file

    data = write_choice_file(tmp_path / "mc.jsonl", WORDS, 30, 0, "q")
    out = tmp_path / "out"
    line = _run(capsys, ["train", "--model", str(tiny_dirs["llama"]), "--train-file", str(data), "--task", "",
                         "--out", str(out), "--steps", "2", "--batch-size", "4", "--rank", "2", "--no-progress",
                         "--head-lr", "1e-2"])
    assert "--head-lr needs a task head" in line and not out.exists()
