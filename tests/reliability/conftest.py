"""One real server over a repository with good and deliberately broken models, shared by the module tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.onnx_repo import corrupt_manifest, numpy_member, write_version
from tests.helpers.server_process import ServerProcess

N_FEATURES = 4
MAX_BODY_BYTES = 200_000
MAX_REQUEST_ROWS = 64


class Repo:
    """The repository on disk and the weights of its good model, to compute exact answers in numpy."""

    def __init__(self, root: Path, weights: list) -> None:
        self.root, self.weights = root, weights

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's mean probabilities for `x`, as the server computes them (float64 here)."""
        return np.mean([numpy_member(w, x, "classification") for w in self.weights], axis=0)


def build_repo(root: Path) -> Repo:
    """``iris`` (good, 4 features, 3 classes; also a stray folder ``¹``), ``corrupt`` (ONNX bytes that do
    not parse, right sha256), ``badsha`` (wrong sha256), ``badmanifest`` (manifest.json is not a manifest)."""
    weights = write_version(root, "iris", 1, members=3, hidden=[8], seed=1)
    write_version(root, "corrupt", 1, seed=2)
    member = root / "corrupt" / "1" / "member-0.onnx"
    member.write_bytes(b"this is not an onnx protobuf" * 10)
    manifest = root / "corrupt" / "1" / "manifest.json"
    doc = json.loads(manifest.read_text())
    import hashlib

    doc["members"][0]["sha256"] = hashlib.sha256(member.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    write_version(root, "badsha", 1, seed=3)
    corrupt_manifest(root, "badsha", 1)
    write_version(root, "badmanifest", 1, seed=4)
    (root / "badmanifest" / "1" / "manifest.json").write_text('{"name": "badmanifest", "version": "one"')
    # A version folder whose name is a digit to str.isdigit() but not to int(): skipped, not a crash.
    (root / "iris" / "\u00b9").mkdir()
    return Repo(root, weights)


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build_repo(tmp_path_factory.mktemp("reliability-repo"))


def start(repo: Path, env: dict[str, str], log: Path) -> ServerProcess:
    proc = ServerProcess(repo, {"ENSEMBLE_WARMUP_RUNS": "1", **env}, log)
    try:
        proc.wait_live()
        proc.wait_loaded()
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="session")
def server(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default security settings (no admin token, no CORS), small limits so that tests can pass them."""
    env = {
        "ENSEMBLE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "ENSEMBLE_MAX_REQUEST_ROWS": str(MAX_REQUEST_ROWS),
        "ENSEMBLE_MAX_BATCH_SIZE": "32",
    }
    proc = start(repo.root, env, tmp_path_factory.mktemp("log") / "server.log")
    yield proc
    proc.stop()


ADMIN_TOKEN = "reliability-admin-token"
CORS_ORIGIN = "https://app.example"
OPEN_SERVER_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def open_server(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Only the good model, with the opt-in settings on (admin token, CORS origin, non-finite inputs) and
    a short request timeout."""
    root = tmp_path_factory.mktemp("good-repo")
    shutil.copytree(repo.root / "iris", root / "iris")
    env = {
        "ENSEMBLE_ADMIN_TOKEN": ADMIN_TOKEN,
        "ENSEMBLE_CORS_ORIGINS": f'["{CORS_ORIGIN}"]',
        "ENSEMBLE_ALLOW_NONFINITE": "true",
        "ENSEMBLE_REQUEST_TIMEOUT_S": str(OPEN_SERVER_TIMEOUT_S),
    }
    proc = start(root, env, tmp_path_factory.mktemp("log") / "open-server.log")
    yield proc
    proc.stop()


def v2_body(rows: np.ndarray | list) -> dict:
    x = np.asarray(rows, dtype=np.float64)
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
