"""The pytest fixtures every suite shares (registered by tests/conftest.py): the server suite's model
repository and one server process over it, and the table repository (trained once per session).

A suite that needs other models or settings overrides `repo` or `server` in its own conftest with the
builders of `testing.repositories` and the launcher of `testing.server_process`, so every `repo` is a
`Repository` and every `server` a `ServerProcess`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.repositories import Repository, serving_repository
from testing.server_process import ServerProcess, running_server
from testing.tables import table_repository

ADMIN_TOKEN = "s3cret"
MAX_BODY_BYTES = 100_000


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """iris (classification, versions 1 and 2), reg (regression), broken (bad checksum)."""
    return serving_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server over `repo` with an admin token and a small body limit."""
    env = {
        "ENSEMBLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "ENSEMBLE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "ENSEMBLE_WARMUP_RUNS": "1",
    }
    with running_server(repo.root, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="session")
def table_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`generated` and `penguins`, tiny table models trained by the CLI (testing.tables), once a session:
    the HTTP and gRPC table tests serve the same models."""
    return table_repository(tmp_path_factory.mktemp("tables"))
