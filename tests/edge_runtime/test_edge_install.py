"""A device installs the runtime without the training stack: `pip install dynalora` runs an export.

    .venv/bin/python -m pytest tests/edge_runtime/test_edge_install.py -q          # ~30 s, offline

The runtime-only install is what `dynalora`'s requirements without extras pull in, followed through every
installed distribution's own requirements (tests/install_closure.py). A fresh venv (no pip, no system
site-packages) gets exactly those distributions, file by file from their RECORDs as symlinks (dynalora's own
RECORD is the editable install's .pth + finder, which map `dynalora.*` onto this checkout); its python must fail to
import torch / transformers / optimum / ray, predict and generate the same as the full install, switch a LoRA
adapter, run `dynalora bench`, and answer `bench --compare-torch`, `bench --plot`, `train` and `export` with one
line naming the `train` extra. The export folders are the tiny ones of test_edge_runtime.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from install_closure import TRAINING_STACK, closure, link_closure, normalize
from packaging.requirements import Requirement
from test_edge_runtime import TEXTS, bert_export, llama_export, lora_export  # noqa: F401 - the same export fixtures
from transformers import LlamaForCausalLM

from dynalora.edge_runtime import load

REPO = Path(__file__).resolve().parents[2]
PROMPT = "the movie was"
TRAIN_LINE = "pip install 'dynalora[train]'"

# Runs inside the edge venv: what a device does with an export. Writes its results to argv[4] (.npz + .json).
EDGE_SCRIPT = """
import json, sys
import numpy as np
importable = []
for name in ("torch", "transformers", "optimum", "ray", "peft", "accelerate", "matplotlib"):
    try:
        __import__(name)
    except ImportError:
        continue
    importable.append(name)
from dynalora.edge_runtime import load
bert, llama, lora, out = sys.argv[1:5]
texts = json.loads(sys.argv[5])
classifier = load(bert, provider="cpu", threads=1)
pred = classifier.predict(texts)
pair = classifier.predict([("a fine film", "it was fine")])
lm = load(llama, provider="cpu", threads=1)
text = lm.generate("%s", max_new_tokens=6)
tokens = lm.greedy_decode(lm.encode(["%s"])["input_ids"], 6)["tokens"][0].tolist()
adapters = load(lora, threads=1)
adapters.use_adapter("a")
np.savez(out + ".npz", logits=pred["logits"], pair=pair["logits"], adapter=adapters.predict(texts)["logits"])
json.dump({"importable": importable, "labels": pred["labels"], "text": text, "tokens": tokens,
           "prefix": sys.prefix}, open(out + ".json", "w"))
""" % (PROMPT, PROMPT)


def test_edge_closure_has_no_training_stack() -> None:
    """The installed metadata is pyproject's, and its base requirements pull in none of the training stack."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    dists = closure("dynalora")
    installed = [Requirement(r) for r in dists["dynalora"].requires or []]
    base = sorted(f"{normalize(r.name)}{r.specifier}" for r in installed if r.marker is None)
    assert base == sorted(f"{normalize(r.name)}{r.specifier}" for r in map(Requirement, declared)), (
        "the installed dynalora metadata is stale: re-run `make setup` after editing pyproject.toml")
    assert {"onnxruntime", "tokenizers", "numpy", "psutil"} <= set(dists)
    heavy = sorted(set(dists) & set(TRAINING_STACK))
    assert not heavy, f"the runtime-only install pulls in {heavy}; move them to the `train` extra"


@pytest.fixture(scope="module")
def edge_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that holds the runtime-only closure and nothing else."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    assert link_closure(closure("dynalora").values(), Path(site)) > 0
    return python


def _run(python: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The edge python in an empty folder (nothing importable from the working directory), offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_edge_install_runs_an_export(edge_python: Path, bert_export: Path, llama_export: Path,  # noqa: F811
                                     lora_export: Path, tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "device.py"
    script.write_text(EDGE_SCRIPT)
    out = tmp_path / "edge"
    proc = _run(edge_python, tmp_path, str(script), str(bert_export), str(llama_export), str(lora_export), str(out),
                json.dumps(TEXTS))
    assert proc.returncode == 0, proc.stderr
    edge = json.loads((out.with_suffix(".json")).read_text())
    arrays = np.load(out.with_suffix(".npz"))
    assert edge["importable"] == [] and Path(edge["prefix"]) == edge_python.parent.parent

    # the same calls on the full install: identical numbers (same onnxruntime, same token ids, one thread)
    full = load(bert_export, provider="cpu", threads=1)
    np.testing.assert_array_equal(arrays["logits"], full.predict(TEXTS)["logits"])
    np.testing.assert_array_equal(arrays["pair"], full.predict([("a fine film", "it was fine")])["logits"])
    assert edge["labels"] == full.predict(TEXTS)["labels"]
    adapters = load(lora_export, threads=1)
    adapters.use_adapter("a")
    np.testing.assert_array_equal(arrays["adapter"], adapters.predict(TEXTS)["logits"])
    lm = load(llama_export, provider="cpu", threads=1)
    assert edge["text"] == lm.generate(PROMPT, max_new_tokens=6)
    ids = lm.encode([PROMPT])["input_ids"]
    model = LlamaForCausalLM.from_pretrained(llama_export / "torch").eval()
    with torch.no_grad():  # and the tokens PyTorch's generate picks
        ref = model.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                             max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert edge["tokens"][: len(ref)] == ref


def test_edge_install_cli(edge_python: Path, bert_export: Path, tmp_path: Path) -> None:  # noqa: F811
    assert _run(edge_python, tmp_path, "-m", "dynalora", "--help").returncode == 0
    bench = _run(edge_python, tmp_path, "-m", "dynalora", "bench", str(bert_export), "--repeats", "2", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr
    assert bench.stdout.startswith("| engine |") and "| onnxruntime |" in bench.stdout
    refused = [
        (["bench", str(bert_export), "--compare-torch"], "--compare-torch needs torch and transformers"),
        (["bench", str(bert_export), "--plot", str(tmp_path / "p.png")], "--plot needs matplotlib"),
        (["train", "--model", "minilm", "--task", "rotten_tomatoes", "--out", str(tmp_path / "run")],
         "`dynalora train` needs the training stack"),
        (["export", "merged", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exp")],
         "`dynalora export` needs the training stack"),
    ]
    for argv, message in refused:
        proc = _run(edge_python, tmp_path, "-m", "dynalora", *argv)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (argv, proc.stderr)
        assert message in lines[0] and TRAIN_LINE in lines[0], lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "exp").exists() and not (tmp_path / "p.png").exists()
