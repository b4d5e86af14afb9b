# Two entry points (README): `make demo` runs the main job, `make test` runs every check.
# `make test-fast` is the inner loop: lint and the tests that start no broker, no process and are not slow.
# `make test` first makes sure Chromium is installed for the browser tests (tests/support/ensure_chromium.sh).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The engine and the parsing compiled with mypyc where a C compiler is found (schemas/native.py; pure Python otherwise, and
# whenever its sources changed since the build): rebuilt when one of its modules (schemas.native.NATIVE_MODULES) changes.
$(NATIVE): $(STAMP) $(wildcard operators/*.py) schemas/records.py schemas/fast_signals.py tools/build_native.py
	$(BIN)/python tools/build_native.py
	touch $(NATIVE)

# The demo ends by serving the web console over the stored day (two alert links printed) until Ctrl-C.
demo: $(NATIVE)
	$(BIN)/logystera demo --web

lint: $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/mypy

# After the whole suite, the tests of the engine and of the parsing once more on pure Python when the suite ran them compiled.
test: lint
	$(BIN)/logystera rules check rules
	$(BIN)/logystera rules test tests/rules/pack
	tests/support/ensure_chromium.sh
	$(BIN)/pytest
	if $(BIN)/python -c "import operators, sys; sys.exit(not operators.NATIVE)"; then \
		LOGYSTERA_PURE_PYTHON=1 $(BIN)/pytest tests/operators tests/schemas tests/flows/test_determinism.py tests/flows/test_live_snapshot.py; fi

test-fast: lint
	$(BIN)/pytest -m "not broker and not process and not slow"

bench: $(NATIVE)
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .logystera
