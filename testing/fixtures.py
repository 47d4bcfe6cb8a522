"""The pytest fixtures every suite shares (registered by tests/conftest.py): the server suite's model
repository and one server process over it.

A suite that needs other models or settings overrides `repo` or `server` in its own conftest with the
builders of `testing.repositories` and the launcher of `testing.server_process`, so every `repo` is a
`Repository` and every `server` a `ServerProcess`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.repositories import Repository, serving_repository
from testing.server_process import ServerProcess, running_server

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
