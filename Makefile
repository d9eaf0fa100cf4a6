# Two entry points for a fresh machine: `make demo` and `make test`; `make test-fast` while working.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/guardian demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# Everything but the tests marked slow or chaos: under 2 minutes on 2 cores.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow and not chaos"

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/mypy tests

bench: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) guardian-demo .pytest_cache .mypy_cache .ruff_cache
