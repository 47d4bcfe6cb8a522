"""The body limit is enforced while the body streams in (extends tests/server/http/test_api_limits.py and the
413 tests in tests/server/http/test_api.py, which send whole bodies at once): a slow chunked upload past the
limit sees its 413 and ``Connection: close`` before it has sent everything, and a slow chunked upload
under the limit is read whole and answered."""

from __future__ import annotations

import select
import socket
import time

import orjson
import pytest

from testing.server_process import ServerProcess, wait_for
from tests.reliability.conftest import MAX_BODY_BYTES, OPEN_SERVER_TIMEOUT_S
from tests.reliability.rawhttp import parse_response
from tests.reliability.record import record

HEAD = (
    b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n"
)
CHUNK = 16 * 1024


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream_slowly(port: int, pieces: list[bytes], pause_s: float, close: bool = False) -> tuple[bytes, int]:
    """Send HEAD then `pieces` as chunks, `pause_s` apart, stopping as soon as the server answers.
    Returns what the server sent (until it closed, at most 10 s) and how many body bytes went out."""
    sent = 0
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # Without "Connection: close" from us, a close header in the answer is the server's own decision.
        s.sendall(HEAD + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
        for piece in [*pieces, None]:
            if select.select([s], [], [], pause_s)[0]:
                break
            try:
                s.sendall(chunk(piece) if piece is not None else b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece or b"")
        end = time.monotonic() + 10
        try:
            while time.monotonic() < end and (part := s.recv(65536)):
                data += part
        except ConnectionResetError:
            pass
    return data, sent


def test_slow_chunked_upload_past_the_limit_is_cut_off_with_413(server: ServerProcess) -> None:
    # 64 chunks of 16 KiB (1 MiB, five times the 200 kB limit), one every 20 ms.
    pieces = [b" " * CHUNK] * 64
    t0 = time.monotonic()
    data, sent = stream_slowly(server.port, pieces, 0.02)
    elapsed = time.monotonic() - t0
    r = parse_response(data)
    record("body-limit", "slow chunked upload of 1 MiB, limit 200 kB", "413 before the end, close",
           f"{r.status} after {sent} bytes sent, connection: {r.headers.get('connection')}")  # fmt: skip
    assert r.status == 413, data[:300]
    assert r.headers.get("connection") == "close"
    assert orjson.loads(r.body) == {"error": f"The request body is over {MAX_BODY_BYTES} bytes."}
    # The refusal came once the limit was passed, not after the whole megabyte (slack for a slow machine).
    assert MAX_BODY_BYTES <= sent <= MAX_BODY_BYTES + 16 * CHUNK < 64 * CHUNK, sent
    assert elapsed < 10


def test_slow_chunked_upload_under_the_limit_is_answered(server: ServerProcess) -> None:
    body = orjson.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * 10})
    pieces = [body[i : i + 50] for i in range(0, len(body), 50)]
    data, sent = stream_slowly(server.port, pieces, 0.01, close=True)
    r = parse_response(data)
    assert sent == len(body)
    assert r.status == 200, data[:300]
    assert len(orjson.loads(r.body)["predictions"]) == 10
    record("body-limit", "slow chunked upload under the limit", "200", str(r.status))


def test_declared_length_over_the_limit_is_refused_before_any_body(server: ServerProcess) -> None:
    head = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)  # and not one byte of the body
        assert select.select([s], [], [], 5)[0], "no answer without the body"
        data = b""
        while part := s.recv(65536):
            data += part
    r = parse_response(data)
    record("body-limit", f"Content-Length {MAX_BODY_BYTES + 1}, no body sent", "413 at once",
           f"{r.status}, connection: {r.headers.get('connection')}")  # fmt: skip
    assert r.status == 413 and r.headers.get("connection") == "close"
    assert "at most 200000" in orjson.loads(r.body)["error"]


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickling"])
def test_a_body_that_does_not_arrive_in_time_is_408(open_server: ServerProcess, trickle: bool) -> None:
    """Slowloris on the body: 5 of 100 declared bytes then nothing, or one byte every 0.3 s. Before, the
    server waited for ever (and a SIGTERM drain waited for it); now the request timeout covers the body."""
    head = (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    t0 = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=15) as s:
        s.sendall(head + b'{"ins')
        for _ in range(50):  # at most 15 s
            if select.select([s], [], [], 0.3)[0]:
                break
            if trickle:
                s.sendall(b" ")
        while part := s.recv(65536):
            data += part
    elapsed = time.monotonic() - t0
    r = parse_response(data)
    record("body-limit", f"body {'trickling 1 byte/0.3 s' if trickle else 'stalled after 5 of 100 bytes'}, "
           f"request timeout {OPEN_SERVER_TIMEOUT_S:g} s", "408 and close at the timeout",
           f"{r.status} after {elapsed:.1f} s, connection: {r.headers.get('connection')}")  # fmt: skip
    assert r.status == 408, data[:300]
    assert r.headers.get("connection") == "close"
    assert "did not arrive within" in orjson.loads(r.body)["error"]
    assert OPEN_SERVER_TIMEOUT_S - 0.1 <= elapsed < OPEN_SERVER_TIMEOUT_S + 3
    assert open_server.client.get("/v2/health/live").status_code == 200


def _outcome_count(proc: ServerProcess, outcome: str) -> float:
    text = proc.client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ensemble_requests_total{") and f'outcome="{outcome}"' in line
    )


@pytest.mark.parametrize("which", ["server", "open_server"])  # the fast path, and FastAPI's (CORS on)
def test_a_client_that_leaves_mid_body_is_counted_499_not_500(
    which: str, request: pytest.FixtureRequest
) -> None:
    proc: ServerProcess = request.getfixturevalue(which)
    before_499, before_500 = _outcome_count(proc, "499"), _outcome_count(proc, "500")
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"inp'
        )
        time.sleep(0.2)  # let the server start reading the body
    wait_for(lambda: _outcome_count(proc, "499") != before_499, "the 499 to be counted", 5)
    assert _outcome_count(proc, "499") == before_499 + 1
    assert _outcome_count(proc, "500") == before_500
    assert proc.client.post("/v2/models/iris/infer", content=b"{}").status_code == 400  # still serving
