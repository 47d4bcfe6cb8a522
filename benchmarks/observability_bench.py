"""Cost per request of server.observability's hook, in process: off, request log, tracing.

The data plane calls ``observer.finish(...)`` once per request when an observer exists and tests
``observer is None`` otherwise. This times that call (median of repeated loops, per request) for each
setting: no observer (the no-op path), the request log full and sampled (lines to /dev/null through the
same single-write path as stdout), and tracing with the real SDK and batch span processor in front of an
exporter that drops the spans (so that only the server's side is timed, not a collector's). Run:
``python -m benchmarks.observability_bench [--requests 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from server.observability import BatchTiming, Observer, RequestContext, RequestLog, Tracing


def _devnull_writer() -> Callable[[bytes], Any]:
    fd = os.open(os.devnull, os.O_WRONLY)
    return lambda data: os.write(fd, data)


def _dropping_tracing(ratio: float = 1.0) -> Tracing:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return Tracing(provider)


async def per_request_us(observer: Observer | None, traceparent: str | None, requests: int) -> float:
    """The hook's time per request (µs) over one loop of `requests`, as the data plane would call it."""
    timing = BatchTiming(0.0, 0.0001, 0.0009, 16, 16)
    start = time.perf_counter()
    for _ in range(requests):
        call = RequestContext("req-id", traceparent, None, "127.0.0.1:50000")
        if observer is not None:
            observer.finish(call, protocol="v2", model="bench", version="1", request_id=None, status=200,
                            rows=1, start=start, batch=timing)  # fmt: skip
    await asyncio.sleep(0)  # let the request log flush, as the event loop would
    return (time.perf_counter() - start) / requests * 1e6


async def run(requests: int, repeats: int) -> list[tuple[str, float]]:
    write = _devnull_writer()
    every, one_in_100 = _dropping_tracing(), _dropping_tracing(0.01)
    sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the client samples this trace
    variants: list[tuple[str, Observer | None, str | None]] = [
        ("no observer (log off, no OTLP endpoint)", None, sampled),
        ("request log sampled 1%", Observer(RequestLog("sampled", 0.01, write), None), sampled),
        ("request log full", Observer(RequestLog("full", 1.0, write), None), sampled),
        ("tracing, every request (3 spans each)", Observer(None, every), sampled),
        ("tracing, 1% sampled (no traceparent)", Observer(None, one_in_100), None),
        ("tracing every request + log full", Observer(RequestLog("full", 1.0, write), every), sampled),
    ]
    # Round-robin, so that a busy moment on shared cores does not land on one variant only.
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(repeats):
        for name, observer, traceparent in variants:
            times[name].append(await per_request_us(observer, traceparent, requests))
    every.shutdown()
    one_in_100.shutdown()
    return [(name, statistics.median(times[name])) for name, _, _ in variants]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.requests, args.repeats))
    base = rows[0][1]
    print("| setting | µs per request (hook + RequestContext) | over no observer |")
    print("|---|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.3f} | {us - base:+.3f} µs |")
    otel = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    print(f"\n(opentelemetry modules imported by this benchmark: {len(otel)}; the server imports none without"
          " an OTLP endpoint)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
