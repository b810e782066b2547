# The project's verbs. Each target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which dataset `make reproduce` builds: mnist, fashion-mnist, cifar10 or all.
DATASET ?= all
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-fast reproduce bench lint typecheck clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per dependency set, so a changed pyproject.toml reinstalls.
$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $@

$(VENV)/.train: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	touch $@

## serve: run the guard on the shipped MNIST model set at $(HOST):$(PORT)
serve: $(VENV)/.runtime
	$(VENV)/bin/uvicorn service.main:app --host $(HOST) --port $(PORT)

## test: every test, the slow real-component ones included
test: $(VENV)/.dev
	$(PY) -m pytest

## test-fast: skip the slow real-component tests
test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

## reproduce: train, evaluate and export the shipped model sets (DATASET=mnist|fashion-mnist|cifar10|all)
reproduce: $(VENV)/.train
	$(PY) -m training.reproduce --dataset $(DATASET)

## bench: benchmark the service against a real uvicorn and write reports/bench/
bench: $(VENV)/.dev
	$(PY) -m bench.run

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.dev
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
