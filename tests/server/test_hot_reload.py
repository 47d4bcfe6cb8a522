"""Hot reload against a real server process while a client keeps sending requests."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from testing.members import numpy_member
from testing.repositories import corrupt_manifest, write_version
from testing.server_process import ServerProcess, wait_for

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [-1.0, 0.5, 2.0, -3.0]], dtype=np.float32)


def expected_probabilities(members: list) -> np.ndarray:
    return np.mean([numpy_member(w, X, "classification") for w in members], axis=0)


class ClientLoop:
    """Two threads sending V1 requests until stopped (bounded in count and time); keeps every answer."""

    def __init__(self, url: str, max_requests: int = 20000, max_s: float = 60) -> None:
        self.url, self.max_requests, self.max_s = url, max_requests, max_s
        self.answers: list[tuple[int, dict]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        end = time.monotonic() + self.max_s
        body = {"instances": X.tolist()}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < end:
                if len(self.answers) >= self.max_requests:
                    break
                try:
                    r = client.post("/v1/models/iris:predict", json=body)
                    self.answers.append((r.status_code, r.json()))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def start(self) -> ClientLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def versions_since(self, start: int) -> set[str]:
        return {a.get("model_version", "?") for _, a in self.answers[start:]}


def failures_metric(server: ServerProcess) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith('ensemble_model_load_failures_total{model="iris"}'):
            return float(line.split()[-1])
    return 0.0


def test_versions_come_and_go_while_requests_flow(tmp_path: Path) -> None:
    repo, staging = tmp_path / "repo", tmp_path / "staging"
    weights = {1: write_version(repo, "iris", 1, members=3, seed=1)}
    weights[2] = write_version(staging, "iris", 2, members=3, hidden=[8], seed=2)
    write_version(staging, "iris", 3, members=2, seed=3)
    corrupt_manifest(staging, "iris", 3)
    expected = {str(v): expected_probabilities(w) for v, w in weights.items()}
    assert not np.allclose(expected["1"], expected["2"], atol=1e-3)  # the answers tell the versions apart

    env = {"ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0.1", "ENSEMBLE_WARMUP_RUNS": "1"}
    server = ServerProcess(repo, env, tmp_path / "server.log")
    loop: ClientLoop | None = None
    try:
        server.wait_live()
        server.wait_loaded()
        loop = ClientLoop(server.url).start()
        wait_for(lambda: len(loop.answers) > 20, what="first answers")

        # A new version renamed into place (as the training writer does) takes over.
        os.rename(staging / "iris" / "2", repo / "iris" / "2")
        mark = len(loop.answers)
        wait_for(lambda: "2" in loop.versions_since(mark), what="answers from version 2")
        assert server.client.get("/v2/models/iris").json()["versions"] == ["2"]

        # A broken version is logged and counted; version 2 keeps serving and the server stays ready.
        os.rename(staging / "iris" / "3", repo / "iris" / "3")
        wait_for(lambda: failures_metric(server) == 1, what="the load failure metric")
        mark = len(loop.answers)
        wait_for(lambda: len(loop.answers) > mark + 20, what="answers after the failure")
        assert loop.versions_since(mark) == {"2"}
        assert server.client.get("/v2/health/ready").status_code == 200
        r = server.client.get("/v2/models/iris/versions/3")
        assert r.status_code == 503 and "sha256" in r.json()["error"]

        # Version 2 removed (moved aside, then deleted): version 1 serves again.
        os.rename(repo / "iris" / "2", repo / "iris" / ".removed-2")
        shutil.rmtree(repo / "iris" / ".removed-2")
        mark = len(loop.answers)
        wait_for(lambda: "1" in loop.versions_since(mark), what="answers from version 1 again")
        mark = len(loop.answers)
        wait_for(lambda: len(loop.answers) > mark + 20, what="answers after the removal")
        assert loop.versions_since(mark) == {"1"}
        time.sleep(0.3)  # a few more polls: the broken version is not tried (or counted) again
        assert failures_metric(server) == 1
    finally:
        if loop is not None:
            loop.stop()
        server.stop()

    assert loop.errors == []
    statuses = [s for s, _ in loop.answers]
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    for _, answer in loop.answers:  # every answer is exactly the one its version computes
        np.testing.assert_allclose(answer["probabilities"], expected[answer["model_version"]], atol=1e-5)
    log = (tmp_path / "server.log").read_text()
    assert "cannot load iris version 3" in log and "does not match its sha256" in log
