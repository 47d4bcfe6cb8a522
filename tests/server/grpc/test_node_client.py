"""examples/node_grpc_client.mjs (@grpc/grpc-js, @grpc/proto-loader) against a real server: V1's answers.

The two npm packages install from examples/package-lock.json into examples/node_modules (npm's cache in
.cache/npm), as the example's header says; without node or npm the test is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from testing.server_process import ROOT, ServerProcess
from tests.server.grpc.conftest import FEATURES, rows

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "node_grpc_client.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("'node' is not installed, so the Node.js gRPC example cannot run")
    if not (ROOT / "examples" / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("'npm' is not installed, so @grpc/grpc-js cannot be installed for the example")
        cmd = [npm, "ci", "--prefix", str(ROOT / "examples"), "--cache", str(ROOT / ".cache" / "npm")]
        run = subprocess.run([*cmd, "--no-audit", "--no-fund"], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            pytest.skip(f"npm could not install the example's packages: {run.stderr.strip()[-300:]}")
    return path


def run_example(node: str, server: ServerProcess, model: str, payload: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node, str(EXAMPLE), server.grpc_target, model, payload], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("model", ["iris", "reg"])
def test_node_grpc_example(node: str, grpc_server: ServerProcess, model: str) -> None:
    x = rows(3, FEATURES[model], seed=23)
    run = run_example(node, grpc_server, model, json.dumps(x.tolist()))
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["ready"] is True and got["model_version"] == "1"
    outputs = got["outputs"]
    v1 = grpc_server.client.post(f"/v1/models/{model}:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(np.reshape(outputs["spread"]["data"], (3, -1)), v1["spread"], rtol=1e-6)
    if model == "iris":
        assert outputs["probabilities"]["shape"] == [3, 3]
        np.testing.assert_allclose(
            np.reshape(outputs["probabilities"]["data"], (3, 3)), v1["probabilities"], 1e-6
        )
        assert [f"class_{i}" for i in outputs["label"]["data"]] == v1["predictions"]
    else:
        np.testing.assert_allclose(
            np.reshape(outputs["prediction"]["data"], (3, -1)), v1["predictions"], 1e-6
        )


def test_node_grpc_example_reports_the_status(node: str, grpc_server: ServerProcess) -> None:
    run = run_example(node, grpc_server, "iris", "[[1, 2, 3]]")
    assert run.returncode == 1
    assert run.stderr.strip() == "gRPC INVALID_ARGUMENT: Each row must have 4 features; got 3."
    run = run_example(node, grpc_server, "nope", "[[1, 2, 3]]")
    assert (run.returncode, run.stderr.strip()) == (1, "gRPC NOT_FOUND: Model 'nope' does not exist.")
