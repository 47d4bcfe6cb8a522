"""Fixtures: small model repositories and real server processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.onnx_repo import corrupt_manifest, write_version
from tests.helpers.server_process import ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[2]


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
    with running_server(repo, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc
