# Set-up, tests and the main demo job. `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: on Linux an unpinned torch from the package index is the multi-GB CUDA build.
TORCH ?= torch==2.13.0
export GWT_DATA_DIR ?= $(abspath ../shared/data)
export GWT_TOKENIZER_DIR ?= $(abspath ../shared/tokenizers)

.PHONY: help setup test test-fast wheel-check demo bench tables slurm-test gpu-check

help:
	@echo "make setup   - virtual environment in $(VENV) with $(TORCH) (CPU build here) and the project (editable, extra dev)"
	@echo "make test    - the whole test suite (CPU), as CI runs it"
	@echo "make wheel-check - build the gwt-optim wheel, install it with core dependencies only in a fresh venv, smoke-test it"
	@echo "make demo    - GWT and AdamW pre-train side by side on local C4 data: perplexity, state memory, tokens/s, loss-curve PNG"
	@echo "make bench   - optimizer step-time benchmark (scripts/bench_optimizer.py)"
	@echo "make gpu-check - on a GPU machine, ~8 min: gpu tests, benchmark, pre-training and GLUE checks -> results/gpu/"
	@echo "make tables  - results/tables.md and results/figures/ from results/**/result.json"
	@echo "make slurm-test - real one-node Slurm on localhost: sbatch, submitit sweep, requeue (root)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

wheel-check:
	TORCH="$(TORCH)" scripts/check_wheel.sh

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) scripts/bench_optimizer.py

# GPU machines: the venv's Python if `make setup` made one, else `python` on PATH (conda env of
# environment.yml). ARGS="--dry-run" or ARGS="--phases train" pass options through.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python) scripts/gpu_check.py $(ARGS)

tables: setup
	$(PY) scripts/make_tables.py --out results/tables.md
	$(PY) scripts/plot_curves.py

slurm-test: setup
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH scripts/slurm_localtest.sh
