"""One real server process for the Triton-client tests: `iris` (classification) and `reg` (regression)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.onnx_repo import write_version
from tests.helpers.server_process import ServerProcess, running_server

IRIS_FEATURES, REG_FEATURES = 4, 3


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton_repo")
    write_version(root, "iris", 1, members=3, hidden=[8], seed=11)
    write_version(root, "reg", 1, task="regression", n_features=REG_FEATURES, members=4, seed=12)
    return root


@pytest.fixture(scope="session")
def server(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_MAX_BATCH_SIZE": "64", "ENSEMBLE_MAX_QUEUE_DELAY_MS": "1.5"}
    with running_server(triton_repo, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


def rows(n: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def v1_predict(client: httpx.Client, model: str, x: np.ndarray) -> dict:
    r = client.post(f"/v1/models/{model}:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    return r.json()
