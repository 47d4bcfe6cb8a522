"""Fixtures: small model repositories and real server processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.onnx_repo import corrupt_manifest, write_version

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, repo: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--model-repository", str(repo), "--port", str(self.port)],
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


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris (classification, versions 1 and 2), reg (regression), broken (bad checksum)."""
    root = tmp_path_factory.mktemp("repo")
    write_version(root, "iris", 1, members=3, seed=1)
    write_version(root, "iris", 2, members=5, hidden=[8], seed=2)
    write_version(root, "reg", 1, task="regression", n_features=3, members=4, seed=3)
    write_version(root, "broken", 1, seed=4)
    corrupt_manifest(root, "broken", 1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_ADMIN_TOKEN": "s3cret", "ENSEMBLE_MAX_BODY_BYTES": "100000", "ENSEMBLE_WARMUP_RUNS": "1"}
    proc = ServerProcess(repo, env, tmp_path_factory.mktemp("log") / "server.log")
    try:
        proc.wait_live()
        proc.wait_loaded()
        yield proc
    finally:
        proc.stop()
