"""Cost per request of server.observability, in process: off, request log sampled and full, tracing.

``hook`` (the default) times the data plane's call ``observer.finish(...)`` alone, per request, for each
setting: no observer (the no-op path: the data plane tests ``observer is None``), the request log full
and sampled (lines to /dev/null through the same single-write path as stdout), and tracing with the real
SDK and batch span processor in front of an exporter that drops the spans.

``--server REPO`` measures the whole server instead: one app per setting (``build_services`` +
``create_app``, driven as ``benchmarks.experiments.asgi_load`` does: ASGI calls, no sockets) in ONE
process, slices of requests sent to each in turn, round-robin, so that the load of a shared machine
falls on every setting alike; the process's CPU time per request (event loop, inference and exporter
threads together) is compared to the app without an observer. The request log goes to a real file;
tracing exports over OTLP/HTTP to a receiver in another process (the tests' one), so the collector's
work is not counted.

    python -m benchmarks observability [--requests 20000]
    python -m benchmarks observability --server REPO [--model bench] [--protocol v2bin] \\
        [--slices 12] [--slice-requests 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


SERVER_VARIANTS = ("off", "sampled", "full", "tracing")


async def server_run(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """CPU µs per request of each variant's app, one figure per slice."""
    from benchmarks import payloads
    from server.http.app import create_app
    from server.lifecycle import build_services
    from server.manifest import read_manifest
    from server.settings import Settings

    versions = sorted(
        (p for p in (args.server / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    manifest = read_manifest(versions[-1])
    pre = manifest.preprocessing
    mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
    std = pre.std if pre else [1.0] * len(mean)
    x = payloads.rows_for(mean, std, 1)
    body, header_length = payloads.body(
        args.protocol, x, manifest.inputs[0].name, [o.name for o in manifest.outputs]
    )
    log_fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    apps: dict[str, Any] = {}
    lifespans = []
    for name in SERVER_VARIANTS:
        if name == "tracing":
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        mode = name if name in ("sampled", "full") else "off"
        services = build_services(
            Settings(model_repository=args.server, log_level="warning", request_log=mode)
        )
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        observer = services.dataplane.observer
        if observer is not None and observer.request_log is not None:
            observer.request_log._write = lambda data, fd=log_fd: os.write(
                fd, data
            )  # a file, as stdout may be
        app = create_app(services)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await queue.put({"type": "lifespan.startup"})

        async def ignore(message: dict[str, Any]) -> None:
            pass

        lifespans.append(
            (
                queue,
                asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, queue.get, ignore)),
            )
        )
        apps[name] = (app, services)
    for _, services in apps.values():
        while not services.registry.is_ready():
            await asyncio.sleep(0.05)

    path = payloads.url_path(args.protocol, args.model)
    headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode())]
    if header_length is not None:
        headers.append((b"inference-header-content-length", str(header_length).encode()))
    failures = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal failures
        if message["type"] == "http.response.start" and message["status"] != 200:
            failures += 1

    async def client(app: Any, n: int) -> None:
        for _ in range(n):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                     "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
                     "server": ("127.0.0.1", 8000)}  # fmt: skip
            await app(scope, receive, send)

    per_client = max(1, args.slice_requests // args.concurrency)
    cpu: dict[str, list[float]] = {name: [] for name in SERVER_VARIANTS}
    for app, _ in apps.values():  # warm-up
        await asyncio.gather(*(client(app, 20) for _ in range(args.concurrency)))
    for i in range(args.slices):
        order = SERVER_VARIANTS if i % 2 == 0 else SERVER_VARIANTS[::-1]
        for name in order:
            app = apps[name][0]
            before = time.process_time()
            await asyncio.gather(*(client(app, per_client) for _ in range(args.concurrency)))
            cpu[name].append((time.process_time() - before) / (per_client * args.concurrency) * 1e6)
    for queue, task in lifespans:
        await queue.put({"type": "lifespan.shutdown"})
        await task
    os.close(log_fd)
    if failures:
        raise RuntimeError(f"{failures} requests did not answer 200")
    return cpu


def server_main(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    import uvloop

    receiver = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from testing.otlp_receiver import OTLPReceiver; "
         "r = OTLPReceiver(); r._thread.start(); print(r.endpoint, flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        endpoint = receiver.stdout.readline().strip()
        args.log_file = args.log_file or Path(tempfile.mkdtemp(prefix="obs-bench-")) / "requests.log"
        cpu = uvloop.run(server_run(args, endpoint))
    finally:
        receiver.kill()
        receiver.wait()
    base = statistics.median(cpu["off"])
    shape = f"{args.slices} slices of {args.slice_requests} requests per setting"
    print(f"{args.protocol}, 1 row, c={args.concurrency}: {shape}, round-robin in one process")
    print("| setting | CPU µs per request (median) | slices' range | over off |")
    print("|---|---:|---:|---:|")
    for name in SERVER_VARIANTS:
        med = statistics.median(cpu[name])
        spread = f"{min(cpu[name]):.1f}-{max(cpu[name]):.1f}"
        print(f"| {name} | {med:.1f} | {spread} | {(med / base - 1) * 100:+.1f}% |")
    # Paired: each slice against the off slice next to it, which shared its moment of the machine's load.
    for name in SERVER_VARIANTS[1:]:
        ratios = [a / b for a, b in zip(cpu[name], cpu["off"], strict=True)]
        print(f"{name}: median of per-slice ratios to off {statistics.median(ratios):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--server", type=Path, help="model repository: measure whole apps, not the hook")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--protocol", default="v2bin", choices=("v1", "v2json", "v2bin"))
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--slice-requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--log-file", type=Path, help="where the request log goes (default: a temporary file)"
    )
    args = parser.parse_args(argv)
    if args.server is not None:
        return server_main(args)
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
