# make test     : create .venv if needed, run the fast test suite (CPU, a few minutes)
# make test-all : the fast suite and the slow end-to-end tests (experiments, torchrun, the real SmolLM2)
# make demo     : create .venv if needed, compress SmolLM2-135M to 0.8x with compress.py (CPU, about 10 min)
# make demo-tiny: the character-level tutorial: train a 3.2M GPT on Shakespeare, decompose it, recover (CPU, ~10 min)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
export WANDB_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: venv venv-test test test-slow test-all lint demo demo-tiny clean-demo

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $(TEST_STAMP)

venv: $(STAMP)

venv-test: $(TEST_STAMP)

test: venv-test lint
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: venv-test
	$(BIN)/ruff check --quiet .

test-slow: venv-test
	$(BIN)/python -m pytest -q -m slow tests

test-all: venv-test
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/python compress.py config/compress_demo.py

demo-tiny: venv
	$(BIN)/python scripts/demo.py

clean-demo:
	rm -rf out-demo
