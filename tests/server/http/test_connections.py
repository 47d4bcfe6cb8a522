"""server.http.connections in-process: the cap rule, the priority routes, and the protocol under uvicorn
with a trivial app and small limits (the real server under load: tests/reliability/test_connections.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn

from server.http.connections import (
    ConnectionLimits,
    ConnectionPool,
    connection_cap,
    error_response,
    grpc_connection_cap,
    is_priority,
    limits_from_settings,
    protocol_class,
)
from server.metrics import CONNECTION_REFUSALS, Metrics
from server.settings import Settings
from testing.server_process import free_port, wait_for
from tests.reliability.rawhttp import parse_response

LIMITS = ConnectionLimits(
    header_timeout_s=0.4, max_header_line_bytes=1024, max_header_bytes=4096, max_headers=10,
    max_connections=8, reserved_connections=2,
)  # fmt: skip


def test_the_cap_leaves_an_eighth_of_the_open_file_limit() -> None:
    assert connection_cap(1024) == 896
    assert connection_cap(256) == 192  # at least 64 kept
    assert connection_cap(65536) == 16384  # at most MAX_AUTO_CONNECTIONS
    assert connection_cap(20) == 1


def test_grpc_takes_a_quarter_of_the_budget_from_http() -> None:
    assert (grpc_connection_cap(1024), connection_cap(1024, grpc=True)) == (224, 672)
    assert (grpc_connection_cap(256), connection_cap(256, grpc=True)) == (48, 144)
    for limit in (256, 1024, 4096):  # together within the budget
        assert grpc_connection_cap(limit) + connection_cap(limit, grpc=True) == connection_cap(limit)
    assert grpc_connection_cap(20) == 8


def test_limits_from_settings() -> None:
    limits = limits_from_settings(Settings(max_connections=10, reserved_connections=32, header_timeout_s=3))
    assert limits.max_connections == 10 and limits.reserved_connections == 9 and limits.soft_limit == 1
    assert limits.header_timeout_s == 3
    auto = limits_from_settings(Settings())
    assert auto.max_connections >= 1 and auto.soft_limit == auto.max_connections - 32
    with pytest.raises(ValueError, match="header_timeout_s"):
        Settings(header_timeout_s=0)


def test_priority_routes() -> None:
    for path in [b"/v2/health/ready", b"/v2/health/live", b"/metrics", b"/v2/models/iris/ready",
                 b"/v2/models/iris/versions/2/ready", b"/v2/repository/index"]:  # fmt: skip
        assert is_priority(path), path
    for path in [b"/v2/models/iris/infer", b"/v1/models/iris:predict", b"/v2", b"/v2/models/ready/infer"]:
        assert not is_priority(path), path


def test_error_response_is_json_and_closes() -> None:
    r = parse_response(error_response(431, "Too large.", [(b"server", b"x")]))
    assert r.status == 431 and r.headers["connection"] == "close" and r.headers["server"] == "x"
    assert orjson.loads(r.body) == {"error": "Too large."}
    assert int(r.headers["content-length"]) == len(r.body)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers with its length (the path says how long to take first)."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = orjson.dumps({"path": scope["path"], "body": size})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


POOLS: dict[int, ConnectionPool] = {}  # port -> the pool of the server listening there
METRICS: dict[int, Metrics] = {}  # port -> the metrics that server's pool counts in


@contextlib.contextmanager
def serving(limits: ConnectionLimits) -> Iterator[int]:
    port = free_port()
    METRICS[port] = metrics = Metrics()
    cls = protocol_class(limits, metrics.connections)
    POOLS[port] = cls.pool
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=cls, lifespan="off",
                            log_level="warning", timeout_keep_alive=5)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture
def port() -> Iterator[int]:
    with serving(LIMITS) as port:
        yield port


@pytest.fixture
def cap_port() -> Iterator[int]:
    """The same limits with a header timeout long enough not to interfere (on a slow, shared machine)."""
    with serving(dataclasses.replace(LIMITS, header_timeout_s=30)) as port:
        yield port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def get(path: bytes, extra: bytes = b"", close: bool = True) -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: x\r\n"
        + extra
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


def refusals(port: int) -> dict[str, float]:
    """ensemble_connections_refused_total of the server on `port`, by reason (every reason: 0 or more)."""
    registry = METRICS[port].registry
    return {
        r: registry.get_sample_value("ensemble_connections_refused_total", {"reason": r})
        for r in CONNECTION_REFUSALS
    }


def open_connections(port: int) -> float | None:
    return METRICS[port].registry.get_sample_value("ensemble_open_connections")


def test_size_limits(port: int) -> None:
    cases = [
        (get(b"/" + b"a" * 2000), 414),
        (get(b"/", b"X-Long: " + b"a" * 1100 + b"\r\n"), 431),
        (get(b"/", b"X-A: 1\r\n" * 11), 431),
        (
            get(b"/", b"X-A: " + b"a" * 900 + b"\r\n" * 1 + (b"X-B: " + b"b" * 900 + b"\r\n") * 5),
            431,
        ),  # 4.6 KB
    ]
    for request, status in cases:
        with connect(port) as s:
            s.sendall(request)
            r = parse_response(read_all(s))
        assert r.status == status and r.headers["connection"] == "close" and "error" in orjson.loads(r.body)
    with connect(port) as s:  # at the limits: served
        s.sendall(get(b"/", b"X-A: 1\r\n" * 8))
        assert parse_response(read_all(s)).status == 200
    counts = {r: n for r, n in refusals(port).items() if n}
    assert counts == {"request_line_too_long": 1, "header_line_too_long": 1, "too_many_headers": 1,
                      "headers_too_large": 1}  # fmt: skip


def test_pipelined_body_is_not_counted_as_headers(port: int) -> None:
    body = b"x" * 300_000  # several reads; the next request's headers start inside one of them
    post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with connect(port) as s:
        s.sendall(post + get(b"/b"))
        data = read_all(s)
    assert data.count(b"HTTP/1.1 200") == 2 and b'"body":300000' in data and b'"path":"/b"' in data


def test_header_deadline(port: int) -> None:
    with connect(port) as silent, connect(port) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        t = time.monotonic()
        assert read_all(silent) == b""  # nothing was asked: closed without an answer
        r = parse_response(read_all(slow))
        took = time.monotonic() - t
    assert r.status == 408 and r.headers["connection"] == "close"
    assert 0.3 < took < 1.5
    assert refusals(port)["header_timeout"] == 1  # the slow one; the silent one asked nothing
    # A kept-alive connection: its deadline runs from the next request's first byte, not from its answer.
    with connect(port) as s:
        s.sendall(get(b"/", close=False))
        time.sleep(0.6)  # longer than the header timeout, shorter than the keep-alive timeout
        s.sendall(get(b"/again"))
        data = read_all(s)
    assert data.count(b"HTTP/1.1 200") == 2


def test_cap_evicts_the_oldest_waiting_then_refuses(cap_port: int) -> None:
    port = cap_port
    waiting = [connect(port) for _ in range(6)]  # the soft limit: 8 - 2
    for s in waiting:
        s.sendall(b"GET / HTTP/1.1\r\n")  # slow headers
    time.sleep(0.1)
    with connect(port) as s:  # the 7th: the oldest waiting one is closed for it
        s.sendall(get(b"/v2/models/m/infer"))
        assert parse_response(read_all(s)).status == 200
    evicted = parse_response(read_all(waiting[0]))
    assert evicted.status == 503
    for s in waiting:
        s.close()
    # Busy connections (bodies still coming) cannot be evicted: above the soft limit only probes pass.
    busy = [connect(port) for _ in range(6)]
    for s in busy:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1")
    time.sleep(0.1)
    try:
        with connect(port) as s:
            s.sendall(get(b"/v2/health/ready"))
            assert parse_response(read_all(s)).status == 200
        with connect(port) as s:
            s.sendall(get(b"/v2/models/m/infer"))
            refused = parse_response(read_all(s))
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        for _ in range(2):  # two more busy ones fit in the reserved room, as probes (admin) only
            s = connect(port)
            busy.append(s)
            s.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1")
        time.sleep(0.1)
        with connect(port) as s:  # the 9th: beyond the cap, answered at once, before it sends anything
            r = parse_response(s.recv(65536))
        assert r.status == 503 and r.headers["connection"] == "close"
        counts = refusals(port)
        assert (counts["evicted"], counts["over_soft_limit"], counts["over_cap"]) == (1, 1, 1)
    finally:
        for s in busy:
            s.close()


def test_open_connections_gauge_follows_the_connections(port: int) -> None:
    assert open_connections(port) == 0
    sockets = [connect(port) for _ in range(3)]
    try:
        wait_for(lambda: open_connections(port) == 3, "3 open connections", timeout_s=5)
        with connect(port) as s:  # one more, answered and closed by the server
            s.sendall(get(b"/"))
            assert parse_response(read_all(s)).status == 200
        wait_for(lambda: open_connections(port) == 3, "back to 3 open connections", timeout_s=5)
    finally:
        for s in sockets:
            s.close()
    wait_for(lambda: open_connections(port) == 0, "no open connection", timeout_s=5)


def test_a_reset_kept_alive_connection_is_freed_at_once(port: int) -> None:
    with connect(port) as s:
        s.sendall(get(b"/", close=False))
        s.recv(65536)
        (protocol,) = POOLS[port].connections
        ref = weakref.ref(protocol)
        del protocol
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # Closed with a reset: not kept for the 5 s of its keep-alive timer (uvicorn cancels that only on a
    # clean close).
    deadline = time.monotonic() + 2
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert ref() is None


def test_an_oversized_pipelined_request_does_not_cut_into_an_answer(port: int) -> None:
    body = b"x" * 10
    post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + body
    with connect(port) as s:
        s.sendall(post + b"GET /b HTTP/1.1\r\n" + b"X-A: 1\r\n" * 20)  # the second has too many headers
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 200") and b'"body":10' in data
    assert data.count(b"HTTP/1.1 ") in (1, 2)  # the 431 may follow the 200, never cut into it
