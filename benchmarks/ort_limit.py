"""The compute limit: the ensemble in onnxruntime in this process, no HTTP, one intra-op thread.

Two ways to run it: the members fused into one graph (one session call per batch), and the member files as
separate sessions run one after another (what a server holding one session per member does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from testing.members import fuse_members

MODES = ("fused", "per-member")


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One thread: two intra-op threads per session lose badly on 2 cores shared with anything else.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def runners(member_paths: list[Path]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """One callable per mode, each mapping rows [N, F] to averaged probabilities [N, C]."""
    fused = ort.InferenceSession(
        fuse_members(member_paths).SerializeToString(), _options(), providers=["CPUExecutionProvider"]
    )
    members = [
        ort.InferenceSession(str(p), _options(), providers=["CPUExecutionProvider"]) for p in member_paths
    ]
    name = fused.get_inputs()[0].name

    def run_fused(x: np.ndarray) -> np.ndarray:
        return fused.run(None, {name: x})[0]

    def run_members(x: np.ndarray) -> np.ndarray:
        return np.mean([s.run(None, {name: x})[0] for s in members], axis=0)

    return {"fused": run_fused, "per-member": run_members}


def rows_per_second(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seconds: float) -> float:
    """Rows/s of back-to-back calls on `x` for about `seconds` (after a few warm-up calls)."""
    for _ in range(3):
        run(x)
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        run(x)
        calls += 1
        now = time.perf_counter()
        if now >= deadline and calls >= 3:
            return calls * x.shape[0] / (now - started)
