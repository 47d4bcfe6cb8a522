"""Metrics and statistics with ``--workers N``: each process writes its own files under the multiprocess
directory, and one read sums them (server.metrics, server.stats). Real writer processes, read here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client import multiprocess

from server.stats import Statistics

ROOT = Path(__file__).resolve().parents[2]

# One worker's traffic: `n` requests, one batch of 5 rows, and one request still in flight at the end.
WRITER = """
import os, sys
from server.metrics import Metrics
n = int(sys.argv[1])
m = Metrics()
mm = m.model("iris", "1")
for _ in range(n):
    mm.request_started()
    mm.requests("v1", "ok").inc()
    mm.request_duration("v1").observe(0.001)
    m.stats.record_request("iris", "1", True, 0.002)
for _ in range(n - 1):
    mm.request_finished()
mm.queue_depth.inc(4)
m.stats.record_batch("iris", "1", [0.001] * 3, 0.004, rows=5)
m.model_info.labels("iris", "1", "CPUExecutionProvider", "cpu", "3", "fused").set(1)
print(os.getpid())
"""


# A scrape as a worker makes it (in a process of its own: multiprocess mode is chosen per process).
SCRAPE = """
from server.metrics import Metrics
print(Metrics().render().decode())
"""


def python(folder: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", code, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True).stdout


def write(folder: Path, n: int) -> int:
    return int(python(folder, WRITER, str(n)).strip())


def sample(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in the scrape"
    return float(m.group(1))


def test_one_scrape_sums_the_workers_and_forgets_a_dead_ones_live_gauges(tmp_path: Path) -> None:
    first, second = write(tmp_path, 3), write(tmp_path, 4)
    text = python(tmp_path, SCRAPE)
    assert sample(text, "ensemble_requests_total") == 7
    assert sample(text, "ensemble_request_duration_seconds_count") == 7
    assert sample(text, "ensemble_in_flight_requests") == 2  # livesum: one left in flight in each
    assert sample(text, "ensemble_queue_depth") == 8
    assert sample(text, "ensemble_model_info") == 1  # livemax: loaded somewhere, not "loaded twice"
    # A worker that died: its counts stay (counters never go down), its live gauges go.
    multiprocess.mark_process_dead(first, str(tmp_path))
    text = python(tmp_path, SCRAPE)
    assert sample(text, "ensemble_requests_total") == 7
    assert sample(text, "ensemble_in_flight_requests") == 1
    assert sample(text, "ensemble_queue_depth") == 4
    assert second > 0


def test_statistics_sum_every_worker_including_dead_ones(tmp_path: Path) -> None:
    write(tmp_path, 3)
    write(tmp_path, 4)
    entry = Statistics(str(tmp_path)).model_stats("iris", "1")
    stages = entry["inference_stats"]
    assert stages["success"] == {"count": 7, "ns": 7 * 2_000_000}
    assert stages["queue"] == {"count": 6, "ns": 6 * 1_000_000}
    assert stages["compute_infer"] == {"count": 6, "ns": 6 * 4_000_000}
    assert stages["fail"] == {"count": 0, "ns": 0}
    assert (entry["inference_count"], entry["execution_count"]) == (10, 2)
    assert entry["last_inference"] > 0
    # A version nobody served reads as zeros, as with one process.
    assert Statistics(str(tmp_path)).model_stats("iris", "9")["inference_count"] == 0
