"""What operators see of the server: its logs, a request log line per request, and OpenTelemetry traces.

The data plane calls one hook per inference request, :meth:`Observer.finish`, once its answer is known,
whatever the transport (HTTP V1/V2 or gRPC): transports only fill a :class:`RequestContext` with what they
alone know (the X-Request-ID header or x-request-id metadata, the W3C ``traceparent``, the client's address)
and echo :attr:`RequestContext.echo_id` back. With the request log off and no OTLP endpoint configured there
is no observer at all (``build_observer`` returns None): the data plane's whole cost is an ``is None`` test,
and the OpenTelemetry SDK is never imported.

Every span is made at the end of its request with explicit start and end times (the arrival, the batch's
start and end): nothing rides through the batcher, and a request that is never traced pays nothing for it.
Each request's trace gets its own ``queue`` and ``inference`` children, the latter carrying the size of the
batch it ran in (a batch serves several requests; see docs/operations.md for why this beats span links).

Nothing here assumes one process: ids are random (seeded per process), each worker process sets up its own
tracer provider (after the fork) and writes whole lines to stdout with single ``write`` calls of at most
``PIPE_BUF`` bytes, which the kernel does not interleave with other writers' lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import orjson

log = logging.getLogger("server.observability")

RequestLogMode = Literal["off", "sampled", "full"]
LogFormat = Literal["text", "json"]
SERVICE_NAME = "ensemble-serving"
# Ids and names from clients are cut to this length in the log and in spans: nobody's id is longer, and a
# line must stay one atomic write.
MAX_ID_CHARS = 128
# POSIX guarantees that a write of at most PIPE_BUF bytes to a pipe is not interleaved with other writers'.
PIPE_BUF = 4096
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# ---------------------------------------------------------------- the server's own logs
class JsonFormatter(logging.Formatter):
    """One JSON object per log record (time, level, logger, message, exception), for log collectors;
    a worker process of ``--workers N`` adds its index."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str, fmt: LogFormat = "text", worker: int | None = None) -> None:
    """The server's logs (uvicorn's included, which propagate to the root logger) on stderr; `worker`:
    the index of a worker process of ``--workers N``, shown on each line.

    stdout is left to the request log, so that each stream holds one kind of line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        text = TEXT_FORMAT if worker is None else TEXT_FORMAT.replace("%(name)s", f"worker-{worker} %(name)s")
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# ---------------------------------------------------------------- one request
def new_request_id() -> str:
    """32 random hex digits: unique across worker processes and restarts, unlike a counter.

    From the ``random`` module (a tenth of ``os.urandom``'s system call): it is seeded from the OS in
    every process and reseeded in a forked child, so two workers never share a sequence. An id, not a
    secret."""
    return random.getrandbits(128).to_bytes(16, "big").hex()  # a third of f"{n:032x}"'s cost


class RequestContext:
    """What one inference request's transport knows beyond the request itself, and the id it echoes.

    The transport fills the first four fields; the data plane sets ``request_id`` (through
    :meth:`Observer.finish`) once the request's own ``id`` is known."""

    __slots__ = ("client", "header_id", "request_id", "traceparent", "tracestate")

    def __init__(
        self,
        header_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        client: str | None = None,
    ) -> None:
        self.header_id = header_id  # X-Request-ID header or x-request-id metadata, as sent
        self.traceparent, self.tracestate = traceparent, tracestate
        self.client = client  # "host:port"
        self.request_id: str | None = None

    @property
    def echo_id(self) -> str | None:
        """The X-Request-ID to answer with: the client's own when it sent one (an ingress correlates by it),
        else the id the request was logged under (None when nothing is logged or traced)."""
        return self.header_id or self.request_id


def grpc_context(metadata: Iterable[tuple[str, str | bytes]] | None, peer: str | None) -> RequestContext:
    """A gRPC call's context: x-request-id, traceparent and tracestate from its metadata (keys arrive in
    lower case), and the peer (``ipv4:127.0.0.1:5000`` as grpc writes it) as ``127.0.0.1:5000``."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in _GRPC_KEYS and key not in found:
            found[key] = value if isinstance(value, str) else value.decode("latin-1")
    client = peer.partition(":")[2] if peer and peer.startswith(("ipv4:", "ipv6:")) else peer
    return RequestContext(
        found.get("x-request-id"), found.get("traceparent"), found.get("tracestate"), client
    )


_GRPC_KEYS = frozenset({"x-request-id", "traceparent", "tracestate"})


class BatchTiming:
    """When one request's batch ran (``time.perf_counter()`` values) and how big it was: the data plane
    hands an empty one to the batcher, which fills it when the batch has run (``requests`` stays 0 for a
    request that never ran, such as one that timed out in the queue)."""

    __slots__ = ("enqueued", "finished", "requests", "rows", "started")

    def __init__(
        self,
        enqueued: float = 0.0,
        started: float = 0.0,
        finished: float = 0.0,
        rows: int = 0,
        requests: int = 0,
    ) -> None:
        self.enqueued, self.started, self.finished = enqueued, started, finished
        self.rows = rows  # rows in the whole batch
        self.requests = requests  # requests the batch served


# ---------------------------------------------------------------- the request log
def _utc_iso(epoch_s: float) -> str:
    """ISO 8601 in UTC with milliseconds: ``2026-12-01T19:52:07.042Z``."""
    seconds, millis = divmod(round(epoch_s * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# What the request log may hold in memory while stdout is not writable (a pipe nobody reads, a slow
# collector): beyond it lines are dropped and counted, rather than the event loop waiting on the pipe.
MAX_BUFFERED_BYTES = 1 << 20


class StdoutWriter:
    """Writes whole chunks of lines to stdout without ever blocking the event loop.

    A pipe or socket on stdout gets a non-blocking file description of its own (reopened through
    /proc/self/fd/1, so the flag does not reach the parent's or other workers' stdout); what the pipe
    does not take waits in a bounded buffer, written when the loop says the pipe is writable
    (``loop.add_writer``). When the buffer is full, lines are dropped and `on_drop` is told how many.
    A regular file or a terminal is written as before (a write there does not wait on a reader)."""

    def __init__(
        self,
        fd: int = 1,
        on_drop: Callable[[int], Any] | None = None,
        limit: int = MAX_BUFFERED_BYTES,
    ) -> None:
        self.on_drop, self.limit = on_drop, limit
        self.fd = fd
        self.nonblocking = False
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._buffered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            try:
                self.fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no /proc, or a socket (which cannot be reopened): the shared description
                os.set_blocking(fd, False)
            self.nonblocking = True

    def __call__(self, data: bytes) -> None:
        if not self.nonblocking:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            return
        if self._chunks:  # lines already wait: keep the order
            self._keep(memoryview(data))
            return
        rest = self._try_write(memoryview(data))
        if rest is not None:
            self._keep(rest)
            self._watch()

    def _try_write(self, view: memoryview) -> memoryview | None:
        """What of `view` the pipe did not take (None when all of it went)."""
        try:
            written = os.write(self.fd, view)
        except BlockingIOError:
            return view
        except OSError:  # the reader is gone (EPIPE): nobody will read these lines
            self._drop(view)
            return None
        return view[written:] if written < len(view) else None

    def _keep(self, view: memoryview) -> None:
        if self._buffered + len(view) > self.limit:
            self._drop(view)
            return
        self._chunks.append(view)
        self._buffered += len(view)

    def _drop(self, view: memoryview) -> None:
        lines = bytes(view).count(b"\n")
        if lines and self.on_drop is not None:
            self.on_drop(lines)

    def _watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a thread): what is buffered waits for the next write or close
            return
        if self._loop is None:
            loop.add_writer(self.fd, self._writable)
            self._loop = loop

    def _writable(self) -> None:
        while self._chunks:
            head = self._chunks.popleft()
            self._buffered -= len(head)
            rest = self._try_write(head)
            if rest is not None:
                self._chunks.appendleft(rest)
                self._buffered += len(rest)
                return
        if self._loop is not None:
            self._loop.remove_writer(self.fd)
            self._loop = None

    def close(self) -> None:
        """Write what the pipe takes now; the rest is dropped and counted (an exit must not wait on it)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
            self._loop = None
        while self._chunks:
            head = self._chunks.popleft()
            rest = self._try_write(head)
            if rest is not None:
                self._drop(rest)
                for view in self._chunks:
                    self._drop(view)
                self._chunks.clear()
        self._buffered = 0


class RequestLog:
    """One JSON line per request, to stdout: never the payload.

    ``full`` logs every request; ``sampled`` a `sample_rate` fraction of the successful ones and every
    failed one (the failures are what an operator looks for, and they are few). Lines finished in the same
    event-loop iteration (a batch's worth) leave in one write, in chunks of at most PIPE_BUF bytes."""

    def __init__(
        self,
        mode: RequestLogMode,
        sample_rate: float = 1.0,
        write: Callable[[bytes], Any] | None = None,
        on_drop: Callable[[int], Any] | None = None,
    ) -> None:
        self.mode, self.sample_rate = mode, sample_rate
        if write is None and mode != "off":
            write = StdoutWriter(on_drop=on_drop)
        self._write: Callable[[bytes], Any] = write or (lambda data: None)
        self._pending: list[bytes] = []
        self._now = ""

    def wanted(self, status: int) -> bool:
        if self.mode == "off":
            return False
        return self.mode == "full" or status >= 400 or random.random() < self.sample_rate

    def now(self) -> str:
        """The time for the next line: read once per event-loop iteration (the answers of one batch are
        ready within it), not per line (a clock read and a date to format: a third of a line's cost)."""
        if not self._pending:
            self._now = _utc_iso(time.time())
        return self._now

    def emit(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop (a test, a thread): write now
                self._write(line)
                return
        self._pending.append(line)

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def close(self) -> None:
        self.flush()
        closer = getattr(self._write, "close", None)
        if closer is not None:
            closer()


# ---------------------------------------------------------------- tracing
def otlp_configured(env: Mapping[str, str] = os.environ) -> bool:
    """True when the standard variables ask for traces over OTLP (an endpoint, and the SDK not disabled)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class Tracing:
    """A tracer over an SDK provider; spans of one request are made by :meth:`record` at its end."""

    def __init__(self, provider: Any) -> None:
        # Imported here: with tracing off the OpenTelemetry packages are never loaded.
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self.tracer = provider.get_tracer("server.observability")
        self._extract = propagate.extract
        self._in_context = trace.set_span_in_context
        self._server, self._internal = SpanKind.SERVER, SpanKind.INTERNAL
        self._status, self._error = Status, StatusCode.ERROR

    def record(
        self,
        ctx: RequestContext,
        name: str,
        attributes: Callable[[], dict[str, Any]],
        start_ns: int,
        end_ns: int,
        status: int,
        error: str | None,
        batch: BatchTiming | None,
        perf_to_ns: Callable[[float], int],
    ) -> str | None:
        """Emit the request's span and its children; the trace id (hex), or None when not sampled.
        `attributes` is called only for a sampled span: an unsampled request costs the sampler's verdict."""
        carrier = {}
        if ctx.traceparent:
            carrier["traceparent"] = ctx.traceparent
            if ctx.tracestate:
                carrier["tracestate"] = ctx.tracestate
        parent = self._extract(carrier) if carrier else None
        span = self.tracer.start_span(name, context=parent, kind=self._server, start_time=start_ns)
        if not span.is_recording():
            return None
        span.set_attributes(attributes())
        if error is not None:
            span.set_attribute("ensemble.error", error)
        if status >= 500:  # server spans: a 4xx is the client's mistake, not an error of the server's
            span.set_status(self._status(self._error, error))
        if batch is not None:
            inside = self._in_context(span)
            queued = self.tracer.start_span(
                "queue", context=inside, kind=self._internal, start_time=perf_to_ns(batch.enqueued)
            )
            queued.end(end_time=perf_to_ns(batch.started))
            run = self.tracer.start_span(
                "inference",
                context=inside,
                kind=self._internal,
                start_time=perf_to_ns(batch.started),
                attributes={"ensemble.batch.size": batch.rows, "ensemble.batch.requests": batch.requests},
            )
            run.end(end_time=perf_to_ns(batch.finished))
        span.end(end_time=end_ns)
        return format(span.get_span_context().trace_id, "032x")

    def shutdown(self) -> None:
        """Export what is still buffered (the batch processor's queue) before the process exits."""
        self.provider.shutdown()


def otlp_tracing(env: Mapping[str, str] = os.environ) -> Tracing:
    """An SDK tracer provider exporting over OTLP, configured by the standard OTEL_* variables.

    OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL picks ``http/protobuf`` (the default) or ``grpc`` (needs the
    opentelemetry-exporter-otlp-proto-grpc package); OTEL_SERVICE_NAME (default ``ensemble-serving``),
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and OTEL_BSP_* are read by the SDK itself. Each process
    gets its own ``service.instance.id``, so that the workers of one server tell apart."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or "http/protobuf").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc import trace_exporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http import trace_exporter  # type: ignore[no-redef]
    else:
        raise ValueError(f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc")
    resource = Resource.create({"service.instance.id": str(uuid.uuid4()), "process.pid": os.getpid()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(trace_exporter.OTLPSpanExporter()))
    return Tracing(provider)


# ---------------------------------------------------------------- the data plane's hook
class Observer:
    """The request log and the tracer behind the data plane's one hook; absent when both are off."""

    def __init__(self, request_log: RequestLog | None, tracing: Tracing | None) -> None:
        self.request_log, self.tracing = request_log, tracing

    def finish(
        self,
        context: RequestContext | None,
        *,
        protocol: str,
        model: str,
        version: str | None,
        status: int,
        start: float,
        request_id: str | None = None,
        rows: int | None = None,
        batch: BatchTiming | None = None,
        error: str | None = None,
    ) -> None:
        """Log and trace one answered request. `start` is its arrival (``time.perf_counter()``), `status`
        its HTTP-style status (200, 4xx, 5xx; gRPC maps from the same), `request_id` the request's own
        ``id``. Sets ``context.request_id`` (the logged id, also the one echoed when the client sent none)
        when the request is logged or traced; one that nothing records gets no made-up id."""
        rl = self.request_log
        logged = rl is not None and rl.wanted(status)
        if not logged and self.tracing is None:  # a request the sampled log skips costs this much
            return
        end = time.perf_counter()
        if batch is not None and batch.requests == 0:  # it never ran (timed out in the queue, refused...)
            batch = None
        ctx = context if context is not None else RequestContext()
        rid = request_id or ctx.header_id or new_request_id()
        ctx.request_id = rid = rid[:MAX_ID_CHARS]
        model = model[:MAX_ID_CHARS]
        trace_id = None
        if self.tracing is not None:
            now_ns = end_ns = time.time_ns()  # the answer is ready now: perf_counter readings map from here

            def perf_to_ns(t: float) -> int:
                return now_ns - int((end - t) * 1e9)

            def attributes() -> dict[str, Any]:
                found: dict[str, Any] = {
                    "ensemble.model": model,
                    "ensemble.protocol": protocol,
                    "ensemble.request_id": rid,
                    "ensemble.status_code": status,
                }
                if version is not None:
                    found["ensemble.model.version"] = version
                if rows is not None:
                    found["ensemble.rows"] = rows
                if ctx.client:
                    host, _, port = ctx.client.rpartition(":")
                    found["client.address"] = host
                    if port.isdigit():
                        found["client.port"] = int(port)
                return found

            name = f"infer {model}" if status != 404 else "infer"  # unknown names: no new span names
            trace_id = self.tracing.record(
                ctx, name, attributes, perf_to_ns(start), end_ns, status, error, batch, perf_to_ns
            )
        if logged:
            assert rl is not None
            entry: dict[str, Any] = {
                "time": rl.now(),
                "request_id": rid,
                "model": model,
                "version": version,
                "protocol": protocol,
                "status": status,
                "rows": rows,
                # Milliseconds to the microsecond, inline: round(x, 3) goes through a string (5x slower).
                "queue_ms": None if batch is None else round((batch.started - batch.enqueued) * 1e6) / 1000,
                "compute_ms": None if batch is None else round((batch.finished - batch.started) * 1e6) / 1000,
                "total_ms": round((end - start) * 1e6) / 1000,
                "client": ctx.client,
            }
            if ctx.header_id and ctx.header_id[:MAX_ID_CHARS] != rid:
                entry["x_request_id"] = ctx.header_id[:MAX_ID_CHARS]
            if trace_id is not None:
                entry["trace_id"] = trace_id
            if error is not None:
                entry["error"] = error
            rl.emit(entry)

    def close(self) -> None:
        """Write the lines still pending and export the spans still buffered."""
        if self.request_log is not None:
            self.request_log.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def build_observer(
    request_log: RequestLogMode,
    sample_rate: float,
    env: Mapping[str, str] = os.environ,
    on_drop: Callable[[int], Any] | None = None,
) -> Observer | None:
    """The observer the settings and the OTEL_* variables ask for; None when they ask for nothing (the
    no-cost path). Call it in each worker process, after any fork: the span exporter runs a thread.
    `on_drop`: told how many request log lines were dropped because stdout did not take them."""
    rl = RequestLog(request_log, sample_rate, on_drop=on_drop) if request_log != "off" else None
    tracing = otlp_tracing(env) if otlp_configured(env) else None
    if rl is None and tracing is None:
        return None
    if tracing is not None:
        log.info("tracing: spans exported over OTLP (%s)", _endpoint(env))
    return Observer(rl, tracing)


def _endpoint(env: Mapping[str, str]) -> str:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
