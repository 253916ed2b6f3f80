# make test     : create .venv if needed, run the fast test suite (CPU, a few minutes)
# make test-all : the fast suite and the slow end-to-end tests (experiments, torchrun, the real SmolLM2)
# make demo     : create .venv if needed, run the compress-and-recover demo on Shakespeare (CPU, < 10 min)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export WANDB_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: venv test test-slow test-all demo clean-demo

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: venv
	$(BIN)/python -m pytest -q -m slow tests

test-all: venv
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/python scripts/demo.py

clean-demo:
	rm -rf out-demo
