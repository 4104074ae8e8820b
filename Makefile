# `make demo` and `make test` each set up .venv from scratch on a fresh machine (PyPI only), then run.
# The demo needs the package alone; the tests need the dev extra (torch, transformers, tfds, ...).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(BASE)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV) $(BASE)

demo: $(BASE)
	$(BIN)/xai-jax demo --out demo-out

test: $(DEV)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) demo-out
