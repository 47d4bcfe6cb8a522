"""One real server over a repository with good and deliberately broken models, shared by the module tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from testing.repositories import Repository, faulty_repository
from testing.server_process import ServerProcess, started_server

MAX_BODY_BYTES = 200_000
MAX_REQUEST_ROWS = 64
ADMIN_TOKEN = "reliability-admin-token"
CORS_ORIGIN = "https://app.example"
OPEN_SERVER_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """``iris`` (good) beside corrupt, wrongly checksummed and unparsable models."""
    return faulty_repository(tmp_path_factory.mktemp("reliability-repo"))


@pytest.fixture(scope="session")
def server(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default security settings (no admin token, no CORS), small limits so that tests can pass them."""
    env = {
        "ENSEMBLE_WARMUP_RUNS": "1",
        "ENSEMBLE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "ENSEMBLE_MAX_REQUEST_ROWS": str(MAX_REQUEST_ROWS),
        "ENSEMBLE_MAX_BATCH_SIZE": "32",
    }
    proc = started_server(repo.root, env, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def open_server(repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Only the good model, with the opt-in settings on (admin token, CORS origin, non-finite inputs) and
    a short request timeout."""
    root = tmp_path_factory.mktemp("good-repo")
    shutil.copytree(repo.root / "iris", root / "iris")
    env = {
        "ENSEMBLE_WARMUP_RUNS": "1",
        "ENSEMBLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "ENSEMBLE_CORS_ORIGINS": f'["{CORS_ORIGIN}"]',
        "ENSEMBLE_ALLOW_NONFINITE": "true",
        "ENSEMBLE_REQUEST_TIMEOUT_S": str(OPEN_SERVER_TIMEOUT_S),
    }
    proc = started_server(root, env, tmp_path_factory.mktemp("log") / "open-server.log")
    yield proc
    proc.stop()
