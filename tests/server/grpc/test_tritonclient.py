"""tritonclient.grpc (sync, asyncio and streaming) against a real server: its answers are HTTP's."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from tests.server.grpc.conftest import ADMIN_TOKEN, FEATURES, OUTPUTS, rows

pytestmark = pytest.mark.slow


def grpc_input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def http_answer(server: ServerProcess, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The same rows over HTTP (V2, binary tensors): what gRPC must answer."""
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        return {name: result.as_numpy(name) for name in OUTPUTS[model]}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("model", ["iris", "reg"])
def test_sync_client_matches_http(grpc_server: ServerProcess, model: str) -> None:
    x = rows(5, FEATURES[model], seed=1)
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
        result = client.infer(model, [grpc_input(x)], request_id="r-5")
        assert result.get_response().id == "r-5"
        got = {name: result.as_numpy(name) for name in OUTPUTS[model]}
    assert_same(got, http_answer(grpc_server, model, x))


def test_requested_outputs_come_in_the_order_asked(grpc_server: ServerProcess) -> None:
    x = rows(2, FEATURES["iris"], seed=2)
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("label", "probabilities")]
        result = client.infer("iris", [grpc_input(x)], outputs=outputs)
        assert [o.name for o in result.get_response().outputs] == ["label", "probabilities"]
        np.testing.assert_array_equal(result.as_numpy("label"), http_answer(grpc_server, "iris", x)["label"])


def test_metadata_config_and_statistics_match_http(grpc_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        http = grpc_server.client
        meta = client.get_model_metadata("iris", as_json=True)
        want = http.get("/v2/models/iris").json()
        assert (meta["name"], meta["versions"], meta["platform"]) == (
            want["name"],
            want["versions"],
            want["platform"],
        )
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]] == [
            (t["name"], t["datatype"], t["shape"]) for t in want["outputs"]
        ]
        config = client.get_model_config("iris", as_json=True)["config"]
        want_config = http.get("/v2/models/iris/config").json()
        assert int(config["max_batch_size"]) == want_config["max_batch_size"]
        assert [i["name"] for i in config["input"]] == [i["name"] for i in want_config["input"]]
        server_meta = client.get_server_metadata(as_json=True)
        assert server_meta["extensions"] == http.get("/v2").json()["extensions"]
        client.infer("iris", [grpc_input(rows(1, 4))])
        stats = client.get_inference_statistics("iris", as_json=True)["model_stats"][0]
        assert stats["name"] == "iris" and int(stats["inference_stats"]["success"]["count"]) >= 1


def test_metrics_count_grpc_requests(grpc_server: ServerProcess) -> None:
    def count(outcome: str) -> float:
        labels = f'{{model="reg",outcome="{outcome}",protocol="grpc",version="1"}}'
        for line in grpc_server.client.get("/metrics").text.splitlines():
            if line.startswith(f"ensemble_requests_total{labels} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    ok, bad = count("ok"), count("400")
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        client.infer("reg", [grpc_input(rows(3, FEATURES["reg"]))])
        with pytest.raises(InferenceServerException):
            client.infer("reg", [grpc_input(rows(3, 7))])  # 7 features for a 3-feature model
    assert count("ok") == ok + 1 and count("400") == bad + 1


def test_asyncio_client_matches_http(grpc_server: ServerProcess) -> None:
    xs = [rows(1 + i, FEATURES["iris"], seed=10 + i) for i in range(8)]

    async def main() -> list[dict[str, np.ndarray]]:
        async with aioclient.InferenceServerClient(grpc_server.grpc_target) as client:
            assert await client.is_server_ready()

            async def one(x: np.ndarray) -> dict[str, np.ndarray]:
                tensor = aioclient.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer("iris", [tensor])
                return {name: result.as_numpy(name) for name in OUTPUTS["iris"]}

            return await asyncio.gather(*(one(x) for x in xs))  # concurrent: batched together

    for x, got in zip(xs, asyncio.run(main()), strict=True):
        assert_same(got, http_answer(grpc_server, "iris", x))


def test_streaming_matches_http_and_reports_errors_in_band(grpc_server: ServerProcess) -> None:
    answers: queue.Queue = queue.Queue()
    xs = {f"s{i}": rows(2, FEATURES["reg"], seed=40 + i) for i in range(4)}
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, x in xs.items():
            client.async_stream_infer("reg", [grpc_input(x)], request_id=request_id)
        client.async_stream_infer("nope", [grpc_input(xs["s0"])], request_id="bad")
        got = [answers.get(timeout=20) for _ in range(len(xs) + 1)]
        client.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "Model 'nope' does not exist." in str(errors[0])
    results = {result.get_response().id: result for result, error in got if error is None}
    assert sorted(results) == sorted(xs)
    for request_id, x in xs.items():
        answer = {name: results[request_id].as_numpy(name) for name in OUTPUTS["reg"]}
        assert_same(answer, http_answer(grpc_server, "reg", x))


def test_repository_calls_need_the_token(grpc_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_repository_index()
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as info:
            client.get_model_repository_index(headers={"authorization": "Bearer wrong"})
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
        assert {(m["name"], m["state"]) for m in index} == {("iris", "READY"), ("reg", "READY")}
        client.load_model("reg", headers=auth)
        assert client.is_model_ready("reg")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope", headers=auth)
        assert info.value.status() == "StatusCode.NOT_FOUND"


def test_priority_and_timeout_parameters_are_honoured_over_grpc(grpc_server: ServerProcess) -> None:
    """tritonclient sends Triton's `priority` and `timeout` (µs) as request parameters."""
    x = rows(1, FEATURES["iris"], seed=3)
    with grpcclient.InferenceServerClient(grpc_server.grpc_target) as client:
        result = client.infer("iris", [grpc_input(x)], priority=1, timeout=10_000_000)
        assert result.as_numpy("label").shape == (1,)
        with pytest.raises(InferenceServerException) as bad:
            client.infer("iris", [grpc_input(x)], priority=9)
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "priority" in bad.value.message()
        with pytest.raises(InferenceServerException) as late:
            client.infer("iris", [grpc_input(x)], timeout=1)  # 1 µs: gone before it can run
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED", late.value
