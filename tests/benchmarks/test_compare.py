"""The pure parts of the experiment tools: the harness's --only filter and benchmarks.compare's table."""

from __future__ import annotations

import pytest

from benchmarks import compare, report
from benchmarks.run import matrix, select


def test_only_keeps_the_matching_groups() -> None:
    groups = matrix(quick=False)
    assert select(groups, None) == groups
    picked = select(groups, "v2bin:256:*,*:1:64")
    assert {(p, r, c) for p, r, c, _ in picked} == {
        ("v2bin", 256, 1), ("v2bin", 256, 16), ("v2bin", 256, 64),
        ("v1", 1, 64), ("v2json", 1, 64), ("v2bin", 1, 64),
    }  # fmt: skip
    assert select(groups, "v1") == [g for g in groups if g[0] == "v1"]
    assert select(groups, "nope:1:1") == []


def test_compare_cells_and_table() -> None:
    assert compare.parse_cells("v1:1:64,v2bin:256:1") == [("v1", 1, 64), ("v2bin", 256, 1)]
    with pytest.raises(SystemExit):
        compare.parse_cells("grpc:1:1")
    runs = [
        {"variant": v, "protocol": "v1", "rows": 1, "concurrency": 64, "rps": rps, "p50_ms": 1.0,
         "p99_ms": 2.0, "errors": 0}
        for v, rps in (("a", 100.0), ("a", 300.0), ("a", 200.0), ("b", 500.0))
    ]  # fmt: skip
    text = compare.table(["a", "b"], [("v1", 1, 64)], runs)
    assert "| v1 1 row(s), c=64 | 200 req/s<br>p50 1.00 / p99 2.0 ms | 500 req/s (2.50x)" in text


def test_the_256_row_verdict_ignores_cells_with_errors() -> None:
    def cell(conc: int, rps: float, errors: int) -> dict:
        return {"system": "ours", "protocol": "v2bin", "rows": 256, "concurrency": conc, "rps": rps,
                "p50_ms": 1.0, "p99_ms": 2.0, "errors": errors}  # fmt: skip

    cells = report.medians([cell(1, 300, 0), cell(16, 350, 0), cell(64, 5000, 4000)])
    rows = report.verdicts(cells, {("fused", 256): 100_000.0}, 1.0)
    target = next(r for r in rows if r[0].startswith("256 rows"))
    assert target[1] == "90% (c=16)" and target[2] == "PASS"


def test_compare_env_per_variant() -> None:
    env = compare.parse_env(["log:ENSEMBLE_REQUEST_LOG=full", "log:A=b=c"], ["off", "log"])
    assert env == {"off": {}, "log": {"ENSEMBLE_REQUEST_LOG": "full", "A": "b=c"}}
    for bad in ("nope:A=1", "log:A", "A=1"):
        with pytest.raises(SystemExit):
            compare.parse_env([bad], ["off", "log"])
