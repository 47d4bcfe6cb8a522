"""The inference fast path (server.fastpath) answers exactly as the FastAPI routes it short-circuits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.fastpath import match
from server.metrics import Metrics
from server.settings import Settings
from testing.repositories import Repository

SETTINGS = {"warmup_runs": 0, "max_batch_size": 8, "max_body_bytes": 4000}


def loaded(client: TestClient) -> TestClient:
    """The client once the app's first load has finished (it loads in the background)."""
    deadline = time.monotonic() + 30
    while not client.app.state.registry.loaded_once:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the models did not load within 30 s"
        time.sleep(0.02)
    return client


@pytest.fixture
def clients(repo: Repository) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path on, fast path off): two apps on the same repository."""
    fast = create_app(Settings(model_repository=repo.root, **SETTINGS))
    slow = create_app(Settings(model_repository=repo.root, **SETTINGS))
    slow.fast_app = None  # type: ignore[attr-defined]
    with (
        TestClient(fast, raise_server_exceptions=False) as a,
        TestClient(slow, raise_server_exceptions=False) as b,
    ):
        yield loaded(a), loaded(b)


def _binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(x, "<f4").tobytes()
    header = json.dumps(
        {
            "id": "r1",
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "spread"}],
        }
    ).encode()  # fmt: skip
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + raw, headers


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
V2_JSON = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": ROWS}]}
CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("v1 ok", "/v1/models/iris:predict", json.dumps({"instances": ROWS}).encode(), {}),
    ("v1 regression", "/v1/models/reg:predict", b'{"instances": [[1, 2, 3]]}', {}),
    ("v2 json ok", "/v2/models/iris/infer", json.dumps(V2_JSON).encode(), {}),
    ("v2 version ok", "/v2/models/iris/versions/1/infer", json.dumps(V2_JSON).encode(), {}),
    ("v2 binary ok", "/v2/models/iris/infer", *_binary_body(np.array(ROWS))),
    ("not json", "/v2/models/iris/infer", b"{nope", {}),
    ("empty body", "/v1/models/iris:predict", b"", {}),
    ("wrong width", "/v1/models/iris:predict", b'{"instances": [[1, 2]]}', {}),
    ("unknown model", "/v2/models/nope/infer", json.dumps(V2_JSON).encode(), {}),
    ("bad model name", "/v1/models/NO%20PE:predict", b"{}", {}),
    ("unknown version", "/v2/models/iris/versions/9/infer", json.dumps(V2_JSON).encode(), {}),
    ("bad version", "/v2/models/iris/versions/x/infer", json.dumps(V2_JSON).encode(), {}),
    ("broken model", "/v2/models/broken/infer", json.dumps(V2_JSON).encode(), {}),
    ("too large", "/v1/models/iris:predict", b'{"instances": [' + b"[1,2,3,4]," * 500 + b"[1,2,3,4]]}", {}),
    ("bad header length", "/v2/models/iris/infer", json.dumps(V2_JSON).encode(),
     {"Inference-Header-Content-Length": "x"}),
    ("trailing slash", "/v2/models/iris/infer/", json.dumps(V2_JSON).encode(), {}),
]  # fmt: skip


@pytest.mark.parametrize(("what", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_answers_like_fastapi(
    clients: tuple[TestClient, TestClient], what: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast, slow = clients
    a = fast.post(path, content=body, headers=headers, follow_redirects=False)
    b = slow.post(path, content=body, headers=headers, follow_redirects=False)
    assert a.status_code == b.status_code, what
    assert a.content == b.content, what
    for name in ("content-type", "content-length", "inference-header-content-length", "connection"):
        assert a.headers.get(name) == b.headers.get(name), (what, name)
    if a.status_code >= 400:
        assert set(a.json()) == {"error"}


def test_match_takes_only_the_inference_routes() -> None:
    assert match("/v2/models/iris/infer") == ("iris", None, "v2")
    assert match("/v2/models/iris/versions/3/infer") == ("iris", "3", "v2")
    assert match("/v1/models/iris:predict") == ("iris", None, "v1")
    others = ["/v2/models/iris/infer/", "/v2/models/a/b/infer", "/v2/models//infer", "/v1/models/:predict"]
    others += ["/v2/models/iris/ready", "/v2/repository/index", "/v1/models/a/b:predict"]
    for other in others:
        assert match(other) is None, other


def test_fast_path_counts_every_request(repo: Repository) -> None:
    metrics = Metrics()
    app = create_app(Settings(model_repository=repo.root, **SETTINGS), metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        loaded(client)
        assert client.post("/v1/models/iris:predict", json={"instances": ROWS}).status_code == 200
        assert client.post("/v1/models/iris:predict", json={"instances": [[1]]}).status_code == 400
        assert client.post("/v1/models/iris:predict", content=b"x" * 5000).status_code == 413
    r = metrics.registry.get_sample_value
    labels = {"model": "iris", "version": "2", "protocol": "v1"}
    assert r("ensemble_requests_total", {**labels, "outcome": "ok"}) == 1
    assert r("ensemble_requests_total", {**labels, "outcome": "400"}) == 1
    assert r("ensemble_requests_total", {**labels, "outcome": "413"}) == 1
    assert r("ensemble_request_duration_seconds_count", labels) == 3
    assert r("ensemble_in_flight_requests", {"model": "iris", "version": "2"}) == 0
    assert r("ensemble_inferred_rows_total", {"model": "iris", "version": "2"}) == 2


def test_with_cors_the_routes_answer_with_cors_headers(repo: Repository) -> None:
    app = create_app(Settings(model_repository=repo.root, cors_origins=["http://ui.example"], **SETTINGS))
    with TestClient(app) as client:
        r = loaded(client).post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"Origin": "http://ui.example"}
        )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"


def test_inference_does_not_go_through_the_router(repo: Repository) -> None:
    app = create_app(Settings(model_repository=repo.root, **SETTINGS))
    app.router.routes = [r for r in app.router.routes if "infer" not in r.path and "predict" not in r.path]
    with TestClient(app) as client:
        assert loaded(client).post("/v1/models/iris:predict", json={"instances": ROWS}).status_code == 200
        assert client.post("/v2/models/iris/infer", json=V2_JSON).status_code == 200
        app.fast_app = None  # type: ignore[attr-defined]
        assert client.post("/v2/models/iris/infer", json=V2_JSON).status_code == 404


def test_while_draining_inference_is_refused_as_by_the_middleware(
    clients: tuple[TestClient, TestClient],
) -> None:
    answers = []
    for client in clients:
        client.app.state.drain.start(30)  # type: ignore[attr-defined]
        r = client.post("/v1/models/iris:predict", json={"instances": ROWS})
        answers.append((r.status_code, r.content, r.headers.get("connection")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 503 and answers[0][2] == "close"


def test_queue_depth_and_in_flight_gauges_read_the_live_counts() -> None:
    import asyncio
    import threading

    from server.batching import Batcher

    gate = threading.Event()

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        gate.wait(10)
        return {"y": x}

    metrics = Metrics()
    value = metrics.registry.get_sample_value
    mv = {"model": "m", "version": "1"}

    async def main() -> None:
        b = Batcher(infer, max_batch_size=4, max_queue_delay_s=0, max_queue_rows=100, max_request_rows=10,
                    metrics=metrics, labels=("m", "1"))  # fmt: skip
        b.start()
        deadline = time.perf_counter() + 10
        running = asyncio.ensure_future(b.submit(np.zeros((3, 2), np.float32), deadline))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in infer
        queued = asyncio.ensure_future(b.submit(np.zeros((2, 2), np.float32), deadline))
        await asyncio.sleep(0.01)
        assert value("ensemble_queue_depth", mv) == 2
        metrics.model("m", "1").request_started()
        assert value("ensemble_in_flight_requests", mv) == 1
        metrics.model("m", "1").request_finished()
        gate.set()
        await asyncio.gather(running, queued)
        assert value("ensemble_queue_depth", mv) == 0
        assert value("ensemble_in_flight_requests", mv) == 0
        await b.close()

    asyncio.run(main())


def test_a_body_that_does_not_arrive_in_time_is_408_and_other_cancels_stay_cancels() -> None:
    import asyncio

    from server.errors import RequestTimeout
    from server.fastpath import read_asgi_body

    async def stalled() -> dict:
        await asyncio.Event().wait()  # the rest of the body never comes
        return {}

    async def trickle_then_done() -> dict:
        await asyncio.sleep(0.01)
        return {"type": "http.request", "body": b"abc", "more_body": False}

    async def main() -> None:
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeout, match=r"did not arrive within 0\.05 seconds"):
            await read_asgi_body(stalled, None, 100, 0.05)
        assert 0.04 < time.perf_counter() - t0 < 1.0
        assert await read_asgi_body(trickle_then_done, "3", 100, 5.0) == b"abc"
        task = asyncio.ensure_future(read_asgi_body(stalled, None, 100, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()  # a cancellation from elsewhere (e.g. shutdown) is not a timeout
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)

    asyncio.run(main())
