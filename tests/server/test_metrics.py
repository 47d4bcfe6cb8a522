"""A real Prometheus server scrapes /metrics, and the README's p99 query gives a number."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from testing.repositories import Repository
from testing.server_process import ServerProcess, free_port

P99 = "histogram_quantile(0.99, sum by (le) (rate(ensemble_request_duration_seconds_bucket[30s])))"


def query(prom: httpx.Client, promql: str) -> list[dict]:
    r = prom.get("/api/v1/query", params={"query": promql})
    r.raise_for_status()
    return r.json()["data"]["result"]


def poll(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    """`check()` until it returns something truthy (bounded); errors while Prometheus starts are retried."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_prometheus_scrapes_and_computes_p99(repo: Repository, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    server = ServerProcess(repo.root, {"ENSEMBLE_WARMUP_RUNS": "0"}, tmp_path / "server.log")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ensemble\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n"
    )
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
        ],
        stdout=prom_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        server.wait_live()
        server.wait_loaded()
        with httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=5) as prom:
            poll(lambda: prom.get("/-/ready").status_code == 200, 30, "Prometheus to start")
            up = poll(lambda: query(prom, 'up{job="ensemble"} == 1'), 20, "a successful scrape")
            assert up[0]["value"][1] == "1"

            def p99_after_traffic() -> float | None:
                for _ in range(20):  # traffic between scrapes, so that rate() sees an increase
                    r = server.client.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]})
                    assert r.status_code == 200
                result = query(prom, P99)
                value = float(result[0]["value"][1]) if result else math.nan
                return value if math.isfinite(value) else None

            p99 = poll(p99_after_traffic, 30, "a finite p99 from Prometheus")
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
        prom_log.close()
        server.stop()
    assert 0 < p99 < 10  # seconds: at most the largest finite bucket
