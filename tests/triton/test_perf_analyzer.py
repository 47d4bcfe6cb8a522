"""perf_analyzer (from the tritonclient 2.41.1 wheel) drives a real server: it must succeed end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testing.server_process import ServerProcess

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "perf_analyzer"


def _cuda_runtime_dir() -> str | None:
    """libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (perf_analyzer links it even for HTTP)."""
    try:
        import nvidia.cuda_runtime  # type: ignore[import-untyped]
    except ImportError:
        return None
    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return str(lib) if lib.is_dir() else None


def _env() -> dict[str, str]:
    paths = [p for p in (_cuda_runtime_dir(), os.environ.get("LD_LIBRARY_PATH")) if p]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}


def _skip_unless_runnable() -> None:
    if not BIN.is_file():
        pytest.skip(f"perf_analyzer is not installed at {BIN} (it comes with the tritonclient wheel)")
    probe = subprocess.run([str(BIN), "--version"], env=_env(), capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        # e.g. "error while loading shared libraries: libb64.so.0d" (apt-get install libb64-0d).
        pytest.skip(f"perf_analyzer cannot run here: {(probe.stderr or probe.stdout).strip()[:300]}")


def _ok_requests(server: ServerProcess, model: str) -> float:
    text = server.client.get("/metrics").text
    pattern = rf'ensemble_requests_total\{{model="{model}",outcome="ok",protocol="v2",version="1"\}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_perf_analyzer_runs_against_the_server(server: ServerProcess) -> None:
    _skip_unless_runnable()
    before = _ok_requests(server, "iris")
    cmd = [
        str(BIN), "-m", "iris", "-u", f"127.0.0.1:{server.port}", "-i", "http", "-b", "1",
        "--concurrency-range", "16", "--input-data", "random",
        # Bounded: windows of 300 requests, at most 8; a loose stability rule (a smoke test, not a benchmark).
        "--measurement-mode", "count_windows", "--measurement-request-count", "300",
        "--max-trials", "8", "--stability-percentage", "1000",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    requests = re.search(r"Request count: (\d+)", output)
    assert throughput and requests, output
    assert float(throughput.group(1)) > 0
    # Its statistics query worked: the server side figures come from /v2/models/iris/stats.
    assert re.search(r"Successful request count: [1-9]", output), output
    # Every request it counted (plus its warm-up ones) reached the server's metrics as a V2 success.
    assert _ok_requests(server, "iris") - before >= int(requests.group(1))
    print(output)
