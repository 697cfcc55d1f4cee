# The two commands README.md gives: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

# Builds the control plane once (cached under ~/.cache/modeldeploy), then runs the demo.
demo: install
	$(BIN)/modeldeploy-localcluster demo

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Unit tests, then integration tests against the real local control plane
# (started and stopped by the pytest session fixture).
test: install
	$(BIN)/pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
