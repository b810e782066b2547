# The project's verbs. Each target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which dataset `make reproduce` builds: mnist, fashion-mnist, cifar10 or all.
DATASET ?= all
# Where `make reproduce` looks first for the data files (empty: only the standard places, see
# training/data/datasets.py).
DATA_DIR ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test test-fast reproduce detection-report bench soak lint typecheck clean mlserver-venv docker-smoke hooks grpc-stubs grafana-schema

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
	$(VENV)/bin/uvicorn service.main:app --host $(HOST) --port $(PORT) --no-access-log

## test: every test, the slow real-component ones included
test: $(VENV)/.dev
	$(PY) -m pytest

## test-fast: skip the slow real-component tests
test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

## reproduce: train, evaluate and export the shipped model sets (DATASET=mnist|fashion-mnist|cifar10|all)
reproduce: $(VENV)/.train
	$(PY) -m training.reproduce --dataset $(DATASET) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

## detection-report: issue 7's detection comparison for DATASET into reports/detection/ (each
## set's paper AE runs/<dataset>/detrigger_conv.onnx and, for MNIST, the held-out AEs must exist:
## docs/detection-report.md says how to make them); about 15 min (MNIST) to 2 h (CIFAR-10) here
DETECTION_DATASETS := $(if $(filter all,$(DATASET)),mnist fashion-mnist cifar10,$(DATASET))
DETECTION_AES_mnist := --ae heldout@checkerboard=runs/mnist/detrigger_random_minus-checkerboard.onnx \
	--ae heldout@noise=runs/mnist/detrigger_random_minus-additive.onnx
detection-report: $(VENV)/.train
	$(foreach d,$(DETECTION_DATASETS),$(PY) -m training.detection_report --dataset $(d) \
		--ae paper=runs/$(d)/detrigger_conv.onnx --ae improved=models/$(d)/detrigger.onnx \
		$(DETECTION_AES_$(d)) --threads 2 $(if $(DATA_DIR),--data-dir $(DATA_DIR)) &&) true

## mlserver-venv: MLServer from PyPI in .venv-mlserver/, the V2 upstream of tests/sidecar and the
## benchmark's peer (both make it themselves on first use; this only does it ahead of time)
mlserver-venv: $(VENV)/.dev
	$(PY) -c "from bench.mlserver import ensure_venv; print(ensure_venv())"

# The benchmark's tools: py-spy (PyPI) for the profile; wrk (Debian's package) is the load
# generator, installed here with apt-get when run as root, else a prerequisite.
$(VENV)/.bench: | $(PY)
	$(PY) -m pip install --quiet py-spy
	touch $@

## bench: the guard against MLServer serving the bare target, in one run, into reports/bench/
## (about 10 min; BENCH_ARGS, e.g. --seconds 3, passes options to bench.run)
BENCH_ARGS ?=
bench: $(VENV)/.dev $(VENV)/.bench
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get install -y -q --no-install-recommends wrk; } || \
		{ echo "make bench needs wrk: apt-get install -y wrk (as root)" >&2; exit 1; }
	$(PY) -m bench.run $(BENCH_ARGS)

## soak: concurrency 32 for SOAK_SECONDS (default 180) against a real uvicorn on models/mnist;
## prints requests, errors, latency, the server's RSS and fd count before and after (not in CI;
## docs/service.md "Soak" has the last figures)
SOAK_SECONDS ?= 180
soak: $(VENV)/.dev
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS)

## docker-smoke: build the CPU image with podman from a local debootstrap base, run it, check
## /readyz and that a triggered $(SMOKE_MODEL_SET) sample is flagged (root; .ci/run installs podman)
SMOKE_MODEL_SET ?= mnist
docker-smoke:
	MODEL_SET=$(SMOKE_MODEL_SET) deploy/podman/smoke.sh

## hooks: use the repository's git hooks (.githooks/commit-msg: a subject under 72 characters,
## a blank line, then a body that says why)
hooks:
	git config core.hooksPath .githooks

## grpc-stubs: regenerate service/protocol/grpc/*_pb2*.py from grpc_predict_v2.proto (committed)
grpc-stubs: $(VENV)/.dev
	$(PY) -m service.protocol.grpc.generate

## grafana-schema: regenerate deploy/grafana/schema/dashboard.schema.json, Grafana's dashboard
## schema, from the npm package @grafana/schema (node and npm; docs/deploy.md "The dashboard")
grafana-schema:
	deploy/grafana/schema/generate.sh

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.dev
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .venv-mlserver .pytest_cache .mypy_cache .ruff_cache
