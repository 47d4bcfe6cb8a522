"""Prometheus metrics on the server's own registry (base units, ``_total`` counters, histograms).

With ``--workers N`` every worker writes its values to files under ``PROMETHEUS_MULTIPROC_DIR`` (set by
the parent, server.workers, before any worker imports prometheus_client) and a scrape of any worker reads
them all: counters and histograms are summed, the in-flight and queue-depth gauges summed over the live
workers, the info gauge is the largest over the live workers. Gauges are therefore moved with
``inc``/``dec``/``set`` (``set_function`` callbacks cannot be read across processes); one process (no
folder set) keeps the plain in-memory values.
"""

from __future__ import annotations

import os
import warnings
from functools import cached_property
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from server import metric_files
from server.stats import Statistics

# From 100 µs to 10 s: single-row CPU inference sits well under a millisecond, timeouts at seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The `_created` series double every counter and histogram for little use here.
disable_created_metrics()
MV = ("model", "version")


class Metrics:
    """Every metric the server exports; one instance per app (tests get their own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # A worker of `--workers N`: a scrape reads every worker's files, not this registry.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._scraped = r
        if self.multiprocess_dir:
            metric_files.install()  # before the first metric: values written in batches (server.metric_files)
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped, self.multiprocess_dir)
        self.requests = Counter(
            "ensemble_requests", "Inference requests by protocol and outcome (ok or the HTTP status).",
            [*MV, "protocol", "outcome"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "ensemble_request_duration_seconds", "Time from a request's arrival to its answer.",
            [*MV, "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "ensemble_queue_duration_seconds", "Time a request waited in the queue before its batch ran.",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_duration = Histogram(
            "ensemble_compute_duration_seconds", "Time to run every member on one batch and combine them.",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "ensemble_batch_size", "Rows in each executed batch.", MV, buckets=BATCH_BUCKETS, registry=r
        )
        self.inferred_rows = Counter("ensemble_inferred_rows", "Rows inferred.", MV, registry=r)
        self.queue_depth = Gauge(
            "ensemble_queue_depth", "Rows waiting in the batch queue.", MV, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_flight = Gauge(
            "ensemble_in_flight_requests", "Inference requests being handled now.", MV, registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.model_info = Gauge(
            "ensemble_model_info", "1 for each loaded model version, with where and how it runs.",
            [*MV, "provider", "device", "members", "execution"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        # Drift signals of a table model, per column (its name in the training table).
        self.unseen_categories = Counter(
            "ensemble_unseen_categories", "Values of a categorical column not seen in training (answered).",
            [*MV, "column"], registry=r,
        )  # fmt: skip
        self.missing_values = Counter(
            "ensemble_missing_values", "Missing values received in a column of a table model (answered).",
            [*MV, "column"], registry=r,
        )  # fmt: skip
        self.load_failures = Counter(
            "ensemble_model_load_failures", "Model versions that failed to load.", ["model"], registry=r
        )
        # Request log lines dropped because stdout did not take them (server.observability.StdoutWriter).
        self.request_log_dropped = Counter(
            "ensemble_request_log_dropped", "Request log lines dropped because stdout was not writable.",
            registry=r,
        )  # fmt: skip
        # What the HTTP connection limits did (server.http.connections), per process and summed over workers.
        self.connections_refused = Counter(
            "ensemble_connections_refused",
            "HTTP connections refused or closed by the connection limits, by reason.", ["reason"], registry=r,
        )  # fmt: skip
        self.open_connections = Gauge(
            "ensemble_open_connections", "HTTP connections open now.", registry=r, multiprocess_mode="livesum"
        )
        self.connections = ConnectionMetrics(self)

        # Triton's statistics extension (exact nanosecond sums), fed by the same call sites.
        self.stats = Statistics(self.multiprocess_dir)
        self._models: dict[tuple[str, str], ModelMetrics] = {}

    def model(self, model: str, version: str) -> ModelMetrics:
        """The metrics of one model version with their labels bound (looked up once, not per request)."""
        found = self._models.get((model, version))
        if found is None:
            found = self._models[(model, version)] = ModelMetrics(self, model, version)
        return found

    def forget_info(self, labels: tuple[str, ...]) -> None:
        """Drop a retired version's info series (with workers its file keeps the labels: it reads 0)."""
        if self.multiprocess_dir:
            self.model_info.labels(*labels).set(0)
        with warnings.catch_warnings():  # multiprocess mode warns that removal does not reach the files
            warnings.simplefilter("ignore", UserWarning)
            self.model_info.remove(*labels)

    def flush(self) -> None:
        """With workers: write this worker's changed values to its files (the others' reads see them)."""
        if self.multiprocess_dir:
            metric_files.flush()
            self.stats.flush()

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self._scraped)


# The reasons of ensemble_connections_refused_total (server.http.connections notes them by these names).
CONNECTION_REFUSALS = (
    "header_timeout",  # headers not complete within header_timeout_s: 408 and close
    "headers_too_large",  # 431: the header bytes beyond max_header_bytes
    "too_many_headers",  # 431: more than max_headers
    "header_line_too_long",  # 431: a header line beyond max_header_line_bytes
    "request_line_too_long",  # 414
    "evicted",  # above the soft limit, the connection waiting longest for headers was closed for a new one
    "over_soft_limit",  # an ordinary request above the soft limit: 503 and close
    "over_cap",  # a new connection beyond max_connections: 503 at once
)


class ConnectionMetrics:
    """The connection counters with their children bound once: the connection callbacks pay one method
    call and an integer update. Every reason's series exists from the start (at 0), so a rate over it is
    defined before the first refusal. Called on the event loop only (see server.metric_files)."""

    def __init__(self, metrics: Metrics) -> None:
        self._refused = {reason: metrics.connections_refused.labels(reason) for reason in CONNECTION_REFUSALS}
        self._open = metrics.open_connections

    def refused(self, reason: str) -> None:
        self._refused[reason].inc()

    def opened(self) -> None:
        self._open.inc()

    def closed(self) -> None:
        self._open.dec()


class ModelMetrics:
    """One model version's label children. ``.labels()`` hashes and locks on every call, several times per
    request on the hot path; these are bound on first use (so a series still appears only once it has a
    value, as before) and kept. The label sets are never removed, so a kept child stays the live one."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._m, self._mv = metrics, (model, version)
        self._requests: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._columns: dict[str, tuple[Any, Any]] = {}

    def requests(self, protocol: str, outcome: str) -> Any:
        key = (protocol, outcome)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._m.requests.labels(*self._mv, protocol, outcome)
        return child

    def request_duration(self, protocol: str) -> Any:
        child = self._durations.get(protocol)
        if child is None:
            child = self._durations[protocol] = self._m.request_duration.labels(*self._mv, protocol)
        return child

    # Bound on first use, so that a series appears with the first request (or queued row), as before.
    @cached_property
    def in_flight(self) -> Any:
        return self._m.in_flight.labels(*self._mv)

    @cached_property
    def queue_depth(self) -> Any:
        return self._m.queue_depth.labels(*self._mv)

    def column_values(self, column: str, unseen: int, missing: int) -> None:
        """Count a request's unseen categories and missing values in `column` (called only when some)."""
        children = self._columns.get(column)
        if children is None:
            labels = (*self._mv, column)
            children = self._columns[column] = (
                self._m.unseen_categories.labels(*labels),
                self._m.missing_values.labels(*labels),
            )
        if unseen:
            children[0].inc(unseen)
        if missing:
            children[1].inc(missing)

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self) -> None:
        self.in_flight.dec()

    @cached_property
    def queue_duration(self) -> Any:
        return self._m.queue_duration.labels(*self._mv)

    @cached_property
    def compute_duration(self) -> Any:
        return self._m.compute_duration.labels(*self._mv)

    @cached_property
    def batch_size(self) -> Any:
        return self._m.batch_size.labels(*self._mv)

    @cached_property
    def inferred_rows(self) -> Any:
        return self._m.inferred_rows.labels(*self._mv)
