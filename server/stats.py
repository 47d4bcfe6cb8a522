"""Triton's statistics extension: cumulative per-model-version counts and durations in nanoseconds.

``GET /v2/models[/{m}[/versions/{v}]]/stats`` answers in Triton's shape (``extension_statistics.md``);
perf_analyzer reads ``inference_count``, ``execution_count`` and ``inference_stats`` (success, queue,
compute_input, compute_infer, compute_output: ``count`` and ``ns``) as unsigned integers. Prometheus
histograms hold the same facts in seconds; these are kept apart because the extension wants exact
per-request sums (a request's compute time is its whole batch's, as in Triton) and success/fail split.
Every update happens on the event loop, so plain integers suffice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class ModelStats:
    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def add(self, stage: str, seconds: float, times: int = 1) -> None:
        self.count[stage] += times
        self.ns[stage] += round(seconds * 1e9) * times


class Statistics:
    """Per (model, version) statistics; missing versions read as zeros."""

    def __init__(self) -> None:
        self._by_model: dict[tuple[str, str], ModelStats] = {}

    def of(self, model: str, version: str) -> ModelStats:
        found = self._by_model.get((model, version))  # not setdefault: that builds a ModelStats per call
        if found is None:
            found = self._by_model[(model, version)] = ModelStats()
        return found

    def record_request(self, model: str, version: str, ok: bool, seconds: float) -> None:
        self.of(model, version).add("success" if ok else "fail", seconds)

    def record_batch(
        self, model: str, version: str, queued_s: Iterable[float], compute_s: float, rows: int
    ) -> None:
        s = self.of(model, version)
        waits = list(queued_s)
        for wait in waits:
            s.add("queue", wait)
        # Each request in the batch waited for the whole run; input/output copies are part of it here.
        s.add("compute_infer", compute_s, len(waits))
        s.add("compute_input", 0.0, len(waits))
        s.add("compute_output", 0.0, len(waits))
        s.inference_count += rows
        s.execution_count += 1
        s.last_inference_ms = int(time.time() * 1000)

    def model_stats(self, model: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` in Triton's JSON shape."""
        s = self.of(model, version)
        return {
            "name": model,
            "version": version,
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {k: {"count": s.count[k], "ns": s.ns[k]} for k in STAGES},
            "batch_stats": [],
        }
