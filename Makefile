# The two commands README.md gives: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install system-deps demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

# Builds the control plane once (cached under ~/.cache/modeldeploy), then runs the demo
# (Prometheus, from Debian, judges its rollouts).
demo: install system-deps
	$(BIN)/modeldeploy-localcluster demo

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian packages the demo and the tests run (Prometheus, Lua); installs only what is missing.
system-deps:
	bash scripts/install-system-deps.sh

# Unit tests, then integration tests against the real local control plane
# (started and stopped by the pytest session fixture), then end-to-end tests
# with Prometheus and model-server processes.
test: install system-deps
	$(BIN)/pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
