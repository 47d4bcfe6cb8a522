"""perf_analyzer -i grpc (from the tritonclient 2.41.1 wheel) at concurrency 16: no errors, every request
counted as a gRPC success. How it is found and skipped is tests/triton/test_perf_analyzer.py's."""

from __future__ import annotations

import re
import subprocess

import pytest

from testing.server_process import ServerProcess
from tests.triton.test_perf_analyzer import BIN, _env, _skip_unless_runnable

pytestmark = pytest.mark.slow


def _ok_requests(server: ServerProcess, model: str) -> float:
    text = server.client.get("/metrics").text
    pattern = rf'ensemble_requests_total\{{model="{model}",outcome="ok",protocol="grpc",version="1"\}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("streaming", [False, True])
def test_perf_analyzer_over_grpc(grpc_server: ServerProcess, streaming: bool) -> None:
    _skip_unless_runnable()
    before = _ok_requests(grpc_server, "iris")
    cmd = [
        str(BIN), "-m", "iris", "-u", grpc_server.grpc_target, "-i", "grpc", "-b", "1",
        "--concurrency-range", "16", "--input-data", "random",
        # Bounded: windows of 300 requests, at most 8; a loose stability rule (a smoke test, not a benchmark).
        "--measurement-mode", "count_windows", "--measurement-request-count", "300",
        "--max-trials", "8", "--stability-percentage", "1000",
        *(["--streaming"] if streaming else []),
    ]  # fmt: skip
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=90)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    requests = re.search(r"Request count: (\d+)", output)
    assert throughput and requests, output
    assert float(throughput.group(1)) > 0
    assert "error" not in output.lower(), output
    # Its statistics query worked over gRPC (ModelStatistics), and every request was a gRPC success.
    assert re.search(r"Successful request count: [1-9]", output), output
    assert _ok_requests(grpc_server, "iris") - before >= int(requests.group(1))
    print(output)
