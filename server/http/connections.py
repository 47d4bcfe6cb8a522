"""Connection-level limits: slow and oversized clients cannot take the server down.

uvicorn's httptools protocol bounds neither the time a client may take to send its headers nor their size
(httptools accumulates a header line of any length), and it accepts connections until the process runs
out of descriptors, after which every new client, the readiness probe included, is reset. ``protocol_class``
builds a subclass of that protocol (``uvicorn.Config(http=...)``) which adds, per process:

- a header deadline: a connection must complete its request line and headers within ``header_timeout_s``
  of connecting (or, on a kept-alive connection, of the first byte of its next request; until then the
  idle keep-alive timeout applies); else 408 (if it had started a request) and close;
- size limits: the request line and each header line, the header count and the header bytes (URL, names
  and values); beyond them 414 or 431 ``{"error"}`` with ``Connection: close``, refused while the bytes
  come in (a 500 MB header line costs a read buffer or two, not 500 MB);
- a connection cap below the open-file limit: above the soft limit, a new connection first evicts the
  connection that has waited longest for its headers (a slow-header client or an idle keep-alive one),
  and ordinary requests get a fast 503 while probes, ``/metrics`` and the admin routes still get through
  up to the cap; beyond the cap a connection gets 503 at once and a lingering close (its request is read
  and dropped, so that the client sees the answer, not a reset).

A request pays for this with a few attribute writes and one more Python call per callback: one periodic
sweep per process replaces a timer per request (``ConnectionPool``).
The idle keep-alive timeout stays uvicorn's (``timeout_keep_alive``), from a setting.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from server.metrics import ConnectionMetrics

log = logging.getLogger(__name__)

# After a refusal the rest of what the client sends is read and dropped for at most this long before the
# socket closes: closing with unread bytes makes the kernel answer with a reset, which can destroy the
# refusal before the client reads it (nginx's lingering close does the same).
LINGER_S = 2.0
# A summary of what the limits did is logged at most this often: one line per refusal would let a hostile
# client flood the log.
LOG_EVERY_S = 10.0
# The automatic cap stops here; raise it on purpose (or add workers): one Python event loop serving more
# connections than this spends its time on bookkeeping, and each one holds some memory (docs/operations.md).
MAX_AUTO_CONNECTIONS = 16384
# What each reason (the `reason` label of ensemble_connections_refused_total) reads as in the log summary.
REASON_TEXT = {
    "header_timeout": "timed out waiting for headers",
    "headers_too_large": "refused: headers too large",
    "too_many_headers": "refused: too many headers",
    "header_line_too_long": "refused: header line too long",
    "request_line_too_long": "refused: request line too long",
    "evicted": "evicted while waiting for headers",
    "over_soft_limit": "ordinary requests refused above the soft limit",
    "over_cap": "refused at the connection cap",
}


def _budget(open_files: int) -> int:
    """Descriptors left for connections (HTTP's and gRPC's together) under a limit of `open_files`.

    Every connection holds one descriptor; the process also needs some for the listening sockets, the
    event loop, the model files it reads while (re)loading, the repository scans, the metrics files, log
    files and the GPU driver. So an eighth of the limit, and at least 64, is kept for those."""
    return open_files - max(64, open_files // 8)


def grpc_connection_cap(open_files: int) -> int:
    """gRPC's share of the connection budget: a quarter (48 under a limit of 256, 224 under 1024).

    gRPC clients multiplex their calls over few long-lived HTTP/2 connections (one per channel), so a
    quarter is ample; beyond it grpc core closes each new connection at once
    (``grpc.max_allowed_incoming_connections``), so idle connects cannot take HTTP's descriptors."""
    return max(8, _budget(open_files) // 4)


def connection_cap(open_files: int, grpc: bool = False) -> int:
    """The automatic per-process HTTP connection cap for an open-file limit of `open_files`: the budget
    (an eighth of the limit, and at least 64, kept for the process's own files) less gRPC's share when
    gRPC is on; at most ``MAX_AUTO_CONNECTIONS``. 896 for the common 1024 without gRPC, 672 with it."""
    budget = _budget(open_files) - (grpc_connection_cap(open_files) if grpc else 0)
    return max(1, min(budget, MAX_AUTO_CONNECTIONS))


def open_file_limit() -> int:
    """This process's soft RLIMIT_NOFILE (an unlimited one counts as very large)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


@dataclass(frozen=True)
class ConnectionLimits:
    """What ``protocol_class`` enforces; built from the settings by ``limits_from_settings``."""

    header_timeout_s: float
    max_header_line_bytes: int
    max_header_bytes: int
    max_headers: int
    max_connections: int  # the cap: beyond it a new connection gets 503 at once
    reserved_connections: int  # kept for probes, /metrics and admin: ordinary requests stop below it

    @property
    def soft_limit(self) -> int:
        return max(1, self.max_connections - self.reserved_connections)


def limits_from_settings(settings: Any) -> ConnectionLimits:
    """The limits for this process: the settings, and the cap from the open-file limit when not set."""
    cap = settings.max_connections or connection_cap(open_file_limit(), grpc=settings.grpc_port != 0)
    if cap > open_file_limit() - 16:
        log.warning("max_connections=%d is close to the open-file limit %d", cap, open_file_limit())
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_line_bytes=settings.max_header_line_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_connections=cap,
        reserved_connections=min(settings.reserved_connections, cap - 1),
    )


def is_priority(path: bytes) -> bool:
    """Routes served in the reserved headroom: what orchestrators and operators need to see and steer
    an overloaded server (health and readiness probes, model readiness, metrics, repository admin)."""
    return path.startswith((b"/v2/health/", b"/metrics", b"/v2/repository/")) or path.endswith(b"/ready")


def error_response(status: int, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 ``{"error"}`` response that closes the connection."""
    body = orjson.dumps({"error": message})
    head = [STATUS_LINE[status]]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body))
    if status == 503:
        head.append(b"retry-after: 1\r\n")
    return b"".join([*head, b"\r\n", body])


async def over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app an ordinary request gets above the soft limit (uvicorn reads no body for it)."""
    body = orjson.dumps({"error": "The server is at its connection limit; retry shortly or elsewhere."})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ConnectionPool:
    """Per process: the sweep over the connections, eviction of the one waiting longest, what was refused.

    A connection waiting for headers carries ``wait_since`` (else None): setting one attribute is all the
    bookkeeping a request pays. The sweep, every quarter of the header timeout (at most every second),
    looks at every connection (about a millisecond for 10,000); eviction takes the oldest from a list
    sorted when it is needed and dropped at each sweep."""

    def __init__(self, limits: ConnectionLimits, metrics: ConnectionMetrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics  # None in a pool without a metrics registry (some tests)
        self.interval = min(1.0, limits.header_timeout_s / 4)
        # Loop time of the last sweep: the stamp of every wait that begins before the next one (so a wait
        # stamped `since` began in [since, since + interval]).
        self.now = 0.0
        self.connections: set[Any] = set()  # uvicorn's, of this process
        self.candidates: list[tuple[float, int, LimitedHttpToolsProtocol]] = []  # oldest last
        self.serial = 0  # connections made so far
        self.counts: dict[str, int] = {}
        self._logged = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def note(self, reason: str) -> None:
        """Count a refusal (one of server.metrics.CONNECTION_REFUSALS) for the metric and the log summary."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.refused(reason)

    def _log_counts(self) -> None:
        now = time.monotonic()
        if now - self._logged < LOG_EVERY_S:
            return
        if self.counts:
            summary = ", ".join(f"{n} {REASON_TEXT[reason]}" for reason, n in sorted(self.counts.items()))
            log.warning("connection limits in the last %.0fs: %s", now - self._logged, summary)
        self.counts, self._logged = {}, now

    def ensure_sweeping(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        if self._loop is not loop:  # first connection (or a new event loop, as in tests)
            self._loop, self.connections, self.now = loop, connections, loop.time()
            loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop or loop.is_closed():
            return
        self.now = now = loop.time()
        self.candidates = []
        deadline = now - self.limits.header_timeout_s - self.interval  # never early, at most 2 sweeps late
        for protocol in list(self.connections):
            since = getattr(protocol, "wait_since", None)
            if since is None or since > deadline:
                continue
            if protocol.idle_kept_alive():
                # uvicorn's keep-alive timer owns a silent kept-alive connection (it may be set longer than
                # the header timeout, e.g. behind a load balancer); look again one timeout later.
                protocol.wait_since = now
                continue
            protocol.header_timeout()
        self._log_counts()
        loop.call_later(self.interval, self._sweep, loop)

    def evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its headers; False if none is waiting."""
        if not self.candidates:
            # Stamps are as coarse as the sweep: among equal ones the older connection goes first.
            waiting = [
                (p.wait_since, p.serial, p)
                for p in self.connections
                if getattr(p, "wait_since", None) is not None
            ]
            self.candidates = sorted(waiting, reverse=True)
        while self.candidates:
            since, _, protocol = self.candidates.pop()
            if protocol.wait_since == since:  # else busy since, or waiting again with a newer stamp
                protocol.evict()
                return True
        return False


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline, header limits and connection cap."""

    pool: ClassVar[ConnectionPool]  # set by protocol_class: one per process
    # The pool's limits again, one attribute lookup away on the hot path.
    max_line: ClassVar[int]
    max_headers: ClassVar[int]
    max_header_bytes: ClassVar[int]
    soft_limit: ClassVar[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served_app = self.app
        self.wait_since: float | None = None  # pool time this connection began to wait for headers
        self.serial = 0  # its place in the order of connections (set when made)
        self.partial = False  # bytes of a request arrived, its headers are not complete
        self.kept_alive = False  # a response was sent and the connection stayed open
        self.in_headers = True  # the parser is before the end of a request's headers
        self.completed_in_chunk = False
        self.header_bytes = 0  # bytes read while waiting for this request's headers
        self.header_content = 0  # bytes of the request's header names and values
        self.refusal: tuple[int, str] | None = None
        self.lingering = False
        self.linger_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- connections
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        pool = self.pool
        if pool.metrics is not None:
            pool.metrics.opened()  # closed() in connection_lost, which asyncio calls once for each
        pool.ensure_sweeping(self.loop, self.connections)
        pool.serial = self.serial = pool.serial + 1
        if len(self.connections) > self.soft_limit and pool.evict_oldest():
            pool.note("evicted")
        if len(self.connections) > pool.limits.max_connections:
            pool.note("over_cap")
            self.refuse(503, "The server is at its connection limit; retry shortly or elsewhere.")
            return
        self.wait_since = pool.now

    def connection_lost(self, exc: Exception | None) -> None:
        self.wait_since = None
        if self.pool.metrics is not None:
            self.pool.metrics.closed()
        # uvicorn cancels the keep-alive timer only for a clean close; its handle would keep this
        # connection's objects alive for up to keep_alive_timeout_s after the client went.
        self._unset_keepalive_if_required()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its whole request still gets the answer, then the connection
        # closes. With the body incomplete the rest can never come: closed, as uvicorn does, so that the
        # application sees the disconnect at once (a client that closed mid-body sends this EOF too).
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete and not self.lingering:
            cycle.keep_alive = False
            return True
        return None  # nothing to answer: asyncio closes the transport

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the rest of a refused request: dropped
        self._unset_keepalive_if_required()
        self.completed_in_chunk = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.refusal is not None:
                self.refuse(*self.refusal)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.in_headers:
            # Headers still incomplete after this read: bound what is held while they come in. The exact
            # limit (URL, names and values) is checked once they are complete; raw bytes also hold
            # separators, hence twice the limit here. A chunk in which a request ended and the next
            # began is not counted (the new request's share of it is unknown; at most one read).
            self.header_bytes = 0 if self.completed_in_chunk else self.header_bytes + len(data)
            if self.header_bytes > 2 * self.max_header_bytes:
                self.pool.note("headers_too_large")
                self.refuse(431, f"The request headers exceed {self.max_header_bytes} bytes.")

    def send_400_response(self, msg: str) -> None:
        self.transport.write(error_response(400, msg, self.server_state.default_headers))
        self.transport.close()

    # ---------------------------------------------------------------- parser callbacks
    # Overrides call uvicorn's method as HttpToolsProtocol.x(self): a little cheaper than super().x().
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.partial, self.header_content = True, 0
        # On a kept-alive connection the deadline runs from the request's first byte (not while a
        # pipelined request is still being answered: such a connection is busy, not waiting).
        if self.kept_alive and self.wait_since is not None:
            self.wait_since = self.pool.now

    # on_url, on_header and on_message_complete do uvicorn's work themselves (a few lines each) instead of
    # calling it: one Python call less per header line and per request, on the hot path.
    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_line:
            self.pool.note("request_line_too_long")
            self.refusal = (414, f"The request line exceeds {self.max_line} bytes.")
            raise ValueError(self.refusal[1])  # stops the parser; data_received answers

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        size = len(name) + len(value)
        if len(headers) >= self.max_headers or size > self.max_line:
            self.refuse_headers(size)
        self.header_content += size
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        if len(self.url) + self.header_content > self.max_header_bytes:
            self.pool.note("headers_too_large")
            self.refusal = (431, f"The request headers exceed {self.max_header_bytes} bytes.")
            raise ValueError(self.refusal[1])
        self.wait_since = None
        self.partial = self.in_headers = False
        self.header_bytes = 0
        if len(self.connections) > self.soft_limit and not is_priority(httptools.parse_url(self.url).path):
            self.pool.note("over_soft_limit")
            self.app = over_capacity  # read once by the call below
        try:
            HttpToolsProtocol.on_headers_complete(self)
        finally:
            self.app = self.served_app

    def on_message_complete(self) -> None:
        self.in_headers = self.completed_in_chunk = True
        if not ((self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete):
            self.cycle.more_body = False
            self.cycle.message_event.set()
        if self.cycle.response_complete and not self.transport.is_closing():
            self.wait_since = self.pool.now  # answered before its body ended (rare)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        # Waiting for the next request unless a pipelined one is running or the connection is closing.
        if self.cycle.response_complete and not self.transport.is_closing():
            self.kept_alive = True
            self.wait_since = self.pool.now

    # ---------------------------------------------------------------- refusals
    def refuse_headers(self, size: int) -> None:
        if len(self.headers) >= self.max_headers:
            self.pool.note("too_many_headers")
            self.refusal = (431, f"The request has more than {self.max_headers} headers.")
        else:
            self.pool.note("header_line_too_long")
            self.refusal = (431, f"A request header line exceeds {self.max_line} bytes.")
        raise ValueError(self.refusal[1])  # stops the parser; data_received answers

    def idle_kept_alive(self) -> bool:
        """Silent since its last response (not a byte of a next request)."""
        return self.kept_alive and not self.partial and self.header_bytes == 0

    def header_timeout(self) -> None:
        """Called by the sweep: the headers did not arrive in time."""
        self.wait_since = None
        if self.transport.is_closing():
            return
        if self.partial:
            self.pool.note("header_timeout")
            message = f"The request headers did not arrive within {self.pool.limits.header_timeout_s:.3g} s."
            self.transport.write(error_response(408, message, self.server_state.default_headers))
        # All that the client sent has been read, so closing now is a clean close (no reset to fear).
        self.transport.close()

    def evict(self) -> None:
        """Called at the soft limit: this connection waited longest for headers; its descriptor goes."""
        self.wait_since = None
        self.connections.discard(self)  # counted free at once: the socket closes on the next loop turn
        if self.transport.is_closing():
            return
        if self.partial:
            message = "The server is at its connection limit and closed this slow connection."
            self.transport.write(error_response(503, message, self.server_state.default_headers))
        self.transport.close()

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` now, stop reading requests, drop what still comes for a while, then close."""
        self.wait_since = None
        self.lingering = True
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request went wrong while an earlier one is still being answered: that answer
            # (and any queued before this one) goes out first, then the connection closes.
            self.cycle.keep_alive = False
            return
        self.transport.write(error_response(status, message, self.server_state.default_headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.linger_timer = self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class(
    limits: ConnectionLimits, metrics: ConnectionMetrics | None = None
) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``uvicorn.Config(http=...)``), with its own per-process pool;
    `metrics` (the app's ``Metrics.connections``) counts refusals and open connections."""
    attributes = {
        "pool": ConnectionPool(limits, metrics),
        "max_line": limits.max_header_line_bytes,
        "max_headers": limits.max_headers,
        "max_header_bytes": limits.max_header_bytes,
        "soft_limit": limits.soft_limit,
    }
    return type("BoundHttpToolsProtocol", (LimitedHttpToolsProtocol,), attributes)
