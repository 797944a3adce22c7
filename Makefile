# Two commands set everything up on a fresh machine:
#   make demo   -> .venv, install, run the whole pipeline on the built-in demo data
#   make test   -> .venv, install, run the test suite
#   make test-fast -> the same without the tests marked slow (subprocess trainings, torchrun)
#   make lint   -> ruff (lint and format check) and mypy
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install benchmark clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/brainseg demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check brainseg scripts tests
	$(BIN)/ruff format --check brainseg scripts tests
	$(BIN)/mypy

benchmark: $(STAMP)
	$(BIN)/python -m scripts.benchmark --json benchmark.json

clean:
	rm -rf $(VENV) demo_output
