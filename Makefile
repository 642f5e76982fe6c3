# Set-up, tests and the main demo job. `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
export GWT_DATA_DIR ?= $(abspath ../shared/data)
export GWT_TOKENIZER_DIR ?= $(abspath ../shared/tokenizers)

.PHONY: help setup test test-fast demo bench

help:
	@echo "make setup   - virtual environment in $(VENV) with CPU torch 2.13.0 and the project (editable, all extras)"
	@echo "make test    - the whole test suite (CPU), as CI runs it"
	@echo "make demo    - short GWT pre-training on local C4 data, prints validation perplexity"
	@echo "make bench   - optimizer step-time benchmark (scripts/bench_optimizer.py)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) train_llama.py experiment=demo

bench: setup
	$(PY) scripts/bench_optimizer.py
