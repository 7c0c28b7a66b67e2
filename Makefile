# Fresh machine: `make run` (set up, run the default experiment) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build: an unpinned torch would pull several GB of CUDA packages.
TORCH := torch==2.13.0

.PHONY: run test setup setup-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[mpi]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,mpi,slurm]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

run: setup
	$(BIN)/leantrain run experiments/default.toml --out results/default

test: setup-dev
	$(BIN)/python -m pytest -n 2 tests

lint: setup-dev
	$(BIN)/ruff check leantrain tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/lean_vs_baseline.py

clean:
	rm -rf $(VENV) results build *.egg-info
