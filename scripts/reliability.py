"""Recovery under load: run each fault scenario many times and count passes, failures and hangs.

    .venv/bin/python scripts/reliability.py                       # every scenario, 20 runs each
    .venv/bin/python scripts/reliability.py --runs 5 --scenarios torchrun-sigkill,ray-exit
    .venv/bin/python scripts/reliability.py --report-only         # rebuild the report from the results so far

Each run trains a tiny BERT (hidden 32, 2 layers, dropout 0) for 40 steps of batch 8 on 2 workers,
checkpointing every 10 steps, while `--load` busy-looping processes compete for the 2 cores at the
workers' own priority (nice 0 for torchrun; nice 15 for Ray, which runs its workers at nice 15). One
worker is made to fail once (distributed/faults.py); the launcher must restart the group, which
must resume and finish with the *same* adapter and allocations as an uninterrupted single-process
run (max |diff| <= 1e-5, identical ranks at every reallocation). A run that does not end within
`--bound` seconds is a hang: its whole process tree is killed and it is counted as one.

Scenarios:
    torchrun-exit          rank 1 exits (os._exit(1)) after step 25
    torchrun-sigkill       rank 1 is SIGKILLed after step 25
    torchrun-ckpt-write    rank 0 is SIGKILLed halfway through writing the step-20 checkpoint
    torchrun-corrupt-ckpt  the step-20 checkpoint is truncated, then rank 0 is SIGKILLed:
                           the restart must fall back to step 10 and say so in one line
    ray-exit, ray-sigkill  the same faults under Ray Train (--max-failures 2), one cluster for all runs
    gloo-restart-shared    (root cause, no dynalora) a bare torchrun job that re-initialises gloo after a
                           worker crash, with torchrun's shared store as is
    gloo-restart-prefixed  the same job with a per-attempt store prefix (the fix in distributed/collective.py)

Results are appended to RESULTS.jsonl as each run ends (so the script can be stopped and
continued: runs already recorded are skipped), and RESULTS.md is rebuilt from all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results" / "reliability"
STEPS, BATCH, CKPT, FAULT_STEP = 40, 8, 10, 25
RAY_WORKER_NICENESS = 15  # Ray's default worker_niceness
SCENARIOS = {
    "torchrun-exit": ("torchrun", {"DYNALORA_FAULT_KIND": "exit", "DYNALORA_FAULT_STEP": "25"}),
    "torchrun-sigkill": ("torchrun", {"DYNALORA_FAULT_KIND": "sigkill", "DYNALORA_FAULT_STEP": "25"}),
    "torchrun-ckpt-write": ("torchrun", {"DYNALORA_FAULT_KIND": "ckpt-write", "DYNALORA_FAULT_STEP": "20"}),
    "torchrun-corrupt-ckpt": ("torchrun", {"DYNALORA_FAULT_KIND": "corrupt-ckpt", "DYNALORA_FAULT_STEP": "20"}),
    "ray-exit": ("ray", {"DYNALORA_FAULT_KIND": "exit", "DYNALORA_FAULT_STEP": "25"}),
    "ray-sigkill": ("ray", {"DYNALORA_FAULT_KIND": "sigkill", "DYNALORA_FAULT_STEP": "25"}),
    "gloo-restart-shared": ("bare", {}),
    "gloo-restart-prefixed": ("bare", {"PREFIX": "1"}),
}

BARE_JOB = r'''
import os, torch, torch.distributed as dist
from datetime import timedelta
attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
timeout = timedelta(seconds=30)
if os.environ.get("PREFIX"):
    store, r, w = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{attempt}", store), rank=r, world_size=w, timeout=timeout)
else:
    dist.init_process_group("gloo", timeout=timeout)
dist.barrier()
if attempt == 0 and rank == 1:
    os._exit(1)
t = torch.ones(1)
dist.all_reduce(t)
assert t.item() == 2.0
print(f"attempt {attempt} rank {rank} ok", flush=True)
dist.destroy_process_group()  # as dynalora's workers do; without it gloo may abort at interpreter exit
'''


# ---- assets -----------------------------------------------------------------------------------
def make_assets(root: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save_recovery_assets  # the same model and data as tests/distributed/test_distributed.py

    assets = save_recovery_assets(root)
    (root / "bare_job.py").write_text(BARE_JOB)
    return {**assets, "bare": root / "bare_job.py"}


def train_args(assets: dict[str, Path], out: Path) -> list[str]:
    return ["--model", str(assets["model"]), "--train-file", str(assets["data"]), "--eval-size", "32",
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--checkpoint-every", str(CKPT),
            "--threads", "1", "--no-progress", "--out", str(out)]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYNALORA_FAULT", "RAY_ADDRESS", "TORCHELASTIC"))}
    # LOGLEVEL=INFO: torchrun logs each restart ("k/N attempts left") at INFO only
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", DYNALORA_DIST_TIMEOUT_S="60",
               LOGLEVEL="INFO")
    env.update(extra)
    return env


def run_bounded(cmd: list[str], bound: float, env: dict[str, str], cwd: Path = REPO) -> tuple[int | None, str, str, float]:
    """Run `cmd` in its own session; on timeout kill its whole tree. Returns (rc or None on hang, out, err, seconds)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=bound)
        return proc.returncode, out, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        tree = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        out, err = proc.communicate(timeout=30)
        return None, out, err, time.perf_counter() - t0


# ---- checks -----------------------------------------------------------------------------------
def same_run(ref: Path, got: Path) -> str | None:
    """None when `got` is the same run as `ref` (allocations and adapter), else what differs."""
    from safetensors.torch import load_file

    def allocs(p: Path) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (p / "allocation.jsonl").read_text().splitlines()]

    if not (got / "run.json").is_file():
        return "no run.json"
    a, b = allocs(ref), allocs(got)
    if [x["step"] for x in a] != [x["step"] for x in b] or any(x["ranks"] != y["ranks"] for x, y in zip(a, b)):
        return "allocations differ"
    ta = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    tb = load_file(str(got / "adapter" / "adapter_model.safetensors"))
    if ta.keys() != tb.keys():
        return "adapter keys differ"
    diff = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
    if diff > 1e-5:
        return f"adapter max |diff| {diff:.2e} > 1e-5"
    steps = [json.loads(x)["step"] for x in (got / "metrics.jsonl").read_text().splitlines()]
    if steps != sorted(steps) or len(steps) != len(set(steps)) + 1:
        return "metrics.jsonl has duplicate or out-of-order steps"
    return None


def one_run(name: str, i: int, assets: dict[str, Path], baseline: Path, bound: float, gcs: str | None) -> dict[str, Any]:
    kind, fault_env = SCENARIOS[name]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{i}-", dir=assets["root"]))
    marker = work / "fired"
    out = work / "run"
    if kind == "bare":
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--max-restarts=1", str(assets["bare"])]
        # its collectives time out after 30 s; 150 s without an end is a hang of the connection set-up
        rc, so, se, secs = run_bounded(cmd, min(bound, 150.0), child_env(**fault_env), cwd=work)
        ok = rc == 0 and so.count(" ok") == 2
        reason = None if ok else ("hang" if rc is None else _last_error(se))
        rec = {"scenario": name, "run": i, "passed": ok, "hang": rc is None, "seconds": secs, "rc": rc, "reason": reason,
               "restarts": se.count("attempts left"), "restarts_logged": True}
        if not ok:
            rec["stderr_tail"] = se[-4000:]
        return rec
    env = child_env(DYNALORA_FAULT_MARKER=str(marker), **fault_env)
    if kind == "torchrun":
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--max-restarts=2",
               "-m", "dynalora", "train", *train_args(assets, out)]
    else:
        cmd = [sys.executable, "-m", "dynalora", "train", *train_args(assets, out), "--backend", "ray", "--workers", "2",
               "--max-failures", "2", "--storage-path", str(work / "ray-storage"), "--ray-address", str(gcs)]
    rc, so, se, secs = run_bounded(cmd, bound, env)
    reason = None
    if rc is None:
        reason = "hang"
    elif rc != 0:
        reason = f"exit {rc}: {_last_error(se)}"
    elif not marker.is_file():
        reason = "the fault did not fire"
    else:
        reason = same_run(baseline, out)
        if reason is None and name == "torchrun-corrupt-ckpt":
            line = "checkpoint step-0000020 is unreadable"
            if line not in se or "resuming from step-0000010" not in se:
                reason = "no one-line notice of the fallback to step 10"
    faults = se.count("dynalora: fault injection")
    stalls = se.count("did not finish within")
    # torchrun's agent logs "Worker group FAILED. k/N attempts left" (at INFO) once per restart it makes
    restarts = se.count("attempts left") if kind == "torchrun" else None
    rec = {"scenario": name, "run": i, "passed": reason is None, "hang": rc is None, "seconds": secs, "rc": rc,
           "reason": reason, "faults": faults, "restarts": restarts, "restarts_logged": restarts is not None,
           "watchdog_expiries": stalls}
    if reason is not None:  # keep what the failed job said, for the report's reader
        rec["stderr_tail"] = se[-4000:]
        rec["stdout_tail"] = so[-2000:]
    return rec


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()
             if ("dynalora: error" in ln or "Error:" in ln) and "ChildFailedError" not in ln and "Traceback" not in ln]
    lines = lines or [ln.strip() for ln in stderr.splitlines() if "error" in ln.lower()]
    return (lines[-1] if lines else (stderr.strip().splitlines() or ["(no output)"])[-1])[:240]


# ---- load, cluster, report --------------------------------------------------------------------
@contextlib.contextmanager
def background_load(n: int):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def ray_cluster(needed: bool):
    if not needed:
        yield None
        return
    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    gcs, dash = port(), port()
    up = subprocess.run([sys.executable, "-m", "dynalora", "cluster", "up", "--num-cpus", "2", "--port", str(gcs),
                         "--dashboard-port", str(dash)], capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=180)
    if up.returncode != 0:
        raise SystemExit(f"reliability: cannot start the Ray cluster: {up.stderr.strip()[-500:]}")
    try:
        yield f"127.0.0.1:{gcs}"
    finally:
        subprocess.run([sys.executable, "-m", "dynalora", "cluster", "down"], capture_output=True, text=True, cwd=REPO,
                       env=child_env(), timeout=180)


def environment(load: int) -> dict[str, Any]:
    import ray
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "background_load_processes": load, "loadavg_at_report": os.getloadavg()}


def write_report(records: list[dict[str, Any]], env: dict[str, Any], bound: float, notes: list[str] | None = None) -> None:
    from dynalora.atomic import write_json, write_text

    rows = []
    summary: dict[str, Any] = {}
    for name in SCENARIOS:
        recs = [r for r in records if r["scenario"] == name]
        if not recs:
            continue
        secs = [r["seconds"] for r in recs]
        s = {"runs": len(recs), "passed": sum(r["passed"] for r in recs), "failed": sum(not r["passed"] and not r["hang"] for r in recs),
             "hangs": sum(r["hang"] for r in recs), "median_s": statistics.median(secs), "max_s": max(secs),
             "watchdog_expiries": sum(r.get("watchdog_expiries", 0) for r in recs),
             # runs recorded before LOGLEVEL=INFO was set could not see torchrun's restart lines
             "max_restarts_used": max((r["restarts"] for r in recs if r.get("restarts_logged")), default=None),
             "reasons": sorted({r["reason"] for r in recs if r["reason"]})}
        summary[name] = s
        used = "-" if s["max_restarts_used"] is None else str(s["max_restarts_used"])
        rows.append(f"| {name} | {s['runs']} | {s['passed']} | {s['failed']} | {s['hangs']} | {s['median_s']:.1f} | {s['max_s']:.1f} | "
                    f"{used} | {s['watchdog_expiries']} | {'; '.join(s['reasons'])[:300] or '-'} |")
    notes = notes or []
    write_json(RESULTS.with_suffix(".json"), {"environment": env, "bound_s": bound, "summary": summary, "notes": notes,
                                               "runs": records})
    md = [
        "# Recovery under load",
        "",
        "Generated by `scripts/reliability.py` (see its docstring for the scenarios); raw runs in `reliability.json`.",
        f"Each run: tiny BERT, 2 workers, {STEPS} steps, checkpoint every {CKPT}; pass = the job exits 0 after the fault "
        "and its adapter and allocations equal an uninterrupted single-process run. "
        f"Hang = not finished within {bound:.0f} s (150 s for the bare jobs, whose own timeout is 30 s; tree killed). "
        "DYNALORA_DIST_TIMEOUT_S=60; torchrun --max-restarts 2, Ray --max-failures 2 (bare jobs: 1 restart).",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']}, Ray {env['ray']}; "
        f"{env['background_load_processes']} busy-loop processes of background load during every run, at the workers' "
        "own priority (nice 0 for torchrun and the bare jobs; nice 15 for Ray, whose workers run at nice 15: a nice-0 "
        "load would starve them to a crawl, a slowdown rather than a fault).",
        "",
        "## Root cause of the restart hang",
        "",
        "torchrun's agent creates one TCPStore for the whole job and hands the same store to every restart "
        "(`TORCHELASTIC_USE_AGENT_STORE=True`; workers connect without a per-attempt prefix). gloo publishes each "
        "worker's listening address under fixed keys of that store when it connects a new group, so a restarted "
        "worker can read the address its peer had in the attempt that just died. Depending on timing it then "
        "connects to a dead port (\"Connection refused\" / \"Connect timeout\") or both peers take the passive "
        "side of gloo's pair set-up and wait for each other with no deadline (pytorch/gloo#520): a stack dump of "
        "both restarted workers showed each in `gloo::transport::tcp::Pair::waitUntilConnected` under "
        "`init_process_group`, with no socket between them, past the 60 s timeout. The `gloo-restart-*` rows run a "
        "bare torchrun job (no dynalora code) that re-initialises gloo after a worker crash: as torch ships it "
        "(`shared`) and with a per-attempt store prefix (`prefixed`, what `distributed/collective.py` now does). "
        "In addition, every distributed stage now runs under a watchdog deadline (`distributed/watchdog.py`), so "
        "any other stall ends the worker and is restarted instead of hanging.",
        "",
        "## Results",
        "",
        *[f"- {n}" for n in notes],
        *([""] if notes else []),
        "| scenario | runs | passed | failed | hangs | median s | max s | most restarts used | watchdog expiries | failure reasons |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    write_text(RESULTS.with_suffix(".md"), "\n".join(md))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--load", type=int, default=2, help="busy-loop processes running during every run")
    p.add_argument("--bound", type=float, default=300.0, help="seconds after which a run counts as a hang")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--note", default=None, help="a paragraph on how this batch of runs was made, kept in the report")
    args = p.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    log = RESULTS.with_suffix(".jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    notes_file = RESULTS.with_suffix(".notes")
    notes = notes_file.read_text().splitlines() if notes_file.is_file() else []
    if args.note and args.note not in notes:
        notes.append(args.note)
        notes_file.write_text("\n".join(notes) + "\n")
    if args.report_only:
        write_report(records, environment(args.load), args.bound, notes)
        return 0
    done = {(r["scenario"], r["run"]) for r in records}
    with tempfile.TemporaryDirectory(prefix="dynalora-reliability-") as tmp:
        assets = make_assets(Path(tmp))
        sys.path.insert(0, str(REPO))
        from dynalora.core.config import TrainConfig
        from dynalora.core.train import train

        baseline = Path(tmp) / "single"
        train(TrainConfig(model=str(assets["model"]), task=None, train_file=str(assets["data"]), eval_size=32, steps=STEPS,
                          batch_size=BATCH, checkpoint_every=CKPT, progress=False, threads=1, out=str(baseline)))
        needs_ray = any(SCENARIOS[n][0] == "ray" for n in names)
        with background_load(args.load) as load, ray_cluster(needs_ray) as gcs:
            for i in range(args.runs):  # round-robin: every scenario sees the same drift of machine load
                for name in names:
                    if (name, i) in done:
                        continue
                    # Equal-priority load: Ray runs its workers at nice 15 (its worker_niceness), and a
                    # nice-0 busy loop would take ~97% of a core from each of them (a slowdown, not a fault).
                    for proc in load:
                        os.setpriority(os.PRIO_PROCESS, proc.pid, RAY_WORKER_NICENESS if SCENARIOS[name][0] == "ray" else 0)
                    rec = one_run(name, i, assets, baseline, args.bound, gcs)
                    records.append(rec)
                    with log.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    print(f"{name} #{i}: {'pass' if rec['passed'] else 'FAIL'} {rec['seconds']:.1f} s"
                          + (f" ({rec['reason']})" if rec["reason"] else ""), flush=True)
                    write_report(records, environment(args.load), args.bound, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
