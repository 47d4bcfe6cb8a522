# syntax=docker/dockerfile:1
# The serving image: ensemble-serve (FastAPI/uvicorn + onnxruntime) and nothing of training (no torch).
#
#   GPU (default):  docker build -t ensemble-serving .
#   CPU only:       docker build --build-arg ORT_PACKAGE=onnxruntime -t ensemble-serving:cpu .
#   Other base:     --build-arg BASE_IMAGE=debian:bookworm-slim   (any glibc image with python3 or apt)
#   Bake models in: --build-arg MODEL_REPOSITORY=model_repository (a folder inside the build context)
#
# Current onnxruntime-gpu wheels on PyPI (1.31, 1.32) are built for CUDA 13 and cuDNN 9, hence this base;
# CUDA 13 needs an NVIDIA driver of the R580 series or newer on the host.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
# onnxruntime-gpu (CUDA/TensorRT providers, falls back to CPU) or onnxruntime (CPU only); the version range
# is the one pyproject.toml's `gpu`/`cpu` extras allow.
ARG ORT_PACKAGE=onnxruntime-gpu
ARG ORT_VERSION=">=1.20,<2"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# CUDA images ship no Python; Debian-like bases get it from apt (versions follow the base image's release).
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The heavy, rarely changing part first so that editing the server's code reuses this layer.
# onnx is listed because the server may read or fuse member graphs with it.
# hadolint ignore=DL3013
RUN pip install "${ORT_PACKAGE}${ORT_VERSION}" "onnx>=1.16,<2"
WORKDIR /src
# README.m[d] matches README.md when there is one (pyproject names it) and nothing otherwise.
COPY pyproject.toml README.m[d] ./
COPY server ./server
# A non-editable install of the serving core only (the wheel carries `server`; training is not copied).
RUN if [ ! -f README.md ]; then printf '# ensemble-serving\n' > README.md; fi \
    && pip install .
# Optionally bake a model repository into the image; otherwise /models is an empty mount point.
ARG MODEL_REPOSITORY=""
COPY . /context
RUN mkdir -p /models \
    && if [ -n "${MODEL_REPOSITORY}" ]; then cp -a "/context/${MODEL_REPOSITORY}/." /models/; fi

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ensemble-serving" \
      org.opencontainers.image.description="Serves ONNX ensembles over KServe V2 / Open Inference Protocol with dynamic batching and Prometheus metrics." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV DEBIAN_FRONTEND=noninteractive
# Only the interpreter at run time: no pip, no compilers (the venv's python links to /usr/bin/python3).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 ensemble \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ensemble
COPY --from=build /opt/venv /opt/venv
COPY --from=build /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENSEMBLE_HOST=0.0.0.0 \
    ENSEMBLE_PORT=8000 \
    ENSEMBLE_GRPC_PORT=8001 \
    ENSEMBLE_MODEL_REPOSITORY=/models \
    ENSEMBLE_WORKERS=auto
VOLUME ["/models"]
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# gRPC (Triton's GRPCInferenceService and grpc.health.v1), as Triton's port.
EXPOSE 8001
# Python rather than curl: the image has no curl. urlopen raises (exit 1) on anything but a 2xx.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ENSEMBLE_PORT', '8000') + '/v2/health/ready', timeout=4)"]
# Exec form, no shell in between: SIGTERM from `docker stop` or Kubernetes reaches the server and starts
# its drain; it exits 0 once in-flight requests are done.
ENTRYPOINT ["/opt/venv/bin/ensemble-serve"]
