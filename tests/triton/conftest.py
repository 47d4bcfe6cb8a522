"""One real server process for the Triton-client tests: `iris` (classification) and `reg` (regression)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.repositories import Repository, client_repository
from testing.server_process import ServerProcess, running_server

IRIS_FEATURES, REG_FEATURES = 4, 3


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return client_repository(tmp_path_factory.mktemp("triton_repo"))


@pytest.fixture(scope="session")
def server(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_MAX_BATCH_SIZE": "64", "ENSEMBLE_MAX_QUEUE_DELAY_MS": "1.5"}
    with running_server(repo.root, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc
