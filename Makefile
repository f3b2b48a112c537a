# `make demo`: set up and run the main job; `make test`: set up and run the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench test-brainscore

$(BIN)/convrnn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/convrnn

demo: setup
	$(BIN)/convrnn demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint test-brainscore
	$(BIN)/python -m pytest -q

# Brain-Score pins numpy<2, xarray<2022.6, scikit-learn<1.6: its tests run in an environment of their own.
BS_VENV ?= .venv-brainscore
BS_BIN := $(BS_VENV)/bin
BS_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(BS_BIN)/convrnn: pyproject.toml
	$(PY) -m venv $(BS_VENV)
	$(BS_BIN)/pip install -q --upgrade pip
	$(BS_BIN)/pip install -q $(BS_TORCH) 'brainscore-vision[test]==2.4.2' scikit-image pytest
	$(BS_BIN)/pip install -q -e .
	touch $@

test-brainscore: $(BS_BIN)/convrnn
	RESULTCACHING_DISABLE=1 $(BS_BIN)/python -m pytest tests/brainscore -q

bench: setup
	$(BIN)/python benchmarks/unroll.py
