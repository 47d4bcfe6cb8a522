"""The connection level (server.http.connections), against real server processes on 127.0.0.1: slow and
oversized clients cannot lock others out, exhaust descriptors or grow memory; idle keep-alive connections
close; odd but legal socket behaviour (half-close, reset, pipelining) is answered or closed cleanly."""

from __future__ import annotations

import contextlib
import resource
import select
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from testing.repositories import Repository
from testing.requests import v2_body
from testing.server_process import ServerProcess, started_server, wait_for
from tests.reliability.rawhttp import parse_response
from tests.reliability.record import record

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

IMAGE_OPEN_FILES = 1024  # the open-file limit in the image test (and many distributions' default)
HEADER_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1.0
ROW = [[5.1, 3.5, 1.4, 0.2]]
READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """Children started inside inherit a soft RLIMIT_NOFILE of `soft`; this process gets its own back."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def raise_own_limit(needed: int) -> None:
    """This process opens thousands of client sockets: raise its soft limit, or skip when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs an open-file hard limit of {needed} for the client sockets, have {hard}")
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def fds(proc: ServerProcess) -> int:
    return len(list(Path(f"/proc/{proc.proc.pid}/fd").iterdir()))


def rss_kib(proc: ServerProcess) -> int:
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def serve(repo: Repository, tmp: Path, env: dict[str, str], open_files: int | None = None) -> ServerProcess:
    """A server of the good model only (so that it is ready), short header and idle timeouts."""
    root = tmp / "repo"
    shutil.copytree(repo.root / "iris", root / "iris")
    env = {
        "ENSEMBLE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ENSEMBLE_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0",
        **env,
    }
    with open_file_limit(open_files) if open_files else contextlib.nullcontext():
        return started_server(root, {"ENSEMBLE_WARMUP_RUNS": "1", **env}, tmp / "server.log")


@pytest.fixture(scope="module")
def limited(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The image's open-file limit, the automatic connection cap (672; gRPC takes 224), short header and
    idle timeouts."""
    proc = serve(repo, tmp_path_factory.mktemp("limited"), {}, open_files=IMAGE_OPEN_FILES)
    yield proc
    proc.stop()


def assert_ready_and_correct(proc: ServerProcess, repo: Repository) -> float:
    """A fresh client: readiness within 1 s, and an exact V2 answer. Returns the readiness latency."""
    with httpx.Client(base_url=proc.url, timeout=5) as fresh:
        t = time.monotonic()
        ready = fresh.get("/v2/health/ready", timeout=1)
        assert ready.status_code == 200, ready.text
        latency = time.monotonic() - t
        r = fresh.post("/v2/models/iris/infer", json=v2_body(ROW))
    assert r.status_code == 200, r.text
    got = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")["data"]
    np.testing.assert_allclose(got, repo.expected(np.array(ROW)).ravel(), rtol=1e-5, atol=1e-6)
    return latency


def read_until_closed(s: socket.socket, timeout_s: float = 10) -> bytes:
    s.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return data


# ---------------------------------------------------------------- slow headers
class SlowHeaderClient(threading.Thread):
    """Holds `n` connections, each with a partial request that gains one header line every 0.5 s; every
    connection the server closes is replaced at once (at most `max_opens` in all), until stopped."""

    def __init__(self, port: int, n: int, max_opens: int) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.max_opens = port, n, max_opens
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.peak = 0
        self.error: BaseException | None = None

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(READY)
        s.setblocking(False)
        self.opened += 1
        return s

    def run(self) -> None:
        socks: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                while len(socks) < self.n and self.opened < self.max_opens and not self.stop.is_set():
                    socks.append(self._open())
                self.peak = max(self.peak, len(socks))
                alive = []
                for s in socks:
                    try:
                        if s.recv(65536) == b"":
                            raise ConnectionResetError  # closed (after its 408 or 503, if any)
                    except BlockingIOError:  # nothing from the server: still held open
                        try:
                            s.send(b"X-Slow: 1\r\n")
                            alive.append(s)
                            continue
                        except OSError:
                            pass
                    except OSError:
                        pass
                    self.closed_by_server += 1
                    s.close()
                socks = alive
                self.stop.wait(0.5)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            for s in socks:
                s.close()


@pytest.mark.slow
def test_slow_headers_under_the_image_open_file_limit(limited: ServerProcess, repo: Repository) -> None:
    raise_own_limit(4096)
    before = fds(limited)
    slow = SlowHeaderClient(limited.port, n=1100, max_opens=10_000)
    slow.start()
    latencies, peak_fds, checks = [], 0, 0
    end = time.monotonic() + 3 * HEADER_TIMEOUT_S + 1
    try:
        wait_for(lambda: slow.peak >= 1100 or slow.error is not None, "1,100 slow connections", 20)
        while time.monotonic() < end:
            latencies.append(assert_ready_and_correct(limited, repo))
            peak_fds = max(peak_fds, fds(limited))
            checks += 1
            time.sleep(0.1)
    finally:
        slow.stop.set()
        slow.join(10)
    assert slow.error is None, slow.error
    # The server closed connections of its own accord (header timeout and eviction at the soft limit).
    assert slow.closed_by_server >= 1100, slow.closed_by_server
    assert peak_fds < IMAGE_OPEN_FILES
    wait_for(lambda: fds(limited) <= before + 2, "descriptors released", 10)
    after = fds(limited)
    record("connections", f"{slow.opened} slow-header connections (1,100 at a time), open-file limit 1024",
           "fresh clients ready < 1 s and answered; descriptors released",
           f"{checks} fresh checks, readiness max {max(latencies) * 1000:.0f} ms, V2 exact; server "
           f"closed {slow.closed_by_server}; server fds {before} before, peak {peak_fds}, "
           f"{after} after")  # fmt: skip


# ---------------------------------------------------------------- oversized headers
def stream_until_answered(port: int, head: bytes, piece: bytes, total: int) -> tuple[int, bytes]:
    """Send `head`, then `piece` after `piece` up to `total` bytes, each time giving the server 20 ms to
    answer, and stop as soon as it does. Returns the bytes that went out and what the server sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        while sent < total and not select.select([s], [], [], 0.02)[0]:
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        return sent, read_until_closed(s)


@pytest.mark.parametrize(
    ("case", "head", "piece", "total", "status"),
    [
        ("one 500 MB header line", READY + b"X-Big: ", b"a" * 8192, 500 * 1024 * 1024, 431),
        ("100,000 header lines", READY, b"X-Many: 1\r\n" * 745, 100_000 * 11, 431),
        ("a 1 MB request line", b"GET /v2/health/ready?", b"a" * 8192, 1024 * 1024, 414),
    ],
)
def test_oversized_headers_are_refused_early(
    limited: ServerProcess, case: str, head: bytes, piece: bytes, total: int, status: int
) -> None:
    rss_before = rss_kib(limited)
    sent, answer = stream_until_answered(limited.port, head, piece, total)
    r = parse_response(answer)
    assert r.status == status and r.headers["connection"] == "close" and b'"error"' in r.body
    assert sent < 256 * 1024  # refused while still coming in: a limit of 32 KB and a read or two more
    rss_after = rss_kib(limited)
    assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    assert limited.client.get("/v2/health/ready").status_code == 200
    record("connections", case, f"{status} early, close; RSS within a few MB",
           f"{r.status} after {sent // 1024} KiB sent (of {total / 1e6:.1f} MB), "
           f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB")  # fmt: skip


# ---------------------------------------------------------------- odd but legal sockets
def test_half_closed_socket_gets_its_answer(limited: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        s.sendall(READY + b"\r\n")
        s.shutdown(socket.SHUT_WR)  # "nothing more from me"; the answer may still come back
        r = parse_response(read_until_closed(s))
    assert r.status == 200
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        s.sendall(READY)  # half a request, then half-closed: nothing to answer
        s.shutdown(socket.SHUT_WR)
        assert read_until_closed(s) == b""
    assert limited.client.get("/v2/health/ready").status_code == 200
    record("connections", "half-closed after a request; half-closed mid-headers", "answered; closed",
           "200 then close; closed, nothing sent")  # fmt: skip


def test_reset_mid_body_leaves_nothing_behind(limited: ServerProcess, repo: Repository) -> None:
    before = fds(limited)
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", limited.port), timeout=10)
        s.sendall(b'POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"inp')
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # SO_LINGER 0: the kernel sends a reset
    wait_for(lambda: fds(limited) <= before + 2, "descriptors released", 10)
    assert_ready_and_correct(limited, repo)
    record("connections", "50 connections reset mid-body", "no leak, ready",
           f"server fds {before} before, {fds(limited)} after; ready, V2 exact")  # fmt: skip


def test_pipelined_requests_are_answered_in_order(limited: ServerProcess) -> None:
    paths = [b"/v2/health/live", b"/v2/models/iris", b"/v2/health/ready"]
    burst = b"".join(b"GET " + p + b" HTTP/1.1\r\nHost: x\r\n\r\n" for p in paths)
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        s.sendall(burst + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 4
    assert b'"live":true' in answers[0] and b'"name":"iris"' in answers[1] and b'"ready":true' in answers[2]
    record("connections", "4 pipelined requests in one write", "4 answers in order", "4 x 200, in order")


# ---------------------------------------------------------------- the connection cap
@pytest.fixture(scope="module")
def capped(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A cap of 24 connections, the top 8 kept for probes, metrics and admin."""
    env = {"ENSEMBLE_MAX_CONNECTIONS": "24", "ENSEMBLE_RESERVED_CONNECTIONS": "8",
           "ENSEMBLE_REQUEST_TIMEOUT_S": "20"}  # fmt: skip
    proc = serve(repo, tmp_path_factory.mktemp("capped"), env)
    yield proc
    proc.stop()


def busy(port: int, n: int) -> list[socket.socket]:
    """`n` connections each in the middle of an inference request (its body stalls): not evictable."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        socks.append(s)
    time.sleep(0.3)  # their headers are parsed and their requests started
    return socks


def test_connection_cap_keeps_room_for_probes(capped: ServerProcess) -> None:
    time.sleep(KEEP_ALIVE_S + 0.5)  # the fixture client's kept-alive connection is gone
    socks = busy(capped.port, 16)  # the soft limit: 24 - 8
    try:
        with httpx.Client(base_url=capped.url, timeout=5) as fresh:
            refused = fresh.post("/v2/models/iris/infer", json=v2_body(ROW))
            ready = fresh.get("/v2/health/ready")
            metrics = fresh.get("/metrics")
        assert refused.status_code == 503 and "connection limit" in refused.json()["error"]
        assert refused.headers["connection"] == "close"
        assert ready.status_code == 200 and metrics.status_code == 200
        # A slow-header connection at the soft limit is evicted for a newcomer (the oldest one waiting).
        with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as slow:
            slow.sendall(READY)
            time.sleep(0.1)
            assert capped.client.get("/v2/health/live").status_code == 200
            evicted = parse_response(read_until_closed(slow))
        assert evicted.status == 503
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: capped.client.post("/v2/models/iris/infer", json=v2_body(ROW)).status_code == 200,
             "inference served again once the busy connections went", 10)  # fmt: skip
    record("connections", "16 busy connections (cap 24, 8 reserved), then fresh clients",
           "inference 503 + close; readiness and /metrics 200; slow-header connection evicted",
           f"inference {refused.status_code}, readiness {ready.status_code}, /metrics {metrics.status_code}; "
           f"evicted slow connection got {evicted.status}; served again after")  # fmt: skip


def test_beyond_the_cap_a_fast_503_not_a_reset(capped: ServerProcess) -> None:
    time.sleep(KEEP_ALIVE_S + 0.5)  # the fixture client's kept-alive connection is gone
    socks = busy(capped.port, 16)
    # 8 more that are not evictable either: refused (414), their clients silent, the server lingering
    # for 2 s to read what they might still send.
    extra = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
        s.sendall(b"GET /" + b"a" * 20_000)
        extra.append(s)
    try:
        time.sleep(0.2)
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as s:
            s.sendall(READY + b"\r\n")
            r = parse_response(read_until_closed(s))
        took = time.monotonic() - t
    finally:
        for s in socks + extra:
            s.close()
    assert r.status == 503 and r.headers["connection"] == "close" and b"connection limit" in r.body
    assert took < 1
    wait_for(lambda: capped.client.get("/v2/health/ready").status_code == 200, "ready again", 10)
    record("connections", "a new connection with 24 of 24 taken (none evictable)",
           "503 at once, close, no reset",
           f"{r.status} in {took * 1000:.0f} ms, connection: close")  # fmt: skip


# ---------------------------------------------------------------- idle keep-alive
@pytest.fixture(scope="module")
def wide(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An open-file limit of 8192 (cap 7168), so that thousands of connections fit."""
    raise_own_limit(8192)
    proc = serve(repo, tmp_path_factory.mktemp("wide"), {}, open_files=8192)
    yield proc
    proc.stop()


def keep_alive_round(proc: ServerProcess, n: int) -> tuple[float, int, int]:
    """Open `n` connections, one request on each, leave them idle; wait until the server closed them all.
    Returns how long that took after the last answer, how many answers were 200, and the server's RSS
    (KiB) once all were answered (the connections still open)."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        for _ in range(n):  # each request at once: a connection silent for 2 s meets the header timeout
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            socks.append(s)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
        ok, answered_at, open_, peak_rss = 0, time.monotonic(), n, 0
        deadline = time.monotonic() + 30
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(1):
                try:
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    if not key.data:
                        ok += chunk.startswith(b"HTTP/1.1 200")
                        answered_at = time.monotonic()
                        if ok == n:
                            peak_rss = rss_kib(proc)
                    key.data.extend(chunk)
                else:
                    sel.unregister(key.fileobj)
                    open_ -= 1
        assert open_ == 0, f"{open_} idle connections still open"
        return time.monotonic() - answered_at, ok, peak_rss
    finally:
        for s in socks:
            s.close()
        sel.close()


@pytest.mark.slow
def test_idle_keep_alive_connections_close(wide: ServerProcess) -> None:
    n = 3000
    before_fds = fds(wide)
    # The first rounds settle the server's memory (once by up to 14 MiB in one run: the allocator keeps part
    # of a peak; seen settling over the first three rounds, by 4 MiB in the third). A leak would show as
    # growth round after round: two rounds of 3,000 connections with 1 KiB lost on each would add 6 MiB.
    for _ in range(3):
        keep_alive_round(wide, n)
    rss = [rss_kib(wide)]
    for _ in range(2):
        closed_after, ok, peak_rss = keep_alive_round(wide, n)
        assert ok == n
        assert closed_after < KEEP_ALIVE_S + 2
        wait_for(lambda: fds(wide) <= before_fds + 2, "descriptors released", 10)
        rss.append(rss_kib(wide))
    assert max(rss) - rss[0] < 4 * 1024, rss
    assert wide.client.get("/v2/health/ready").status_code == 200
    mib = " -> ".join(f"{r / 1024:.1f}" for r in rss)
    record("connections", f"{n} idle keep-alive connections, timeout {KEEP_ALIVE_S:g} s, 2+2 rounds",
           "all closed after the timeout; memory and descriptors return",
           f"{ok} answered, all closed {closed_after:.1f} s after the last answer; server fds "
           f"{before_fds} -> {fds(wide)}; RSS {peak_rss / 1024:.1f} MiB with all open, "
           f"after each round {mib} MiB")  # fmt: skip


# ---------------------------------------------------------------- gRPC's share of the descriptors
GRPC_OPEN_FILES = 256
GRPC_IDLE_CONNECTS = 300


@pytest.mark.slow
def test_idle_grpc_connections_cannot_exhaust_descriptors(repo: Repository, tmp_path: Path) -> None:
    """300 idle TCP connects to the gRPC port of a server under ``ulimit -n 256``: gRPC's cap (its share
    of the per-process budget) closes those beyond it, so HTTP readiness stays 200; the handshake timeout
    closes the idle ones, so gRPC serves again."""
    from server.grpc.generated import grpc_service_pb2 as pb
    from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc

    raise_own_limit(GRPC_IDLE_CONNECTS + 256)
    proc = serve(repo, tmp_path, {}, open_files=GRPC_OPEN_FILES)
    socks: list[socket.socket] = []
    try:
        for _ in range(GRPC_IDLE_CONNECTS):
            try:
                socks.append(socket.create_connection(("127.0.0.1", proc.grpc_port), timeout=2))
            except OSError:  # refused or timed out at the backlog: the server stays what is asserted
                break
        time.sleep(1.0)  # let the server accept (and close) what it will
        assert fds(proc) < GRPC_OPEN_FILES - 8, fds(proc)
        assert_ready_and_correct(proc, repo)

        def grpc_ready() -> bool:  # a new channel each time: a refused one stays in backoff
            with grpc.insecure_channel(proc.grpc_target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with contextlib.suppress(grpc.RpcError):
                    return stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
            return False

        # The idle connects never start HTTP/2: closed at the handshake timeout (the header timeout, 2 s),
        # after which gRPC serves again though the client still holds its sockets.
        wait_for(grpc_ready, "gRPC serving again", timeout_s=5 * HEADER_TIMEOUT_S)
        record("connections", "grpc-300-idle-connects", "HTTP ready 200", f"{fds(proc)} descriptors, ready")
    finally:
        for s in socks:
            s.close()
        proc.stop()
