"""SIGTERM under load: readiness drops at once, new work gets 503, accepted work gets its answers, exit 0."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.onnx_repo import numpy_member, write_version
from tests.helpers.server_process import ServerProcess

DRAIN_TIMEOUT_S = 15.0
N_FEATURES = 16


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection refused or closed)
    body: dict | None
    rows: int


def expected(members: list, x: np.ndarray) -> np.ndarray:
    return np.mean([numpy_member(w, x, "classification") for w in members], axis=0)


def wait_until_queued(server: ServerProcess, rows: int, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in server.client.get("/metrics").text.splitlines():
            if line.startswith("ensemble_queue_depth{") and float(line.split()[-1]) >= rows:
                return
    raise AssertionError(f"never saw {rows} rows queued")


@pytest.fixture(scope="module")
def heavy_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    # ~1-2 s for 4096 rows on two cores: requests are surely in flight when the signal comes.
    root = tmp_path_factory.mktemp("heavy")
    members = write_version(root, "heavy", 1, n_features=N_FEATURES, hidden=[1024, 1024], members=5, seed=5)
    return root, members


def test_sigterm_under_load_answers_accepted_requests_then_exits_0(
    heavy_repo: tuple[Path, list], tmp_path: Path
) -> None:
    root, members = heavy_repo
    rng = np.random.default_rng(0)
    small, big = rng.standard_normal((64, N_FEATURES)), rng.standard_normal((4096, N_FEATURES))
    want = {64: expected(members, small), 4096: expected(members, big)}
    env = {
        "ENSEMBLE_WARMUP_RUNS": "0",
        "ENSEMBLE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        "ENSEMBLE_MAX_QUEUE_SIZE": "100000",  # this test is about draining, not about 429
    }
    server = ServerProcess(root, env, tmp_path / "server.log")
    outcomes: list[Outcome] = []
    signalled = threading.Event()

    def send(x: np.ndarray, repeat: bool) -> None:
        body = {"instances": x.astype(np.float32).tolist()}
        end = time.monotonic() + 30
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(2000 if repeat else 1):  # bounded in count and in time
                t0 = time.monotonic()
                try:
                    r = client.post("/v1/models/heavy:predict", json=body)
                    outcomes.append(Outcome(t0, time.monotonic(), r.status_code, r.json(), len(x)))
                except httpx.TransportError:
                    outcomes.append(Outcome(t0, time.monotonic(), None, None, len(x)))
                if time.monotonic() > end or (signalled.is_set() and outcomes[-1].status != 200):
                    break

    try:
        server.wait_live()
        server.wait_loaded()
        assert server.client.get("/v2/health/ready").status_code == 200
        threads = [threading.Thread(target=send, args=(big, False), daemon=True)]
        threads += [threading.Thread(target=send, args=(small, True), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        # Signal once small requests wait behind a running batch (two of them queued: the big one runs).
        wait_until_queued(server, rows=128)
        t_signal = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        signalled.set()

        # While draining: readiness 503 at once, new inference 503 {"error"} with Connection: close.
        with httpx.Client(base_url=server.url, timeout=5) as probe:
            ready = probe.get("/v2/health/ready")
            refused = probe.post("/v1/models/heavy:predict", json={"instances": small[:1].tolist()})
        assert ready.status_code == 503 and ready.json() == {"ready": False, "draining": True}
        assert refused.status_code == 503 and set(refused.json()) == {"error"}
        assert refused.headers["connection"] == "close"

        code = server.proc.wait(DRAIN_TIMEOUT_S + 5)
        exit_s = time.monotonic() - t_signal
        for t in threads:
            t.join(10)
    finally:
        server.stop()

    assert code == 0
    assert exit_s < DRAIN_TIMEOUT_S
    in_flight_at_signal = [o for o in outcomes if o.started < t_signal < o.ended]
    assert len(in_flight_at_signal) >= 2
    for o in outcomes:
        if o.status == 200:  # a correct answer, computed for this very request
            assert o.body is not None
            np.testing.assert_allclose(o.body["probabilities"], want[o.rows], atol=1e-4)
        elif o.status == 503:  # refused, and only because of the signal
            assert o.ended > t_signal and o.body is not None and set(o.body) == {"error"}
        else:  # no answer at all is allowed only for requests sent after the signal
            assert o.status is None and o.started > t_signal, o
    assert all(o.status == 200 for o in in_flight_at_signal if o.started < t_signal - 0.05)
    log = (tmp_path / "server.log").read_text()
    assert "SIGTERM: draining" in log and "drained: every accepted request has its answer" in log
