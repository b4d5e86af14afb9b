# Two entry points (README): `make demo` runs the main job, `make test` runs every check.
# `make test-fast` is the inner loop: lint and the tests that start no broker, no process and are not slow.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/logystera demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/logystera rules check rules
	$(BIN)/logystera rules test tests/rules/pack
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not broker and not process and not slow"

bench: $(STAMP)
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .logystera
