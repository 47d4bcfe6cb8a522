"""Integration: a real server process on 127.0.0.1 serving the `repo` fixture (testing.fixtures)."""

import socket

import numpy as np
import pytest

from testing.server_process import ServerProcess

pytestmark = pytest.mark.slow

ROW = [5.1, 3.5, 1.4, 0.2]


def v2_body(rows: list[list[float]], **extra: object) -> dict:
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}], **extra}


def test_server_metadata_lists_only_implemented_extensions(server: ServerProcess) -> None:
    body = server.client.get("/v2").json()
    assert body["name"] == "ensemble-serving"
    # model_repository because the admin token is set.
    assert body["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    ]
    assert body["providers"] == ["CPUExecutionProvider"]
    assert server.client.get("/v2/health/live").json() == {"live": True}


def test_readiness_is_false_while_a_model_is_broken_but_others_serve(server: ServerProcess) -> None:
    r = server.client.get("/v2/health/ready")
    assert r.status_code == 503
    assert "sha256" in r.json()["models"]["broken"]
    assert server.client.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    r = server.client.get("/v2/models/broken/ready")
    assert r.status_code == 503 and "sha256" in r.json()["error"]
    assert server.client.post("/v1/models/iris:predict", json={"instances": [ROW]}).status_code == 200


def test_model_metadata(server: ServerProcess) -> None:
    meta = server.client.get("/v2/models/iris").json()
    assert meta["name"] == "iris" and meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label", "spread"]
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    assert meta["parameters"]["members"] == 5
    assert server.client.get("/v2/models/iris/versions/2").json()["name"] == "iris"
    assert server.client.get("/v2/models/iris/versions/2/ready").json()["ready"] is True


def test_v2_infer_with_output_selection_and_id(server: ServerProcess) -> None:
    rows = [ROW, [0.0, 0.0, 0.0, 0.0], [6.0, 2.9, 4.5, 1.5]]
    r = server.client.post("/v2/models/iris/infer", json=v2_body(rows, id="req-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "iris" and body["model_version"] == "2"
    out = {o["name"]: o for o in body["outputs"]}
    probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert out["label"]["data"] == probs.argmax(axis=1).tolist() and out["label"]["datatype"] == "INT64"
    assert out["spread"]["shape"] == [3, 3]

    only = server.client.post(
        "/v2/models/iris/infer", json=v2_body(rows, outputs=[{"name": "spread"}])
    ).json()
    assert [o["name"] for o in only["outputs"]] == ["spread"]
    assert only["outputs"][0]["data"] == out["spread"]["data"]


def test_v1_predict_classification_and_regression(server: ServerProcess) -> None:
    body = server.client.post("/v1/models/iris:predict", json={"instances": [ROW, ROW]}).json()
    assert len(body["predictions"]) == 2 and body["predictions"][0].startswith("class_")
    assert len(body["probabilities"][0]) == 3 and len(body["spread"][0]) == 3
    reg = server.client.post("/v1/models/reg:predict", json={"instances": [[1.0, 2.0, 3.0]]}).json()
    assert len(reg["predictions"]) == 1 and len(reg["predictions"][0]) == 2
    assert all(isinstance(v, float) for v in reg["predictions"][0])
    assert reg["model_name"] == "reg" and "probabilities" not in reg


def test_explicit_version_is_served(server: ServerProcess) -> None:
    # version 1 is on disk but the default policy serves only the latest
    r = server.client.post("/v2/models/iris/versions/1/infer", json=v2_body([ROW]))
    assert r.status_code == 404 and "no version 1" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "content", "status", "message"),
    [
        ("/v2/models/iris/infer", b"not json", 400, "not valid UTF-8 JSON"),
        ("/v2/models/iris/infer", b'{"inputs": "\xff"}', 400, "UTF-8"),
        ("/v2/models/iris/infer", b"", 400, "empty"),
        (
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
            400,
            "4 features",
        ),
        (
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
            400,
            "needs 8",
        ),
        (
            "/v2/models/iris/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}]}',
            400,
            "datatype",
        ),
        ("/v1/models/iris:predict", b'{"instances": [[1, 2, 3, 4], [1, 2]]}', 400, "equal length"),
        ("/v1/models/iris:predict", b'{"instances": [[1e300, 2, 3, 4]]}', 400, "infinite"),
        ("/v1/models/iris:predict", b'{"instances": []}', 400, "empty"),
        ("/v1/models/nope:predict", b'{"instances": [[1, 2, 3, 4]]}', 404, "does not exist"),
        ("/v2/models/nope/infer", b"{}", 404, "does not exist"),
        ("/v2/models/iris/versions/9/infer", b"{}", 404, "no version 9"),
        ("/v2/models/iris/versions/x/infer", b"{}", 404, "positive integers"),
        ("/v2/models/..%2Fetc/infer", b"{}", 404, "Not found"),
        ("/v2/models/IRIS;rm/infer", b"{}", 404, "does not exist"),
        ("/v2/models/broken/infer", b"{}", 503, "sha256"),
        ("/nowhere", b"{}", 404, "Not found"),
    ],
)
def test_errors_are_json_with_the_right_status(
    server: ServerProcess, path: str, content: bytes, status: int, message: str
) -> None:
    r = server.client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert message in r.json()["error"]


def test_wrong_method_is_405_json(server: ServerProcess) -> None:
    r = server.client.get("/v2/models/iris/infer")
    assert r.status_code == 405 and r.json() == {"error": "Method not allowed."}


def _raw_exchange(server: ServerProcess, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode("latin-1")


def test_too_large_body_by_content_length_is_413_and_closes(server: ServerProcess) -> None:
    # Only the headers are sent: the server must answer without waiting for a gigabyte.
    text = _raw_exchange(
        server,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n",
    )
    head, _, body = text.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert "connection: close" in head.lower()
    assert '"error"' in body


def test_too_large_chunked_body_is_413_while_streaming(server: ServerProcess) -> None:
    chunk = b"[" + b"1," * 5000 + b"1]"
    parts = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(12)) + b"0\r\n\r\n"
    text = _raw_exchange(
        server,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + parts,
    )
    assert text.startswith("HTTP/1.1 413") and "over 100000 bytes" in text


def test_admin_endpoints_need_the_bearer_token(server: ServerProcess) -> None:
    c = server.client
    assert c.post("/v2/repository/index").status_code == 401
    r = c.post("/v2/repository/index", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and set(r.json()) == {"error"}
    auth = {"Authorization": "Bearer s3cret"}
    index = c.post("/v2/repository/index", headers=auth).json()
    assert {"name": "iris", "version": "2", "state": "READY"} in index
    assert any(row["name"] == "broken" and "sha256" in row.get("reason", "") for row in index)
    r = c.post("/v2/repository/models/broken/load", headers=auth)
    assert r.status_code == 400 and "sha256" in r.json()["error"]
    assert c.post("/v2/repository/models/reg/unload", headers=auth).status_code == 200
    assert c.post("/v1/models/reg:predict", json={"instances": [[1, 2, 3]]}).status_code == 503
    assert c.post("/v2/repository/models/reg/load", headers=auth).status_code == 200
    assert c.post("/v1/models/reg:predict", json={"instances": [[1, 2, 3]]}).status_code == 200
    assert c.post("/v2/repository/models/..%2F/load", headers=auth).status_code == 404


def test_metrics_after_requests(server: ServerProcess) -> None:
    server.client.post("/v1/models/iris:predict", json={"instances": [ROW]})
    text = server.client.get("/metrics").text
    assert 'ensemble_requests_total{model="iris",outcome="ok",protocol="v1",version="2"}' in text
    assert 'ensemble_requests_total{model="iris",outcome="400",protocol="v2",version="2"}' in text
    assert 'ensemble_batch_size_count{model="iris",version="2"}' in text
    assert (
        'ensemble_request_duration_seconds_bucket{le="0.0005",model="iris",protocol="v1",version="2"}' in text
    )
    assert (
        "ensemble_queue_duration_seconds_bucket" in text and "ensemble_compute_duration_seconds_sum" in text
    )
    assert 'ensemble_inferred_rows_total{model="iris",version="2"}' in text
    assert 'ensemble_in_flight_requests{model="iris",version="2"} 0.0' in text
    assert 'ensemble_queue_depth{model="iris",version="2"} 0.0' in text
    assert 'ensemble_model_load_failures_total{model="broken"}' in text
    assert 'provider="CPUExecutionProvider"' in text and "ensemble_model_info{" in text


def test_concurrent_requests_each_get_their_own_rows(server: ServerProcess) -> None:
    import asyncio

    import httpx

    rng = np.random.default_rng(11)
    requests = [rng.standard_normal((int(n), 4)).round(3).tolist() for n in rng.integers(1, 7, size=40)]

    async def send_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            rs = await asyncio.gather(
                *(client.post("/v2/models/iris/infer", json=v2_body(r)) for r in requests)
            )
        return [r.json() for r in rs]

    together = asyncio.run(send_all())
    for rows, body in zip(requests, together, strict=True):
        alone = server.client.post("/v2/models/iris/infer", json=v2_body(rows)).json()
        for got, want in zip(body["outputs"], alone["outputs"], strict=True):
            assert got["shape"] == want["shape"] and got["shape"][0] == len(rows)
            np.testing.assert_allclose(got["data"], want["data"], atol=1e-6)


def test_start_up_log_names_provider_execution_threads_and_warm_up(server: ServerProcess) -> None:
    log = server.log.read_text()
    assert "loaded iris version 2: 5 members, provider CPUExecutionProvider, execution " in log
    assert "intra-op threads, warm-up " in log
    assert "cannot load broken version 1: member file member-0.onnx does not match its sha256" in log
