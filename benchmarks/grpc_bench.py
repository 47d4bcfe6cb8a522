"""gRPC cells for `make bench`: perf_analyzer -i grpc (C++, from the tritonclient wheel) against the server.

A Python load generator would share the 2 cores with the server and measure itself; perf_analyzer, like
wrk for HTTP, costs little per request. Each cell is bounded: time windows of `seconds`, at most 3 (a loose
stability rule: the figures are medians over the harness's repeats, not perf_analyzer's search).

    python -m benchmarks.grpc_bench --target 127.0.0.1:8001 --model bench [--seconds 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# (rows per request, concurrency): single rows alone and under load, and 256-row batches at 16 (4,096
# rows in flight, the default queue bound: at 64, most would be refused with RESOURCE_EXHAUSTED).
CELLS: tuple[tuple[int, int], ...] = ((1, 1), (1, 64), (256, 16))
BIN = Path(sys.executable).parent / "perf_analyzer"


def _env() -> dict[str, str]:
    """libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel: perf_analyzer links it even for gRPC."""
    paths = [os.environ.get("LD_LIBRARY_PATH", "")]
    try:
        import nvidia.cuda_runtime  # type: ignore[import-untyped]

        paths.insert(0, str(Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"))
    except ImportError:
        pass
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}


def unavailable() -> str | None:
    """Why perf_analyzer cannot run here, or None."""
    if not BIN.is_file():
        return f"perf_analyzer is not installed at {BIN}"
    probe = subprocess.run([str(BIN), "--version"], env=_env(), capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"perf_analyzer cannot run: {(probe.stderr or probe.stdout).strip()[:200]}"
    return None


def measure(target: str, model: str, rows: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """One cell: requests/s, rows/s, p50 and p99 in ms, or a note saying why there are none."""
    cell: dict[str, Any] = {"protocol": "grpc", "rows": rows, "concurrency": concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cell.csv"
        cmd = [
            str(BIN), "-m", model, "-u", target, "-i", "grpc", "-b", str(rows),
            "--concurrency-range", str(concurrency), "--input-data", "random",
            "--measurement-mode", "time_windows", "--measurement-interval", str(int(seconds * 1000)),
            "--max-trials", "3", "--stability-percentage", "1000", "-f", str(report),
        ]  # fmt: skip
        try:
            run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=30 + 6 * seconds)
        except subprocess.TimeoutExpired:
            return {**cell, "note": "perf_analyzer did not finish in time"}
        if run.returncode != 0 or not report.is_file():
            last = " ".join((run.stderr or run.stdout).split())[-160:]  # one line: it goes in a table
            return {**cell, "note": f"perf_analyzer failed: ...{last}"}
        (row,) = list(csv.DictReader(io.StringIO(report.read_text())))
    inferences = float(row["Inferences/Second"])  # rows per second (-b rows a request)
    return {
        **cell,
        "rps": inferences / rows,
        "rows_per_s": inferences,
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "errors": 0,  # perf_analyzer exits non-zero on any failed request
    }


def run_cells(
    target: str, model: str, which: list[tuple[int, int]], seconds: float, repeat: int
) -> list[dict[str, Any]]:
    cells = []
    for rows, concurrency in which:
        cell = {**measure(target, model, rows, concurrency, seconds), "system": "ours", "repeat": repeat}
        cells.append(cell)
        if "note" in cell:
            print(f"  ours     grpc   rows {rows:3d} c {concurrency:2d}: {cell['note']}", flush=True)
        else:
            print(
                f"  ours     grpc   rows {rows:3d} c {concurrency:2d}: {cell['rps']:9,.0f} req/s"
                f"  p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms",
                flush=True,
            )
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="host:port of the server's gRPC port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement window")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(why, file=sys.stderr)
        return 2
    run_cells(args.target, args.model, list(CELLS), args.seconds, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
