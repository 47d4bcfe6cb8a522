"""Triton's statistics extension: cumulative per-model-version counts and durations in nanoseconds.

``GET /v2/models[/{m}[/versions/{v}]]/stats`` answers in Triton's shape (``extension_statistics.md``);
perf_analyzer reads ``inference_count``, ``execution_count`` and ``inference_stats`` (success, queue,
compute_input, compute_infer, compute_output: ``count`` and ``ns``) as unsigned integers. Prometheus
histograms hold the same facts in seconds; these are kept apart because the extension wants exact
per-request sums (a request's compute time is its whole batch's, as in Triton) and success/fail split.
Every update happens on the event loop, so plain integers suffice.

With ``--workers N`` each worker also writes its figures through to its own memory-mapped file (the
prometheus-client format, in a ``stats/`` folder of the multiprocess directory, which the metrics
collector does not read), and a read sums the files of every worker, dead ones included, so the answer
covers the whole server and never goes down. The files hold float64: sums stay exact to 2**53 ns (104 days
of one stage's time per worker).
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.mmap_dict import MmapedDict

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


class _SharedFile:
    """This process's figures in a file that every worker reads (``--workers N``)."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.join(folder, "stats")
        os.makedirs(self.folder, exist_ok=True)
        self._file = MmapedDict(os.path.join(self.folder, f"stats_{os.getpid()}.db"))
        self._pending: dict[tuple[str, str, str], float] = {}  # written by flush() (server.metric_files)
        atexit.register(self.flush)

    def write(self, model: str, version: str, name: str, value: float) -> None:
        self._pending[(model, version, name)] = value

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (model, version, name), value in pending.items():
            self._file.write_value(json.dumps([model, version, name]), value, 0.0)

    def totals(self) -> dict[tuple[str, str], ModelStats]:
        """Every process's figures summed (last inference: the latest)."""
        self.flush()  # this process's own figures are always current
        out: dict[tuple[str, str], ModelStats] = {}
        for path in glob.glob(os.path.join(self.folder, "stats_*.db")):
            try:
                values = MmapedDict.read_all_values_from_file(path)
            except OSError:  # removed meanwhile
                continue
            for key, value, _, _ in values:
                model, version, name = json.loads(key)
                s = out.setdefault((model, version), ModelStats())
                stage, _, kind = name.partition(".")
                if kind:
                    getattr(s, kind)[stage] += int(value)
                elif name == "last_inference_ms":
                    s.last_inference_ms = max(s.last_inference_ms, int(value))
                else:
                    setattr(s, name, getattr(s, name) + int(value))
        return out


class Statistics:
    """Per (model, version) statistics; missing versions read as zeros.

    `shared_folder`: the multiprocess directory of ``--workers N`` (None: this process alone)."""

    def __init__(self, shared_folder: str | None = None) -> None:
        self._by_model: dict[tuple[str, str], ModelStats] = {}
        self._shared = _SharedFile(shared_folder) if shared_folder else None

    def of(self, model: str, version: str) -> ModelStats:
        found = self._by_model.get((model, version))  # not setdefault: that builds a ModelStats per call
        if found is None:
            found = self._by_model[(model, version)] = ModelStats()
        return found

    def record_request(self, model: str, version: str, ok: bool, seconds: float) -> None:
        s, stage = self.of(model, version), "success" if ok else "fail"
        s.add(stage, seconds)
        if self._shared is not None:
            self._publish(model, version, s, (stage,))

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
        if self._shared is not None:
            self._publish(model, version, s, ("queue", "compute_input", "compute_infer", "compute_output"))
            for name in ("inference_count", "execution_count", "last_inference_ms"):
                self._shared.write(model, version, name, getattr(s, name))

    def flush(self) -> None:
        if self._shared is not None:
            self._shared.flush()

    def _publish(self, model: str, version: str, s: ModelStats, stages: tuple[str, ...]) -> None:
        assert self._shared is not None
        for stage in stages:
            self._shared.write(model, version, f"{stage}.count", s.count[stage])
            self._shared.write(model, version, f"{stage}.ns", s.ns[stage])

    def model_stats(self, model: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` in Triton's JSON shape (every worker's, with ``--workers N``)."""
        if self._shared is not None:
            s = self._shared.totals().get((model, version)) or ModelStats()
        else:
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
