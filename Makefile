# Two commands a new user needs: `make run` (serve models/ on 127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: run test lint typecheck train bench smoke-container clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

# The serving install: no torch.
$(VENV)/.serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

# Training and test tools on top (torch pinned to the CPU build by constraints.txt).
$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[train,dev]'
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve
	$(BIN)/python -m app

test: $(VENV)/.dev
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check app training load_tests tests
	$(BIN)/mypy

train: $(VENV)/.dev
	$(BIN)/python -m training build --data-dir $(or $(DATA_DIR),../shared/data) --model all

bench: $(VENV)/.dev
	$(BIN)/python -m load_tests.bench

smoke-container:
	bash deploy/smoke_container.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
