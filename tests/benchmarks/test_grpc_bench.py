"""The gRPC cells of `make bench`: which are measured, and how the report shows them beside HTTP."""

from __future__ import annotations

from benchmarks import grpc_bench, report


def test_cells_are_single_rows_at_1_and_64_and_256_row_batches_at_16() -> None:
    assert set(grpc_bench.CELLS) == {(1, 1), (1, 64), (256, 16)}


def test_report_shows_grpc_medians_beside_v2_binary() -> None:
    def cell(system: str, protocol: str, rows: int, rps: float, p99: float, repeat: int) -> dict:
        return {"system": system, "protocol": protocol, "rows": rows, "concurrency": 64, "repeat": repeat,
                "rps": rps, "p50_ms": 1.0, "p99_ms": p99, "errors": 0}  # fmt: skip

    results = {
        "grpc": [cell("ours", "grpc", 1, r, 9.0, i) for i, r in enumerate((100.0, 300.0, 200.0))]
        + [
            {
                "system": "ours",
                "protocol": "grpc",
                "rows": 256,
                "concurrency": 64,
                "note": "perf_analyzer failed",
            }
        ],
    }
    http = report.medians([cell("ours", "v2bin", 1, 250.0, 7.5, 0)])
    lines = report.grpc_section(results, http)
    assert "| 1 | 64 | 200 | 200 | 1.00 | 9.00 | 250 | 7.50 |" in lines
    assert "| 256 | 64 | perf_analyzer failed | | | | | |" in lines
    assert report.grpc_section({"grpc": []}, http) == []
