# Two commands a new user needs: `make run` (serve models/ on 127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where torch's CPU build comes from. PyPI's torch for Linux is the CUDA build (several GB);
# on a normal machine: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (this project's machines find the CPU wheel on local disk, so it is empty by default).
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: run test lint typecheck train bench triton-peer smoke-container screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

# The serving install: no torch.
$(VENV)/.serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

# Training and test tools on top (torch's version pinned by constraints.txt; its build: TORCH_INDEX),
# and KServe's SDK wheel, not installed: tests/deploy/kserve_sdk.py reads KServe's API from it.
$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[train,dev]'
	$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps kserve==0.14.1 -d $(VENV)/kserve-sdk
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve
	$(BIN)/python -m app

test: $(VENV)/.dev
	$(BIN)/python -m pytest

# The console's screenshots in the README, as its browser test takes them (needs chromium).
screenshots: $(VENV)/.dev
	ORTSERVE_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/app/console/test_console_browser.py

lint: $(VENV)/.dev
	$(BIN)/ruff check app training load_tests tests
	$(BIN)/mypy

train: $(VENV)/.dev
	$(BIN)/python -m training build --data-dir $(or $(DATA_DIR),$(error set DATA_DIR to the folder holding fashion-mnist/ and sst2/ (README, Training))) --model all

bench: $(VENV)/.dev
	$(BIN)/python -m load_tests.bench

# Triton, the benchmarks' peer (load_tests/triton_peer.py): PyTriton in a venv of its own. Its
# Python backend stub links the system's libpython3.11, so the venv's Python must be that one.
TRITON_BASE_PYTHON ?= /usr/bin/python3.11
.venv-triton/bin/python:
	$(TRITON_BASE_PYTHON) -m venv .venv-triton
	.venv-triton/bin/python -m pip install -q --disable-pip-version-check nvidia-pytriton==0.7.0 onnxruntime

triton-peer: .venv-triton/bin/python

smoke-container:
	bash deploy/smoke_container.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
