"""``--workers 2``: two full servers behind one port, one /metrics and one set of statistics for both,
readiness over every worker, admin load/unload reaching every worker, and a killed worker restarted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.cli import main
from server.metric_files import FLUSH_INTERVAL_S
from server.runtime import usable_cpus
from server.workers import resolve_workers
from testing.repositories import write_version
from testing.server_process import ServerProcess, running_server, wait_for
from testing.workers import multiprocess_dir, requests_in_file, scrape, wait_workers

TOKEN = "workers-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
# A fresh connection per request: the kernel hands each to whichever worker accepts it first.
CLOSE = {"Connection": "close"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("workers-repo")
    write_version(root, "iris", 1, members=3, seed=1)
    write_version(root, "spare", 1, members=2, seed=2)
    env = {
        "ENSEMBLE_WORKERS": "2",
        "ENSEMBLE_ADMIN_TOKEN": TOKEN,
        "ENSEMBLE_WARMUP_RUNS": "1",
        "ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0",
    }
    with running_server(root, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        wait_for(lambda: proc.client.get("/v2/health/ready").status_code == 200, "every worker ready", 60)
        yield proc


def predict(server: ServerProcess, i: int, model: str = "iris") -> httpx.Response:
    x = [[i / 10, 1.0, -0.5, 2.0]]
    if i % 2:
        return server.client.post(f"/v1/models/{model}:predict", json={"instances": x}, headers=CLOSE)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x[0]}]}
    return server.client.post(f"/v2/models/{model}/infer", json=body, headers=CLOSE)


def success_count(server: ServerProcess) -> tuple[int, int]:
    entry = server.client.get("/v2/models/iris/stats").json()["model_stats"][0]
    return entry["inference_stats"]["success"]["count"], entry["inference_count"]


def test_workers_setting_is_a_positive_number_or_auto(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert resolve_workers("auto") == usable_cpus()
    assert resolve_workers(3) == 3
    for bad in ("0", "-1", "two", "1.5"):
        assert main(["--model-repository", str(tmp_path), "--workers", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ensemble-serve: error: workers:") and "\n" not in err, err


def test_two_workers_serve_one_port_and_every_request_is_counted_once(server: ServerProcess) -> None:
    pids = wait_workers(server.proc.pid, 2)
    folder = multiprocess_dir(pids[0])
    time.sleep(3 * FLUSH_INTERVAL_S)  # what earlier tests sent is in the files: the baseline is final
    before = scrape(server.client, "ensemble_requests_total", model="iris")
    per_worker_before = [requests_in_file(folder, pid) for pid in pids]
    stats_before = success_count(server)
    k = 120
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: predict(server, i).status_code, range(k)))
    assert codes == [200] * k

    def counted() -> float:
        return scrape(server.client, "ensemble_requests_total", model="iris") - before

    # One scrape of either worker: every request exactly once, V1 and V2 alike (the other worker's values
    # reach the files within server.metric_files.FLUSH_INTERVAL_S).
    wait_for(lambda: counted() >= k, "every request in the scrape", 5)
    time.sleep(3 * FLUSH_INTERVAL_S)
    assert counted() == k
    assert scrape(server.client, "ensemble_requests_total", model="iris", protocol="v1") >= k // 2
    served = [requests_in_file(folder, pid) - b for pid, b in zip(pids, per_worker_before, strict=True)]
    assert sum(served) == k and all(n > 0 for n in served), served  # both workers answered some
    count, rows = success_count(server)
    assert (count - stats_before[0], rows - stats_before[1]) == (k, k)  # the statistics extension agrees


def test_answers_are_the_same_whichever_worker_answers(server: ServerProcess) -> None:
    bodies = [predict(server, 3).json()["probabilities"] for _ in range(20)]
    assert all(np.array_equal(b, bodies[0]) for b in bodies)


def test_admin_unload_and_load_reach_every_worker(server: ServerProcess) -> None:
    c = server.client
    assert c.post("/v2/repository/models/spare/unload", headers=ADMIN).status_code == 200
    assert {predict(server, i, "spare").status_code for i in range(30)} == {503}
    index = {r["name"]: r["state"] for r in c.post("/v2/repository/index", headers=ADMIN).json()}
    assert index["spare"] == "UNLOADED"
    assert c.get("/v2/health/ready").status_code == 200  # an unloaded model does not hold readiness
    assert c.post("/v2/repository/models/spare/load", headers=ADMIN).status_code == 200
    assert {predict(server, i, "spare").status_code for i in range(30)} == {200}
    # Every worker refuses what none can do, with the same answer as one process.
    assert c.post("/v2/repository/models/nosuch/load", headers=ADMIN).status_code == 404
    assert c.post("/v2/repository/models/nosuch/unload", headers=ADMIN).status_code == 404


def test_a_killed_worker_is_restarted_counted_and_keeps_what_was_unloaded(server: ServerProcess) -> None:
    c = server.client
    assert c.post("/v2/repository/models/spare/unload", headers=ADMIN).status_code == 200
    c.get("/v2/health/live", headers=CLOSE)  # no keep-alive connection left for the kill to reset

    def ready() -> int:
        return c.get("/v2/health/ready", headers=CLOSE).status_code

    restarts = scrape(c, "ensemble_worker_restarts_total")
    assert restarts == 0
    requests_before = scrape(c, "ensemble_requests_total", model="iris")
    old = wait_workers(server.proc.pid, 2)
    os.kill(old[0], signal.SIGKILL)
    # Readiness is every worker's: false while the replacement loads, then true again.
    wait_for(lambda: ready() == 503, "readiness false", 10)
    assert c.get("/v2/health/ready", headers=CLOSE).json()["workers_not_ready"]
    assert predict(server, 1).status_code == 200  # the other worker keeps answering meanwhile
    wait_for(lambda: ready() == 200, "every worker ready again", 60)
    new = wait_workers(server.proc.pid, 2)
    assert old[1] in new and old[0] not in new
    assert scrape(c, "ensemble_worker_restarts_total") == restarts + 1
    assert "died (signal SIGKILL): restarting it" in server.log.read_text()
    # The replacement did not load the model unloaded before it started.
    assert {predict(server, i, "spare").status_code for i in range(30)} == {503}
    # The dead worker's requests still count (counters never go down); new ones add to them.
    assert scrape(c, "ensemble_requests_total", model="iris") >= requests_before + 1
    assert scrape(c, "ensemble_in_flight_requests", model="iris") == 0  # its live gauges were cleaned
    assert c.post("/v2/repository/models/spare/load", headers=ADMIN).status_code == 200
    assert {predict(server, i, "spare").status_code for i in range(30)} == {200}


def test_grpc_listens_in_every_worker_on_one_port(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient

    pids = wait_workers(server.proc.pid, 2)
    folder = multiprocess_dir(pids[0])
    time.sleep(3 * FLUSH_INTERVAL_S)  # what earlier tests sent is in the files: the baseline is final
    before = [requests_in_file(folder, pid) for pid in pids]
    x = np.array([[0.1, 1.0, -0.5, 2.0]], np.float32)
    for _ in range(40):  # a new channel (connection) each time: the kernel picks a worker for each
        client = grpcclient.InferenceServerClient(server.grpc_target)
        try:
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer("iris", [tensor]).as_numpy("probabilities").shape == (1, 3)
        finally:
            client.close()

    def served() -> list[float]:
        return [requests_in_file(folder, pid) - b for pid, b in zip(pids, before, strict=True)]

    wait_for(lambda: sum(served()) >= 40, "every gRPC request in the workers' files", 5)
    assert sum(served()) == 40 and all(n > 0 for n in served()), served()
    assert scrape(server.client, "ensemble_requests_total", protocol="grpc") >= 40
