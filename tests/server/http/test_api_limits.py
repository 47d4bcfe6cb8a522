"""Integration on a deliberately heavy model: start-up readiness, queue full (429) and timeout (504)."""

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from testing.repositories import write_version
from testing.server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[int]]]:
    root = tmp_path_factory.mktemp("heavy")
    # ~40 MFLOP per row over 5 members: warm-up takes about a second, 4000 rows well over the timeout.
    write_version(root, "big", 1, n_features=8, hidden=[2048, 2048], members=5, seed=9)
    env = {
        "ENSEMBLE_MEMBER_EXECUTION": "fused",
        "ENSEMBLE_WARMUP_RUNS": "5",
        "ENSEMBLE_MAX_BATCH_SIZE": "256",
        "ENSEMBLE_MAX_QUEUE_SIZE": "300",
        "ENSEMBLE_MAX_REQUEST_ROWS": "8192",
        "ENSEMBLE_REQUEST_TIMEOUT_S": "0.5",
    }
    proc = ServerProcess(root, env, tmp_path_factory.mktemp("log") / "heavy.log")
    try:
        proc.wait_live()
        # Readiness seen from the first moment the server answers: 503 while warming up, then 200.
        seen: list[int] = []
        end = time.monotonic() + 60
        while time.monotonic() < end:
            seen.append(proc.client.get("/v2/health/ready").status_code)
            if seen[-1] == 200:
                break
            time.sleep(0.02)
        yield proc, seen
    finally:
        proc.stop()


def rows_body(n: int) -> dict:
    x = np.random.default_rng(n).standard_normal((n, 8)).round(3)
    return {"inputs": [{"name": "input", "shape": [n, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_ready_turns_true_only_after_warm_up(heavy: tuple[ServerProcess, list[int]]) -> None:
    proc, seen = heavy
    assert seen[0] == 503, seen  # live, but not ready while warming up
    assert seen[-1] == 200
    assert proc.client.get("/v2/health/live").status_code == 200


def test_queue_full_is_429_with_retry_after(heavy: tuple[ServerProcess, list[int]]) -> None:
    proc, _ = heavy
    body = rows_body(256)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v2/models/big/infer", json=body) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert 429 in codes and 200 in codes, codes
    assert set(codes) <= {200, 429, 504}, codes
    full = next(r for r in responses if r.status_code == 429)
    assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]


def test_request_past_its_timeout_is_504(heavy: tuple[ServerProcess, list[int]]) -> None:
    proc, _ = heavy
    time.sleep(1.0)  # let earlier batches finish
    t0 = time.monotonic()
    r = proc.client.post("/v2/models/big/infer", json=rows_body(4000))
    assert r.status_code == 504, r.text
    assert "timed out" in r.json()["error"]
    assert time.monotonic() - t0 >= 0.5
    text = proc.client.get("/metrics").text
    assert 'ensemble_requests_total{model="big",outcome="504",protocol="v2",version="1"}' in text
    assert 'ensemble_requests_total{model="big",outcome="429",protocol="v2",version="1"}' in text
