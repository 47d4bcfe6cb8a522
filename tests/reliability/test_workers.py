"""``--workers 2`` under load: a worker killed with SIGKILL, SIGTERM to the parent, and a hot reload, each
with concurrent clients that send their own rows and check the exact answer (so a lost, hung or mixed-up
response cannot pass). Every client request has a timeout: a hung connection fails the test."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.repositories import Repository
from testing.requests import v2_body
from testing.server_process import ServerProcess, started_server, wait_for
from testing.workers import multiprocess_dir, requests_in_file, scrape, wait_workers, worker_pids
from tests.reliability.record import record
from tests.reliability.test_load import client_rows

pytestmark = pytest.mark.slow

CLIENTS = 64
CLIENT_TIMEOUT_S = 10.0
CLOSE = {"Connection": "close"}


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (the error says why)
    version: str | None = None
    correct: bool = False
    error: str = ""


def heavy_repo(root: Path, version: int = 1, seed: int = 8) -> Repository:
    # A few ms a batch: requests are in flight when the fault comes.
    repo = Repository(root)
    repo.add("iris", version, members=5, hidden=[256, 256], seed=seed)
    return repo


def two_workers(root: Path, log: Path, **env: str) -> ServerProcess:
    server = started_server(root, {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_WORKERS": "2", **env}, log)
    wait_for(lambda: ready(server) == 200, "every worker ready", 90)
    return server


def ready(server: ServerProcess) -> int:
    return server.client.get("/v2/health/ready", headers=CLOSE).status_code


async def load(
    server: ServerProcess,
    check: Callable[[np.ndarray, dict], tuple[str, bool]],
    until: Callable[[], bool],
    clients: int = CLIENTS,
    bound_s: float = 40.0,
) -> list[Outcome]:
    """`clients` clients, one connection per request (no keep-alive: "sent" and "accepted" coincide), each
    checking its answer with `check(x, body) -> (version, correct)`, until `until()` or `bound_s`."""
    outcomes: list[Outcome] = []
    end = time.monotonic() + bound_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)

    async def one(cid: int, http: httpx.AsyncClient) -> None:
        rng = np.random.default_rng(500 + cid)
        for _ in range(100_000):
            if until() or time.monotonic() > end:
                return
            x = client_rows(cid, int(rng.integers(1, 4)), rng)
            t0 = time.monotonic()
            try:
                r = await http.post("/v2/models/iris/infer", json=v2_body(x))
            except httpx.TimeoutException as exc:
                outcomes.append(Outcome(t0, time.monotonic(), None, error=f"TIMEOUT {exc!r}"))
                continue
            except httpx.TransportError as exc:
                outcomes.append(Outcome(t0, time.monotonic(), None, error=repr(exc)))
                await asyncio.sleep(0.01)
                continue
            o = Outcome(t0, time.monotonic(), r.status_code)
            if r.status_code == 200:
                o.version, o.correct = check(x, r.json())
            outcomes.append(o)
            if r.status_code == 503:
                await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT_S, limits=limits) as http:
        await asyncio.gather(*(one(c, http) for c in range(clients)))
    return outcomes


def exact(repos: dict[str, Repository]) -> Callable[[np.ndarray, dict], tuple[str, bool]]:
    """A checker: the version the answer names, and whether its probabilities are that version's."""

    def check(x: np.ndarray, doc: dict) -> tuple[str, bool]:
        version = doc["model_version"]
        out = {o["name"]: o for o in doc["outputs"]}
        got = np.reshape(out["probabilities"]["data"], out["probabilities"]["shape"])
        repo = repos.get(version)
        return version, repo is not None and np.allclose(got, repo.expected(x), atol=1e-5)

    return check


def test_kill_9_of_one_worker_under_64_clients(tmp_path: Path) -> None:
    repo = heavy_repo(tmp_path / "repo")
    server = two_workers(repo.root, tmp_path / "server.log")
    try:
        before = scrape(server.client, "ensemble_requests_total")
        victim = wait_workers(server.proc.pid, 2)[0]
        folder = multiprocess_dir(victim)
        t_kill = 0.0
        victim_served = 0.0
        restarted = threading.Event()

        def kill_then_watch() -> None:
            nonlocal t_kill, victim_served
            time.sleep(2.0)
            victim_served = requests_in_file(folder, victim)
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            parent = server.proc.pid

            def replaced() -> bool:  # (a dead, unreaped worker has no command line: it is not listed)
                pids = worker_pids(parent)
                return len(pids) == 2 and victim not in pids and ready(server) == 200

            wait_for(replaced, "a restarted worker", 60)
            time.sleep(1.0)  # and answers for a while after
            restarted.set()

        killer = threading.Thread(target=kill_then_watch, daemon=True)
        killer.start()
        outcomes = asyncio.run(load(server, exact({"1": repo}), restarted.is_set, bound_s=70))
        killer.join(5)
        after = scrape(server.client, "ensemble_requests_total")
        restarts = scrape(server.client, "ensemble_worker_restarts_total")
    finally:
        server.stop()
    ok = [o for o in outcomes if o.status == 200]
    failed = [o for o in outcomes if o.status != 200]
    hung = [o for o in outcomes if o.error.startswith("TIMEOUT")]
    record("workers", f"kill -9 of one of 2 workers under {CLIENTS} clients",
           "only requests in flight on that worker fail; none hangs; restarted and counted; metrics go on",
           f"victim had answered {victim_served:.0f}; "
           f"{len(ok)} x 200 (all exact: {all(o.correct for o in ok)}), {len(failed)} failed "
           f"({len(hung)} hung), restarts {restarts:.0f}, requests_total {before:.0f} -> {after:.0f}",
           )  # fmt: skip
    assert t_kill and restarted.is_set()
    assert victim_served > 0  # the killed worker was answering its share of the load
    assert not hung
    assert ok and all(o.correct for o in ok)
    # What failed was in flight when the worker died (sent before the kill, answered after it): no
    # status at all (the connection reset), never an error answer, and at most one per client.
    assert all(o.status is None for o in failed), {o.status for o in failed}
    assert all(o.started <= t_kill + 0.05 and o.ended >= t_kill for o in failed), failed[:3]
    assert len(failed) <= CLIENTS
    assert any(o.started > t_kill + 1 for o in ok)  # the other worker (then both) kept answering
    assert restarts == 1
    # The dead worker's counts stayed (less its last unflushed tenth of a second); the others' add to them.
    assert after - before >= 0.8 * len(ok)
    assert "died (signal SIGKILL): restarting it" in (tmp_path / "server.log").read_text()


def test_sigterm_under_load_with_2_workers_answers_200_or_503_and_exits_0(tmp_path: Path) -> None:
    repo = heavy_repo(tmp_path / "repo")
    drain_s = 10.0
    server = two_workers(repo.root, tmp_path / "server.log", ENSEMBLE_DRAIN_TIMEOUT_S=str(drain_s))
    t_signal = 0.0

    def signal_later() -> None:
        nonlocal t_signal
        time.sleep(1.5)
        t_signal = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

    try:
        threading.Thread(target=signal_later, daemon=True).start()
        outcomes = asyncio.run(load(server, exact({"1": repo}), lambda: server.proc.poll() is not None, 30))
        code = server.proc.wait(drain_s + 15)
        exit_s = time.monotonic() - t_signal
    finally:
        server.stop()
    ok = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    dropped = [o for o in outcomes if o.status is None]
    record("workers", "SIGTERM to the parent of 2 workers under load",
           "200 (exact) or 503; refused only after the signal; every worker drains; exit 0",
           f"{len(ok)} x 200, {len(refused)} x 503, {len(dropped)} no connection, exit {code} after "
           f"{exit_s:.2f} s")  # fmt: skip
    assert code == 0 and exit_s < drain_s + 5
    assert ok and all(o.correct for o in ok)
    assert {o.status for o in outcomes} <= {200, 503, None}
    assert all(o.ended > t_signal for o in refused)
    assert not [o for o in dropped if o.error.startswith("TIMEOUT")]
    # No connection only once the workers closed the socket, after the signal; never a sent request lost.
    lost = [o for o in dropped if o.started <= t_signal and "ConnectError" not in o.error]
    assert not lost, lost[:3]
    log = (tmp_path / "server.log").read_text()
    assert log.count("drained: every accepted request has its answer") == 2
    assert log.count("exited with code 0") == 2


def test_hot_reload_under_load_with_2_workers_never_mixes_versions(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    v1 = heavy_repo(root, 1, seed=8)
    server = two_workers(root, tmp_path / "server.log", ENSEMBLE_REPOSITORY_POLL_INTERVAL_S="0.2")
    repos = {"1": v1}
    t_publish = 0.0
    switched = threading.Event()

    def publish_v2() -> None:
        nonlocal t_publish
        time.sleep(1.5)
        staging = tmp_path / "staging"
        repos["2"] = heavy_repo(staging, 2, seed=9)
        t_publish = time.monotonic()
        os.rename(staging / "iris" / "2", root / "iris" / "2")  # complete folder, renamed into place
        shutil.rmtree(staging)

    def served_everywhere() -> bool:
        # 20 fresh connections (spread over both workers) all list version 2 only.
        docs = [server.client.get("/v2/models/iris", headers=CLOSE).json() for _ in range(20)]
        return all(d.get("versions") == ["2"] for d in docs)

    def watch() -> None:
        while not t_publish:
            time.sleep(0.05)
        wait_for(served_everywhere, "version 2 served by every worker", 60)
        time.sleep(1.0)
        switched.set()

    try:
        threading.Thread(target=publish_v2, daemon=True).start()
        threading.Thread(target=watch, daemon=True).start()
        outcomes = asyncio.run(load(server, exact(repos), switched.is_set, clients=32, bound_s=70))
        log = server.log.read_text()
    finally:
        server.stop()
    assert switched.is_set()
    ok = [o for o in outcomes if o.status == 200]
    first_v2 = min(o.ended for o in ok if o.version == "2")
    late_v1 = [o for o in ok if o.version == "1" and o.started > first_v2]
    record("workers", "hot reload (v1 -> v2) under 32 clients with 2 workers",
           "every answer names one version and is exactly that version's; no error; v1 stops everywhere",
           f"{len(ok)} x 200 (exact: {all(o.correct for o in ok)}), v1 {sum(o.version == '1' for o in ok)}, "
           f"v2 {sum(o.version == '2' for o in ok)}, v1 started after the first v2 answer: {len(late_v1)}, "
           f"other outcomes: {len(outcomes) - len(ok)}")  # fmt: skip
    assert len(ok) == len(outcomes)  # the old version serves until the new one is warm everywhere
    assert all(o.correct for o in ok)  # each answer is wholly the version it names
    assert {o.version for o in ok} == {"1", "2"}
    # Both workers swap on one commit from the parent: v1 may still answer a request sent in the few
    # milliseconds between the two swaps, never afterwards.
    assert all(o.started < first_v2 + 0.5 for o in late_v1), late_v1[:3]
    assert not [o for o in ok if o.version == "1" and o.started > first_v2 + 0.5]
    assert log.count("loaded iris version 2") == 2 and "aborted" not in log
