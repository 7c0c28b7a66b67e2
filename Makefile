# Fresh machine: `make run` (set up, run the default experiment) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build: an unpinned torch would pull several GB of CUDA packages. It stays at 2.13.0+cpu: the torchvision
# wheel for 2.13 (0.28.0) does not import beside the CPU build here ("operator torchvision::nms does not exist").
TORCH := torch==2.13.0

# Two venvs: torchvision (and timm, which needs it) imports only beside its own torch build, here 2.14.1, a CUDA
# build of several GB. So .venv (CPU torch, transformers) runs everything; .venv-vision runs only the tests of
# timm:, torchvision: and imagefolder (tests/thirdparty, marker vision). `make run` needs only .venv.
VENV_VISION := .venv-vision
VISION_TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: run test setup setup-dev setup-vision lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[mpi]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,mpi,slurm,hf]"
	touch $@

# torch pinned in the same command, so that pip does not move it to another release for torchvision's sake.
$(VENV_VISION)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_VISION)
	$(VENV_VISION)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_VISION)/bin/pip install --quiet $(VISION_TORCH) -e ".[vision,dev]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev
setup-vision: $(VENV_VISION)/.installed

run: setup
	$(BIN)/leantrain run experiments/default.toml --out results/default

test: setup-dev setup-vision
	$(BIN)/python -m pytest -n 2 tests
	$(VENV_VISION)/bin/python -m pytest -n 2 tests/thirdparty -m vision

lint: setup-dev
	$(BIN)/ruff check leantrain tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/lean_vs_baseline.py

clean:
	rm -rf $(VENV) $(VENV_VISION) results build *.egg-info
