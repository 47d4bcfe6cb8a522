#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU, run the tests marked `gpu` and a short benchmark of the
# CUDA (and TensorRT) providers against the CPU one; print one table. Installs nothing from the network:
#   WHEELS=DIR        wheels to install (onnxruntime-gpu and the server's pure-Python deps), --no-index
#   ORT_GPU_TAR=FILE  optional: an unpacked onnxruntime-gpu wheel as a tar(.xz), for hosts where the wheel
#                     had to travel in parts
#   PYTHON=python3    the interpreter to use (the host's, e.g. one that already has numpy, onnx and pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/ensemble-gpu-site}
mkdir -p "$SITE"
if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
if [[ -n "${ORT_GPU_TAR:-}" ]]; then
  rm -rf "$SITE"/onnxruntime "$SITE"/onnxruntime-*.dist-info "$SITE"/onnxruntime_gpu-*.dist-info
  tar -xf "$ORT_GPU_TAR" -C "$SITE"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
"$PYTHON" - <<'PY'
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where the host has them
print("onnxruntime", ort.__version__, ort.__file__)
print("available providers:", ort.get_available_providers())
PY
status=0
timeout 240 "$PYTHON" -m pytest -p no:cacheprovider -m gpu -q -rA tests/gpu || status=$?
timeout 120 "$PYTHON" -m benchmarks gpu --seconds "${BENCH_SECONDS:-1}" || status=$?
exit $status
