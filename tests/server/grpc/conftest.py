"""One real server process for the gRPC client tests: `iris` (classification) and `reg` (regression)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from testing.repositories import write_version
from testing.server_process import ServerProcess, running_server

FEATURES = {"iris": 4, "reg": 3}
OUTPUTS = {"iris": ["probabilities", "label", "spread"], "reg": ["prediction", "spread"]}
ADMIN_TOKEN = "s3cret"


@pytest.fixture(scope="session")
def grpc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc_repo")
    write_version(root, "iris", 1, members=3, hidden=[8], seed=31)
    write_version(root, "reg", 1, task="regression", n_features=FEATURES["reg"], members=4, seed=32)
    return root


@pytest.fixture(scope="session")
def grpc_server(grpc_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "ENSEMBLE_WARMUP_RUNS": "1",
        "ENSEMBLE_MAX_BATCH_SIZE": "64",
        "ENSEMBLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0",
    }
    with running_server(grpc_repo, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


def rows(n: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)
