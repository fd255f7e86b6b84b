"""Distributed training: torchrun and Ray Train run the same loop as one process.

Run: .venv/bin/python -m pytest tests/distributed/test_distributed.py -q        (or: pytest -m distributed)

Every test uses a tiny BERT (hidden 32, dropout 0 so runs are comparable) saved to a temp folder,
a synthetic CSV, 40 steps of batch 8 and one thread per worker. Subprocesses have timeouts, and
the Ray cluster started here is always stopped (`dynalora cluster down`) in a `finally`.

Tolerances. Allocation decisions must be identical: the statistics are summed in float64 and
every worker sees the same sums. Adapter tensors agree to ATOL = 1e-5: two workers sum their
float32 gradients in a different order than one process does over the whole batch (observed
max |diff| ~2e-8 after 40 steps; Adam's normalisation can amplify such differences early on).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynalora.core.config import TrainConfig
from dynalora.core.checkpoint import list_checkpoints
from dynalora.core.train import train
from dynalora.distributed.faults import fault_hook
from dynalora.distributed.recovery import trim_logs
from tiny_models import save_recovery_assets, save_tiny_model


REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ATOL = 1e-5
TIMEOUT = 300
STEPS, BATCH, CKPT = 40, 8, 10


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_recovery_assets(tmp_path_factory.mktemp("dist"))


def train_args(assets: dict[str, Path], out: Path) -> list[str]:
    return [
        "--model", str(assets["model"]), "--train-file", str(assets["data"]), "--eval-size", "32",
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--checkpoint-every", str(CKPT),
        "--threads", "1", "--no-progress", "--out", str(out),
    ]


@pytest.fixture(scope="module")
def baseline(assets: dict[str, Path]) -> Path:
    """The single-process run every distributed run is compared with."""
    out = assets["root"] / "single"
    cfg = TrainConfig(
        model=str(assets["model"]), task=None, train_file=str(assets["data"]), eval_size=32, steps=STEPS,
        batch_size=BATCH, checkpoint_every=CKPT, progress=False, out=str(out),
    )
    train(cfg)
    return out


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DYNALORA_FAULT", "RAY_ADDRESS", "TORCHELASTIC"))}
    # a restarted group whose gloo re-connect stalls fails after 60 s (and is restarted) instead of 600 s
    e.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", DYNALORA_DIST_TIMEOUT_S="60", **extra)
    return e


def run(cmd: list[str], *, timeout: int = TIMEOUT, **kw: object) -> subprocess.CompletedProcess[str]:
    """subprocess.run in its own process group, killed as a group on timeout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in their own sessions: kill the whole tree, or they keep the pipes open
        import psutil

        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def allocations(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "allocation.jsonl").read_text().splitlines()]


def assert_same_run(ref: Path, got: Path, world: int) -> None:
    a, b = allocations(ref), allocations(got)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["ranks"] == y["ranks"], f"allocation differs at step {x['step']}"
        assert len(y["worker_digests"]) == world and len(set(y["worker_digests"])) == 1
    ta = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    tb = load_file(str(got / "adapter" / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], atol=ATOL, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    steps = [json.loads(line)["step"] for line in (got / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 1  # the final eval line repeats the last step
    assert json.loads((got / "run.json").read_text())["world_size"] == world


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- torchrun -------------------------------------------------------------------------------------
def torchrun(assets: dict[str, Path], out: Path, *extra: str, restarts: int = 0, **env_extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}",
           "-m", "dynalora", "train", *train_args(assets, out), *extra]
    return run(cmd, cwd=REPO, env=env(**env_extra))


@pytest.mark.distributed
def test_torchrun_matches_single_process(assets: dict[str, Path], baseline: Path) -> None:
    out = assets["root"] / "torchrun"
    proc = torchrun(assets, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(baseline, out, world=2)
    info = json.loads((out / "distributed.json").read_text())
    # one all-reduce per reallocation, plus one consolidation of the statistics window per checkpoint
    checkpoints = len([s for s in range(CKPT, STEPS, CKPT)])
    assert info["backend"] == "torchrun" and info["allreduce_calls"] == len(allocations(out)) - 1 + checkpoints


@pytest.mark.distributed
@pytest.mark.parametrize("problem", ["multiple_choice", "generation"])
def test_torchrun_causal_lm_matches_single_process(problem: str, assets: dict[str, Path]) -> None:
    """What DDP wraps for a causal LM, the option scorer (core/choice.py) or the response-token loss
    (core/generate.py, per-sequence mean): the same adapter as one process."""
    from tiny_data import WORDS, write_choice_file, write_generation_file

    root = assets["root"] / problem
    root.mkdir()
    model = save_tiny_model("llama", root / "llama")
    if problem == "generation":
        data = write_generation_file(root / "gen.jsonl", 80, 0)
    else:
        data = write_choice_file(root / "mc.jsonl", WORDS, 80, 0, "the answer is")
    args = ["--model", str(model), "--train-file", str(data), "--eval-size", "16", "--steps", "12", "--batch-size", "8",
            "--lr", "5e-3", "--threads", "1", "--no-progress"]
    single = root / "single"
    train(TrainConfig(model=str(model), task=None, train_file=str(data), eval_size=16, steps=12, batch_size=8, lr=5e-3,
                      threads=1, progress=False, out=str(single)))
    out = root / "torchrun"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "dynalora", "train", *args, "--out", str(out)]
    proc = run(cmd, cwd=REPO, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["task"]["problem"] == problem
    assert_same_run(single, out, world=2)
    if problem == "generation":  # evaluated by generating: the same answers, so the same scores
        for key in ("exact_match", "rougeL", "bleu"):
            assert json.loads((out / "run.json").read_text())["metrics"][key] == pytest.approx(
                json.loads((single / "run.json").read_text())["metrics"][key], abs=1e-9)


@pytest.mark.distributed
@pytest.mark.parametrize("kind, step, expected", [
    ("exit", "25", "rank 1 exits after step 25"),
    ("sigkill", "25", "rank 1 killed (SIGKILL) after step 25"),
    ("ckpt-write", "20", "rank 0 killed while writing the checkpoint of step 20"),
    ("corrupt-ckpt", "20", "rank 0 corrupted the checkpoint of step 20 and was killed"),
])
def test_torchrun_recovers_from_worker_crash(kind: str, step: str, expected: str, assets: dict[str, Path], baseline: Path) -> None:
    out, marker = assets["root"] / f"torchrun-{kind}", assets["root"] / f"torchrun-{kind}.fired"
    # The injected fault fires once (marker file); one restart must be enough: each attempt sets up
    # gloo in its own store namespace (collective.py), and any stalled stage ends its worker within
    # DYNALORA_DIST_TIMEOUT_S (60 s here), which torchrun turns into a restart, never a hang.
    # scripts/reliability.py runs these faults 20 times each under load.
    proc = torchrun(assets, out, restarts=1, DYNALORA_FAULT_STEP=step, DYNALORA_FAULT_MARKER=str(marker),
                    DYNALORA_FAULT_KIND=kind)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.is_file() and expected in proc.stderr
    if kind == "corrupt-ckpt":  # the restart fell back to the intact step-10 checkpoint, and said so once
        notices = [ln for ln in proc.stderr.splitlines() if "is unreadable" in ln]
        assert len(notices) == 1 and "checkpoint step-0000020" in notices[0] and "resuming from step-0000010" in notices[0]
    assert_same_run(baseline, out, world=2)


@pytest.mark.distributed
def test_torchrun_first_attempt_refuses_existing_out(assets: dict[str, Path]) -> None:
    out = assets["root"] / "occupied"
    out.mkdir()
    (out / "config.yaml").write_text("someone else's run\n")
    proc = torchrun(assets, out)
    assert proc.returncode != 0
    assert "dynalora: error: output folder" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


# ---- checkpoint atomicity (single process: the same code writes every launcher's checkpoints) ---
def test_crash_during_checkpoint_write_keeps_previous(assets: dict[str, Path], baseline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dynalora.core.checkpoint as checkpoint

    out = assets["root"] / "ckpt-crash"
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def crashing_save(tensors: dict[str, torch.Tensor], path: str, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the step-20 checkpoint: half a file, then the "crash"
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError("simulated crash while writing the checkpoint")
        real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", crashing_save)
    cfg = TrainConfig(model=str(assets["model"]), task=None, train_file=str(assets["data"]), eval_size=32, steps=STEPS,
                      batch_size=BATCH, checkpoint_every=CKPT, progress=False, out=str(out))
    with pytest.raises(OSError, match="simulated crash"):
        train(cfg)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000010"]
    # what a killed process leaves behind: a half-written temporary folder, ignored on resume
    junk = out / "checkpoints" / ".step-0000020.abc.tmp"
    junk.mkdir()
    (junk / "state.safetensors").write_bytes(b"\x00" * 100)
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    trim_logs(out, 10)
    train(TrainConfig(out=str(out), resume=True, progress=False))
    assert_same_run(baseline, out, world=1)


def test_fault_hook_fires_once_on_its_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNALORA_FAULT_STEP", raising=False)
    assert fault_hook(1) is None
    monkeypatch.setenv("DYNALORA_FAULT_STEP", "3")
    monkeypatch.setenv("DYNALORA_FAULT_MARKER", str(tmp_path / "fired"))
    assert fault_hook(0) is None  # default rank 1
    (tmp_path / "fired").write_text("already fired\n")
    hook = fault_hook(1)
    assert hook is not None
    hook(3)  # the marker exists: no crash


def test_trim_logs_drops_lines_after_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (10, 20, 30)))
    (tmp_path / "allocation.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 18, 22)))
    trim_logs(tmp_path, 20)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20]
    assert [json.loads(x)["step"] for x in (tmp_path / "allocation.jsonl").read_text().splitlines()] == [0, 18]


# ---- bad input (no cluster needed; in-process CLI, so no interpreter start-up per case) -----------
def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from dynalora.cli import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dynalora: error: "), err
    return lines[0]


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """run_ray sets these for Ray; keep them out of the rest of the session."""
    for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_ray_address_without_cluster(assets: dict[str, Path], capsys: pytest.CaptureFixture[str], ray_env: pytest.MonkeyPatch) -> None:
    out = assets["root"] / "nocluster"
    line = cli_error(capsys, "train", *train_args(assets, out), "--backend", "ray", "--workers", "2", "--ray-address", "127.0.0.1:1")
    assert "no Ray cluster reachable at 127.0.0.1:1 (--ray-address)" in line
    ray_env.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    line = cli_error(capsys, "train", *train_args(assets, out), "--backend", "ray", "--workers", "2")
    assert "no Ray cluster reachable at http://127.0.0.1:1 (RAY_ADDRESS)" in line
    assert not out.exists()


def test_unwritable_out_and_unknown_backend(assets: dict[str, Path], capsys: pytest.CaptureFixture[str], ray_env: pytest.MonkeyPatch) -> None:
    blocker = assets["root"] / "a-file"
    blocker.write_text("not a folder\n")
    line = cli_error(capsys, "train", *train_args(assets, blocker / "run"), "--backend", "ray", "--workers", "2")
    assert "--out" in line and "not writable" in line
    line = cli_error(capsys, "train", *train_args(assets, assets["root"] / "x"), "--backend", "slurm")
    assert "unknown backend 'slurm'" in line
    line = cli_error(capsys, "train", *train_args(assets, assets["root"] / "x"), "--backend", "torchrun")
    assert "start the workers with torchrun" in line
    assert not (assets["root"] / "x").exists()


def dynalora(*args: str, timeout: int = 120, **env_extra: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "dynalora", *args], timeout=timeout, cwd=REPO, env=env(**env_extra))


# ---- Ray: cluster up, job submission, recovery, resources; one cluster for all -------------------
@pytest.mark.distributed
def test_ray_cluster_job_submit_and_recovery(assets: dict[str, Path], baseline: Path) -> None:
    port, dash = free_port(), free_port()
    url = f"http://127.0.0.1:{dash}"
    up = dynalora("cluster", "up", "--num-cpus", "2", "--port", str(port), "--dashboard-port", str(dash), timeout=150)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert url in up.stdout
        # 1. ray job submit, the way a user does it (absolute --out; the venv's python on the cluster)
        out = assets["root"] / "ray-job"
        job = run(
            [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
             "python", "-m", "dynalora", "train", *train_args(assets, out), "--backend", "ray", "--workers", "2",
             "--storage-path", str(assets["root"] / "ray-storage")],
            cwd=REPO, env=env(RAY_AUTH_MODE="token"),
        )
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert "dynalora: step 40/40" in job.stdout
        assert_same_run(baseline, out, world=2)
        assert (out / "distributed.json").is_file() and (out / "tokenizer").is_dir()

        gcs = ["--ray-address", f"127.0.0.1:{port}"]
        # 2. a worker dies after step 25; Ray restarts the group, which resumes from step 20
        out = assets["root"] / "ray-fault"
        marker = assets["root"] / "ray-fault.fired"
        proc = dynalora("train", *train_args(assets, out), "--backend", "ray", "--workers", "2", "--max-failures", "1",
                        "--storage-path", str(assets["root"] / "ray-storage"), *gcs, timeout=TIMEOUT,
                        DYNALORA_FAULT_STEP="25", DYNALORA_FAULT_MARKER=str(marker))
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert marker.is_file()
        assert_same_run(baseline, out, world=2)

        # 3. more workers than CPUs: one line, nothing written
        out = assets["root"] / "ray-too-many"
        proc = dynalora("train", *train_args(assets, out), "--backend", "ray", "--workers", "3", *gcs)
        assert proc.returncode == 2 and "--workers 3 needs 3 CPUs" in proc.stderr and "has 2" in proc.stderr
        assert not out.exists()
    finally:
        down = dynalora("cluster", "down", "--port", str(port), timeout=120)
        assert down.returncode == 0, down.stderr[-2000:]


def test_bad_collective_timeout_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from dynalora.errors import ConfigError
    from dynalora.distributed.collective import init_process_group

    for raw in ("soon", "0"):
        monkeypatch.setenv("DYNALORA_DIST_TIMEOUT_S", raw)
        with pytest.raises(ConfigError, match="DYNALORA_DIST_TIMEOUT_S"):
            init_process_group()


def test_ray_trainer_runs_without_the_placement_group_cleaner() -> None:
    """Ray Train's PlacementGroupCleaner takes a missing State API answer for a dead controller and removes a live
    run's placement group on a loaded machine; dynalora's trainer leaves it out and keeps every other default."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from dynalora.distributed.ray_backend import _trainer_class

    trainer = _trainer_class()(lambda config: None, scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False))
    ours = [type(c) for c in trainer._create_default_callbacks()]
    ray_defaults = [type(c) for c in TorchTrainer._create_default_callbacks(trainer)]
    assert PlacementGroupCleanerCallback in ray_defaults and PlacementGroupCleanerCallback not in ours
    assert ours == [c for c in ray_defaults if c is not PlacementGroupCleanerCallback]
