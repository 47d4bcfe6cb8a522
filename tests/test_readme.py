"""The README's commands work as written: its curl commands and its tritonclient example, run against a
real server serving a model shaped like the default `digits` (64 features, 10 classes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.repositories import digits_like_repository
from testing.server_process import ROOT, ServerProcess, running_server

README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = digits_like_repository(tmp_path_factory.mktemp("readme-repo"), members=3, hidden=[16])
    with running_server(repo.root, {}, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


def test_quick_start_curl_commands_work_as_written(server: ServerProcess) -> None:
    script = next(b for b in _blocks("bash") if "localhost:8000/v1/models/digits:predict" in b)
    # Same commands, pointed at this test's port, and failing on any HTTP error status.
    script = script.replace("localhost:8000", f"127.0.0.1:{server.port}").replace(
        "curl -s ", "curl -sS --fail-with-body "
    )
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert '"predictions"' in out and '"spread"' in out
    assert '"id":"req-1"' in out.replace(" ", "")
    assert '"max_batch_size"' in out
    assert "ensemble_requests_total" in out
    assert '"error"' not in out


def test_tritonclient_example_works_as_written(server: ServerProcess, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http")
    code = next(b for b in _blocks("python") if "tritonclient" in b)
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\[\d( \d)*\]", proc.stdout), proc.stdout
