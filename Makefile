# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   -> creates .venv, runs the whole pipeline on the built-in demo world
#   make test   -> creates .venv, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PROFILE ?= profiles/local

.PHONY: demo test bench env clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/snakemake --profile $(PROFILE)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python -m vglpipe.bench cells

clean:
	rm -rf results resources logs benchmarks .snakemake
