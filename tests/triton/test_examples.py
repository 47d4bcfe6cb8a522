"""examples/curl.sh and examples/node_client.mjs against a real server; their answers are V1's."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from testing.requests import rows, v1_predict
from testing.server_process import ROOT, ServerProcess
from tests.triton.conftest import IRIS_FEATURES, REG_FEATURES

pytestmark = pytest.mark.slow


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"'{name}' is not installed, so the example that uses it cannot run")
    return path


@pytest.mark.parametrize("model", ["iris", "reg"])
def test_curl_example(server: ServerProcess, model: str) -> None:
    _tool("curl")
    x = rows(1, IRIS_FEATURES if model == "iris" else REG_FEATURES, seed=21)
    row = ",".join(repr(float(v)) for v in x[0])
    run = subprocess.run(
        ["bash", str(ROOT / "examples" / "curl.sh"), server.url, model, row],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    steps = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert list(steps) == ["live", "ready", "metadata", "v2_infer", "v1_predict"]
    assert json.loads(steps["live"]) == {"live": True}
    v1 = v1_predict(server.client, model, x)
    assert json.loads(steps["v1_predict"]) == v1
    v2 = {o["name"]: np.array(o["data"]) for o in json.loads(steps["v2_infer"])["outputs"]}
    first = "probabilities" if model == "iris" else "prediction"
    np.testing.assert_allclose(v2[first], np.ravel(v1[first if model == "iris" else "predictions"]), 1e-6)


def test_curl_example_fails_on_an_unknown_model(server: ServerProcess) -> None:
    _tool("curl")
    run = subprocess.run(
        ["bash", str(ROOT / "examples" / "curl.sh"), server.url, "nope", "1,2,3,4"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode != 0 and "does not exist" in run.stderr


@pytest.mark.parametrize("model", ["iris", "reg"])
def test_node_example_json_and_binary(server: ServerProcess, model: str) -> None:
    node = _tool("node")
    x = rows(3, IRIS_FEATURES if model == "iris" else REG_FEATURES, seed=22)
    run = subprocess.run(
        [node, str(ROOT / "examples" / "node_client.mjs"), server.url, model, json.dumps(x.tolist())],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    v1 = v1_predict(server.client, model, x)
    for kind in ("json", "binary"):
        got = answers[kind]
        np.testing.assert_allclose(np.reshape(got["spread"]["data"], (3, -1)), v1["spread"], rtol=1e-6)
        if model == "iris":
            np.testing.assert_allclose(
                np.reshape(got["probabilities"]["data"], (3, 3)), v1["probabilities"], 1e-6
            )
            assert [f"class_{i}" for i in got["label"]["data"]] == v1["predictions"]
        else:
            assert got["prediction"]["shape"] == [3, 2]
            np.testing.assert_allclose(np.reshape(got["prediction"]["data"], (3, 2)), v1["predictions"], 1e-6)


def test_node_example_reports_a_bad_request(server: ServerProcess) -> None:
    node = _tool("node")
    run = subprocess.run(
        [node, str(ROOT / "examples" / "node_client.mjs"), server.url, "iris", "[[1, 2, 3]]"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 1 and "HTTP 400" in run.stderr and "4 features" in run.stderr
