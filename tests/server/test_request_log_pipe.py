"""The request log never blocks the event loop: stdout a pipe that nobody reads.

A real server with ``--request-log full`` whose stdout is a pipe never read (the kernel's pipe buffer,
~64 KiB, fills after a few hundred lines): 1,000 requests and a liveness probe are all answered, and the
writer itself keeps a bounded buffer and counts the lines it drops.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.observability import StdoutWriter
from testing.repositories import write_version
from testing.server_process import HOST, ROOT, free_port

REQUESTS = 1000


def test_writer_buffers_then_drops_and_counts() -> None:
    read_end, write_end = os.pipe()
    dropped: list[int] = []
    line = b"x" * 99 + b"\n"

    async def main() -> None:
        writer = StdoutWriter(write_end, on_drop=dropped.append, limit=10_000)
        assert writer.nonblocking
        start = time.perf_counter()
        for _ in range(2000):  # 200 KB: three times what the pipe holds
            writer(line * 1)
        assert time.perf_counter() - start < 2  # never waited on the pipe
        assert writer._buffered <= 10_000
        got = b""
        while len(got) < 64 * 1024:  # the reader comes back: the buffered lines follow, in order, whole
            got += os.read(read_end, 1 << 16)
            await asyncio.sleep(0.01)
        writer.close()

    try:
        asyncio.run(main())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert sum(dropped) > 0 and sum(dropped) < 2000


@pytest.mark.slow
def test_server_answers_with_stdout_a_pipe_nobody_reads(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_version(root, "iris", 1, members=2, seed=1)
    port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "server", "--model-repository", str(root), "--port", str(port),
            "--grpc-port", str(grpc_port), "--request-log", "full"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENSEMBLE_WARMUP_RUNS": "1"}
    with (tmp_path / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)  # never read
        try:
            with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=5) as client:
                end = time.monotonic() + 60
                while time.monotonic() < end:
                    assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
                    try:
                        if client.get("/v2/health/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.05)
                body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                    "data": [0.1, 0.2, 0.3, 0.4]}]}  # fmt: skip
                start = time.monotonic()
                for i in range(REQUESTS):  # each within 5 s (the client's timeout), all within 60 s
                    assert client.post("/v2/models/iris/infer", json=body).status_code == 200, i
                    assert time.monotonic() - start < 60
                assert client.get("/v2/health/live").status_code == 200
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            assert proc.stdout is not None
            proc.stdout.close()
