"""Bounded load on 127.0.0.1: 64 concurrent clients, each sending its own rows and checking the exact answer
against numpy from the helper's weights, so a lost or mixed-up response cannot pass.

``ENSEMBLE_RELIABILITY_LOAD_S`` sets the duration of the main run (default 10 s in CI; 30 s is the full
run recorded in docs/reliability.md). With a deliberately tiny queue the only other answers allowed are
429 and 503, each with ``{"error"}``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from testing.repositories import Repository
from testing.requests import v2_body
from testing.server_process import ServerProcess, started_server
from tests.reliability.record import record

pytestmark = pytest.mark.slow

CLIENTS = 64
LOAD_S = float(os.environ.get("ENSEMBLE_RELIABILITY_LOAD_S", "10"))
MAX_REQUESTS_PER_CLIENT = 20_000  # a bound on count as well as on time


@dataclass
class Tally:
    codes: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    rows: int = 0


def client_rows(client: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows no other client sends: the first feature encodes the client, the rest are random."""
    x = rng.uniform(-3, 3, size=(n, 4))
    x[:, 0] = client / 16.0 + rng.uniform(0, 0.01, size=n)
    return x.astype(np.float32).astype(np.float64)  # exactly representable in the FP32 the server uses


def check_answer(r: httpx.Response, x: np.ndarray, protocol: str, repo: Repository, tally: Tally) -> None:
    want = repo.expected(x)
    doc = r.json()
    if protocol == "v1":
        got = np.asarray(doc["probabilities"], dtype=np.float64)
        labels = doc["predictions"]
    else:
        out = {o["name"]: o for o in doc["outputs"]}
        got = np.reshape(out["probabilities"]["data"], out["probabilities"]["shape"])
        labels = [f"class_{i}" for i in out["label"]["data"]]
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
        tally.wrong.append(f"{protocol}: {x.tolist()} -> {got.tolist()}, want {want.tolist()}")
    elif labels != [f"class_{i}" for i in got.argmax(axis=1)]:
        tally.wrong.append(f"{protocol}: labels {labels} do not match {got.tolist()}")


async def one_client(
    client_id: int, http: httpx.AsyncClient, repo: Repository, end: float, tally: Tally, allowed: set[int]
) -> None:
    rng = np.random.default_rng(client_id)
    for i in range(MAX_REQUESTS_PER_CLIENT):
        if time.monotonic() >= end:
            return
        x = client_rows(client_id, int(rng.integers(1, 4)), rng)
        protocol = "v1" if i % 2 else "v2"
        try:
            if protocol == "v1":
                r = await http.post("/v1/models/iris:predict", json={"instances": x.tolist()})
            else:
                r = await http.post("/v2/models/iris/infer", json=v2_body(x))
        except httpx.TransportError as exc:
            tally.transport_errors.append(repr(exc))
            continue
        tally.codes[r.status_code] += 1
        if r.status_code == 200:
            tally.rows += len(x)
            check_answer(r, x, protocol, repo, tally)
        elif r.status_code not in allowed or set(r.json()) != {"error"}:
            tally.wrong.append(f"unexpected {r.status_code}: {r.text[:200]}")
        elif r.status_code == 429:
            await asyncio.sleep(0.005)  # a polite client backs off a little (Retry-After says 1 s)


def run_load(
    server: ServerProcess, repo: Repository, seconds: float, allowed: set[int]
) -> tuple[Tally, float]:
    async def main() -> Tally:
        tally = Tally()
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            end = time.monotonic() + seconds
            await asyncio.gather(*(one_client(c, http, repo, end, tally, allowed) for c in range(CLIENTS)))
        return tally

    t0 = time.monotonic()
    tally = asyncio.run(main())
    return tally, time.monotonic() - t0


def test_64_clients_each_get_their_own_exact_answers(server: ServerProcess, repo: Repository) -> None:
    tally, elapsed = run_load(server, repo, LOAD_S, allowed=set())
    total = sum(tally.codes.values())
    record("load", f"{CLIENTS} clients x {LOAD_S:g} s, V1+V2, 1-3 rows each, answers checked against numpy",
           "all 200, every answer the caller's own",
           f"{total} requests ({total / elapsed:.0f}/s), codes {dict(tally.codes)}, "
           f"wrong {len(tally.wrong)}, "
           f"transport errors {len(tally.transport_errors)}")  # fmt: skip
    assert not tally.transport_errors, tally.transport_errors[:3]
    assert not tally.wrong, tally.wrong[:3]
    assert set(tally.codes) == {200} and total >= CLIENTS
    assert elapsed < LOAD_S + 30


@pytest.fixture(scope="module")
def tiny_queue_server(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_MAX_QUEUE_SIZE": "3", "ENSEMBLE_MAX_BATCH_SIZE": "4",
           "ENSEMBLE_MAX_QUEUE_DELAY_MS": "5"}  # fmt: skip
    proc = started_server(repo.root, env, tmp_path_factory.mktemp("log") / "tiny-queue.log")
    yield proc
    proc.stop()


def test_tiny_queue_answers_only_correct_429_or_503(
    tiny_queue_server: ServerProcess, repo: Repository
) -> None:
    seconds = min(LOAD_S, 4.0)
    tally, _ = run_load(tiny_queue_server, repo, seconds, allowed={429, 503})
    total = sum(tally.codes.values())
    record("load", f"{CLIENTS} clients x {seconds:g} s, queue of 3 rows", "only correct 200s, 429, 503",
           f"{total} requests, codes {dict(tally.codes)}, wrong {len(tally.wrong)}, "
           f"transport errors {len(tally.transport_errors)}")  # fmt: skip
    assert not tally.transport_errors, tally.transport_errors[:3]
    assert not tally.wrong, tally.wrong[:3]
    assert tally.codes[200] > 0 and tally.codes[429] > 0, tally.codes
    assert set(tally.codes) <= {200, 429, 503}
    # The queue refusals are counted, and the server is back to normal at once.
    metrics = tiny_queue_server.client.get("/metrics").text
    assert 'ensemble_requests_total{model="iris",outcome="429"' in metrics
    r = tiny_queue_server.client.post("/v1/models/iris:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]})
    assert r.status_code == 200
