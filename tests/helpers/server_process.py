"""A real server process (`python -m server`) on 127.0.0.1 and a free port, for integration tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, repo: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()  # every test server serves gRPC too, on a port of its own
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log = log
        # Keep an inherited PYTHONPATH (the GPU check installs packages into a folder named there).
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "PYTHONPATH": path, **env}
        self._log_file = log.open("wb")
        argv = [sys.executable, "-m", "server", "--model-repository", str(repo), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*argv, "--grpc-port", str(self.grpc_port)],
            cwd=ROOT,
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_live(self, timeout_s: float = 30) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if self.client.get("/v2/health/live").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)
        raise TimeoutError("server never became live")

    def wait_loaded(self, timeout_s: float = 60) -> None:
        """Until the first repository scan is over (ready, or not ready only because of broken models)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            r = self.client.get("/v2/health/ready")
            if r.status_code == 200 or not r.json()["loading"]:
                return
            time.sleep(0.05)
        raise TimeoutError("server never finished loading")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


@contextlib.contextmanager
def running_server(repo: Path, env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    """A server that is live and has finished its first repository scan; stopped on exit."""
    proc = ServerProcess(repo, env, log)
    try:
        proc.wait_live()
        proc.wait_loaded()
        yield proc
    finally:
        proc.stop()


def wait_for(condition: Callable[[], bool], what: str = "condition", timeout_s: float = 20) -> None:
    """Poll `condition` every 50 ms until it holds; fail the test after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
