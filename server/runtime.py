"""onnxruntime sessions on the hardware that is really there.

Providers are chosen from ``onnxruntime.get_available_providers()`` and the ``device`` setting
(TensorRT -> CUDA -> CPU for ``auto``); after a session is made, ``session.get_providers()`` tells which
provider actually runs, because onnxruntime-gpu falls back to the CPU silently when CUDA libraries fail to
load. CPU thread pools are sized from the CPUs this process may use (affinity and cgroup quota), not the
host's count.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_WANTED: dict[str, list[str]] = {
    "auto": [TRT, CUDA, CPU],
    "tensorrt": [TRT, CUDA, CPU],
    "cuda": [CUDA, CPU],
    "cpu": [CPU],
}


def choose_providers(device: str, available: list[str], gpu_device_id: int = 0) -> list[Any]:
    """Provider list (with options) for `device`, keeping only the providers this onnxruntime build has."""
    chosen: list[Any] = []
    for name in _WANTED[device]:
        if name not in available:
            continue
        if name == CUDA:
            # TF32 matmuls (onnxruntime's default on Ampere and later) move probabilities by ~5e-5;
            # an ensemble served for its calibrated probabilities keeps full FP32, like the CPU.
            chosen.append((name, {"device_id": gpu_device_id, "use_tf32": 0}))
        elif name == TRT:
            chosen.append((name, {"device_id": gpu_device_id}))
        else:
            chosen.append(name)
    if device in ("cuda", "tensorrt") and not any(isinstance(p, tuple) for p in chosen):
        log.warning(
            "device=%s asked for but onnxruntime offers only %s; running on the CPU", device, available
        )
    return chosen or [CPU]


@functools.cache
def load_gpu_libraries() -> None:
    """Preload CUDA and cuDNN from the nvidia-* wheels where they are installed (pip-only GPU hosts).

    onnxruntime-gpu (1.21+) can load them itself with ``preload_dlls``; where the libraries come from the
    system instead (the CUDA base image), this finds nothing and changes nothing. Once per process.
    """
    if CUDA not in ort.get_available_providers() or not hasattr(ort, "preload_dlls"):
        return
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # a failed preload only means the system's libraries are used
        log.info("onnxruntime.preload_dlls found no CUDA wheels to preload: %s", exc)


@functools.cache
def tensorrt_loadable() -> bool:
    """Whether TensorRT's own library loads: onnxruntime-gpu lists its TensorRT provider regardless."""
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    log.info("TensorRT libraries (libnvinfer) not found: not offering TensorrtExecutionProvider")
    return False


def loadable_providers(available: list[str]) -> list[str]:
    """The available providers less TensorRT where its libraries are missing.

    Left in, onnxruntime would fail over on its own, to CUDA with default options (TF32 on, device 0),
    dropping ours; so decide here, and say so once in the log.
    """
    if TRT in available and not tensorrt_loadable():
        return [p for p in available if p != TRT]
    return available


def device_of(provider: str) -> str:
    return {TRT: "tensorrt", CUDA: "cuda"}.get(provider, "cpu")


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by the cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def default_intra_op_threads(cpus: int, parallel_sessions: int = 1) -> int:
    """Threads per session: share the CPUs among sessions that run at once.

    On small CPU counts one thread per session wins: the batcher already keeps the cores busy with
    whole batches and extra ORT threads only contend (measured in docs/serving.md).
    """
    if cpus <= 2:
        return 1
    return max(1, cpus // max(1, parallel_sessions))


@dataclass(frozen=True)
class SessionInfo:
    provider: str  # the provider that actually runs the graph
    device: str
    intra_op_threads: int


def make_session(
    model: str | bytes | Path,
    device: str = "auto",
    gpu_device_id: int = 0,
    intra_op_threads: int = 1,
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Create a session and report the provider that actually runs it."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the cores the batcher and the event loop need between runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    if device != "cpu":
        load_gpu_libraries()
    providers = choose_providers(device, loadable_providers(ort.get_available_providers()), gpu_device_id)
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    running = session.get_providers()[0]
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if running != wanted:
        log.warning("asked for %s but onnxruntime runs %s (fell back)", wanted, running)
    return session, SessionInfo(
        provider=running, device=device_of(running), intra_op_threads=intra_op_threads
    )
