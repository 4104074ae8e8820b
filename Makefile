# `make demo` and `make test` each set up .venv from scratch on a fresh machine (PyPI only), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xai-jax demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

clean:
	rm -rf $(VENV) demo-out
