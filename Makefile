# Two entry points (README): `make demo` runs the main job, `make test` runs every check.
# `make test-fast` is the inner loop: lint and the tests that start no broker, no process and are not slow.
# `make test` first makes sure Chromium is installed for the browser tests (tests/support/ensure_chromium.sh).
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

# The demo ends by serving the web console over the stored day (two alert links printed) until Ctrl-C.
demo: $(STAMP)
	$(BIN)/logystera demo --web

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/logystera rules check rules
	$(BIN)/logystera rules test tests/rules/pack
	tests/support/ensure_chromium.sh
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not broker and not process and not slow"

bench: $(STAMP)
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .logystera
