# Two commands set everything up on a fresh machine:
#   make demo   -> .venv, install, run the whole pipeline on the built-in demo data
#   make test   -> .venv, install, run the test suite
#   make test-fast -> the same without the tests marked slow (subprocess trainings, torchrun)
#   make lint   -> ruff (lint and format check) and mypy
#   make peers-env -> .venv-peers (Python 3.11): nnU-Net v2 and its newer torch, beside .venv and never in it,
#                     for python -m scripts.experiments.peers. Several GB on disk (torch 2.14.1's CUDA build and
#                     its nvidia-* wheels, which nnunetv2 -> timm -> torchvision pull in); a few minutes to build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PEERS_PYTHON ?= python3.11
PEERS_VENV   ?= .venv-peers
PEERS_TORCH  ?= torch==2.14.1 torchvision==0.29.1
NNUNET       ?= nnunetv2==2.8.1
PEERS_STAMP  := $(PEERS_VENV)/.installed

.PHONY: demo test test-fast lint install benchmark clean peers-env

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# nnU-Net v2's own environment (see the top): the stamp makes a second `make peers-env` a no-op.
$(PEERS_STAMP): Makefile
	test -x $(PEERS_VENV)/bin/python || $(PEERS_PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet $(PEERS_TORCH)
	$(PEERS_VENV)/bin/python -m pip install --quiet "$(NNUNET)" $(PEERS_TORCH)
	touch $(PEERS_STAMP)

peers-env: $(PEERS_STAMP)

demo: $(STAMP)
	$(BIN)/brainseg demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check brainseg scripts tests
	$(BIN)/ruff format --check brainseg scripts tests
	$(BIN)/mypy

benchmark: $(STAMP)
	$(BIN)/python -m scripts.benchmark --json benchmark.json

clean:
	rm -rf $(VENV) demo_output
