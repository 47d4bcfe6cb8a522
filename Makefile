# ensemble-serving: the two commands that matter are `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
REPO ?= model_repository
MODEL ?= digits
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run train serve test lint format clean gpu-check image-test bench bench-compare grpc-gen quality

# The stamp is rebuilt when pyproject.toml changes. torch is installed first and pinned so that no other
# package can pull a CUDA build of it.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[train,cpu,dev]' $(TORCH)
	touch $@

install: $(BIN)/.installed

# Train the default ensemble on the bundled digits if no model exists, then serve it.
run: install
	@if ! ls $(REPO)/$(MODEL)/*/manifest.json >/dev/null 2>&1; then \
		echo "No model in $(REPO)/$(MODEL): training the default ensemble (about a minute)..."; \
		$(BIN)/ensemble-train ensemble --data digits --members 5 --repository $(REPO) --name $(MODEL); \
	fi
	$(BIN)/ensemble-serve --model-repository $(REPO) --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collects no tests, which fails this target as it should.
test: install lint
	$(BIN)/python -m pytest

# Build the serving image with podman on a locally made Debian base and check it end to end (as root; about
# 3 minutes the first time, the base image is then cached under .cache/image).
image-test: install
	$(BIN)/python tests/image/run_image_test.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# On a machine with an NVIDIA GPU: `make gpu-check WHEELS=dir-of-wheels [ORT_GPU_TAR=file] [PYTHON=python3]`.
gpu-check:
	WHEELS=$(WHEELS) ORT_GPU_TAR=$(ORT_GPU_TAR) PYTHON=$(or $(PYTHON_GPU),python3) bash benchmarks/gpu_check.sh

# The benchmark harness (about 10 minutes, needs `wrk`): our server against onnxruntime in process, a minimal
# ASGI app and a FastAPI baseline. Writes docs/benchmarks.md/.json/.png. BENCH_ARGS=--use-trained serves digits.
# Every other benchmark and experiment: `python -m benchmarks` lists them; `make bench-compare REVS="a=REV b=REV"`.
bench: install
	$(BIN)/python -m benchmarks run $(BENCH_ARGS)

bench-compare: install
	$(BIN)/python -m benchmarks compare $(REVS) $(BENCH_ARGS)

# Regenerate server/grpc/generated/ from the .proto files in server/grpc/protos/ (grpcio-tools, dev).
grpc-gen: install
	$(BIN)/python server/grpc/protos/generate.py

# The quality benchmark (about 20 minutes on 2 cores): the default ensemble, trained with the CLI and
# scored through the server, against scikit-learn baselines on tables that statsmodels, ISLP and
# vega_datasets ship.
# Writes docs/quality.md/.json/.png. QUALITY_ARGS=--tables auto,fair runs a subset.
quality: install
	$(BIN)/python -m pip install -q -e '.[quality]'
	$(BIN)/python -m pip install -q --no-deps 'ISLP==0.6.0'
	$(BIN)/python -m benchmarks quality $(QUALITY_ARGS)
