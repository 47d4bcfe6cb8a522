"""Prometheus metrics on the server's own registry (base units, ``_total`` counters, histograms)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.queue_depth = Gauge("ensemble_queue_depth", "Rows waiting in the batch queue.", MV, registry=r)
        self.in_flight = Gauge(
            "ensemble_in_flight_requests", "Inference requests being handled now.", MV, registry=r
        )
        self.model_info = Gauge(
            "ensemble_model_info", "1 for each loaded model version, with where and how it runs.",
            [*MV, "provider", "device", "members", "execution"], registry=r,
        )  # fmt: skip
        self.load_failures = Counter(
            "ensemble_model_load_failures", "Model versions that failed to load.", ["model"], registry=r
        )

        # Triton's statistics extension (exact nanosecond sums), fed by the same call sites.
        self.stats = Statistics()

    def render(self) -> bytes:
        return generate_latest(self.registry)
