"""tritonclient 2.41.1 (HTTP, sync and asyncio) against a real server: binary and JSON agree with V1."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from testing.requests import rows, v1_predict
from testing.server_process import ServerProcess
from tests.triton.conftest import IRIS_FEATURES, REG_FEATURES

pytestmark = pytest.mark.slow

OUTPUTS = {"iris": ["probabilities", "label", "spread"], "reg": ["prediction", "spread"]}
FEATURES = {"iris": IRIS_FEATURES, "reg": REG_FEATURES}


def client_for(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


def make_input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def check_against_v1(model: str, result: dict[str, np.ndarray], v1: dict) -> None:
    """The V2 outputs for some rows are V1's answers for the same rows."""
    np.testing.assert_allclose(result["spread"], np.array(v1["spread"]).reshape(result["spread"].shape), 1e-6)
    if model == "iris":
        np.testing.assert_allclose(result["probabilities"], v1["probabilities"], rtol=1e-6, atol=1e-7)
        assert [f"class_{i}" for i in result["label"]] == v1["predictions"]
        assert result["label"].dtype == np.int64 and result["label"].shape == (len(v1["predictions"]),)
    else:
        np.testing.assert_allclose(result["prediction"], v1["predictions"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", ["iris", "reg"])
@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_infer_matches_v1(server: ServerProcess, model: str, binary_in: bool, binary_out: bool) -> None:
    x = rows(7, FEATURES[model], seed=3)
    with client_for(server) as client:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in OUTPUTS[model]]
        res = client.infer(model, [make_input(x, binary_in)], outputs=outputs, request_id="r-7")
        assert res.get_response()["id"] == "r-7"
        result = {n: res.as_numpy(n) for n in OUTPUTS[model]}
        # Binary outputs come without 'data' in the JSON header, JSON ones with it.
        for out in res.get_response()["outputs"]:
            assert ("binary_data_size" in out.get("parameters", {})) is binary_out
            assert ("data" in out) is not binary_out
    check_against_v1(model, result, v1_predict(server.client, model, x))


def test_default_request_gets_every_output_binary(server: ServerProcess) -> None:
    """No outputs named: tritonclient sets binary_data_output, and the server returns all outputs binary."""
    x = rows(2, IRIS_FEATURES, seed=5)
    with client_for(server) as client:
        res = client.infer("iris", [make_input(x, True)])
        names = [o["name"] for o in res.get_response()["outputs"]]
        assert names == OUTPUTS["iris"]
        result = {n: res.as_numpy(n) for n in names}
    check_against_v1("iris", result, v1_predict(server.client, "iris", x))


def test_raw_binary_response_headers(server: ServerProcess) -> None:
    x = rows(3, IRIS_FEATURES)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [make_input(x, True)], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    )
    r = server.client.post(
        "/v2/models/iris/infer", content=body, headers={"Inference-Header-Content-Length": str(header_length)}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    probs = np.frombuffer(r.content[length:], "<f4").reshape(3, 3)
    np.testing.assert_allclose(probs, v1_predict(server.client, "iris", x)["probabilities"], rtol=1e-6)
    # A JSON-only request stays JSON.
    r = server.client.post("/v2/models/iris/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x[0].tolist()}]})  # fmt: skip
    assert (
        r.headers["content-type"] == "application/json" and "inference-header-content-length" not in r.headers
    )


def test_bad_binary_request_is_a_400_sentence(server: ServerProcess) -> None:
    x = rows(2, IRIS_FEATURES)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([make_input(x, True)])
    r = server.client.post(
        "/v2/models/iris/infer",
        content=body[:-4],
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert "declare 32 bytes" in r.json()["error"]
    with client_for(server) as client, pytest.raises(InferenceServerException, match="must have 4 features"):
        client.infer("iris", [make_input(rows(1, 5), True)])


def test_health_metadata_and_config_through_the_client(server: ServerProcess) -> None:
    with client_for(server) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris") and client.is_model_ready("reg", "1")
        assert not client.is_model_ready("nope")
        server_meta = client.get_server_metadata()
        assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(server_meta["extensions"])
        assert "model_repository" not in server_meta["extensions"]  # no admin token here
        meta = client.get_model_metadata("iris")
        config = client.get_model_config("iris", "1")
        assert config["max_batch_size"] == 64
        # Triton's priority fields: three levels by default, level 2 for requests that name none.
        assert config["dynamic_batching"] == {
            "max_queue_delay_microseconds": 1500,
            "priority_levels": 3,
            "default_priority_level": 2,
        }
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["version_policy"] == {"latest": {"num_versions": 1}}
        assert config["parameters"]["provider"] == {"string_value": "CPUExecutionProvider"}
        # perf_analyzer's rule: every tensor the config names is in the metadata.
        assert {t["name"] for t in config["output"]} == {t["name"] for t in meta["outputs"]}
        assert {t["name"] for t in config["input"]} == {t["name"] for t in meta["inputs"]}
        assert meta["outputs"][1] == {"name": "label", "datatype": "INT64", "shape": [-1]}


def test_statistics_count_the_requests(server: ServerProcess) -> None:
    with client_for(server) as client:
        before = client.get_inference_statistics("reg")["model_stats"][0]
        for _ in range(3):
            client.infer("reg", [make_input(rows(2, REG_FEATURES), True)])
        after = client.get_inference_statistics("reg", "1")["model_stats"][0]
        everything = client.get_inference_statistics()["model_stats"]
    assert (after["name"], after["version"]) == ("reg", "1")
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["execution_count"] > before["execution_count"]
    for stage in ("success", "queue", "compute_infer"):
        assert after["inference_stats"][stage]["ns"] > before["inference_stats"][stage]["ns"]
    assert [(s["name"], s["version"]) for s in everything] == [("iris", "1"), ("reg", "1")]
    assert httpx.get(f"{server.url}/v2/models/nope/stats").status_code == 404


def test_async_client_binary_and_json(server: ServerProcess) -> None:
    x = rows(4, REG_FEATURES, seed=9)

    async def run() -> list[dict[str, np.ndarray]]:
        async with aioclient.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            assert await client.is_model_ready("reg")
            results = []
            for binary in (True, False):
                tensor = aioclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                outs = [aioclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS["reg"]]
                res = await client.infer("reg", [tensor], outputs=outs)
                results.append({n: res.as_numpy(n) for n in OUTPUTS["reg"]})
            return results

    v1 = v1_predict(server.client, "reg", x)
    for result in asyncio.run(run()):
        check_against_v1("reg", result, v1)
