"""benchmarks/scaling.py: its arithmetic, its table, and the process tree it charges CPU to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.scaling import default_counts, markdown, process_tree, summary


def run(workers: int, conc: int, rps: float, repeat: int = 0) -> dict:
    return {
        "workers": workers, "concurrency": conc, "repeat": repeat, "rps": rps, "p50_ms": 1.0,
        "p99_ms": 2.0, "errors": 0, "cpu_us_per_request": 100.0, "cores_busy": workers * 0.9,
    }  # fmt: skip


def test_worker_counts_double_up_to_the_cpus() -> None:
    assert default_counts(1) == [1]
    assert default_counts(2) == [1, 2]
    assert default_counts(16) == [1, 2, 4, 8, 16]
    assert default_counts(6) == [1, 2, 4, 6]


def test_efficiency_is_against_one_worker_and_marginal_against_the_previous_row() -> None:
    runs = [run(1, 64, 1000), run(1, 64, 1200, 1), run(2, 64, 2000), run(4, 64, 3300), run(1, 256, 900)]
    rows = {(r["workers"], r["concurrency"]): r for r in summary(runs)}
    assert rows[(1, 64)]["rps"] == 1100  # the median of the repeats
    assert rows[(2, 64)]["efficiency"] == pytest.approx(2000 / (2 * 1100))
    assert rows[(2, 64)]["marginal"] == pytest.approx(900 / 1100)
    assert rows[(4, 64)]["marginal"] == pytest.approx(1300 / (2 * 1100))
    assert "marginal" not in rows[(1, 256)]
    table = "\n".join(markdown([*runs, {"workers": 8, "note": "not ready within 90 s"}], "test machine"))
    assert "| 2 | 64 | 2,000 |" in table and "test machine" in table
    assert "`--workers 8`: not ready within 90 s." in table


def test_the_process_tree_holds_the_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert os.getpid() in tree and child.pid in tree
    finally:
        child.kill()
        child.wait()
