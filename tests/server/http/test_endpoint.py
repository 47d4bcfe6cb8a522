"""The fast ASGI path (server.http.endpoint): every route of the table answered from raw ASGI, as pinned."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.http.app import ROUTES, create_app
from server.http.endpoint import Endpoint
from server.lifecycle import build_services
from server.metrics import Metrics
from server.settings import Settings
from testing.repositories import Repository

SETTINGS = {"warmup_runs": 0, "max_batch_size": 8, "max_body_bytes": 4000}


def loaded(client: TestClient) -> TestClient:
    """The client once the app's first load has finished (it loads in the background)."""
    deadline = time.monotonic() + 30
    while not client.app.state.services.registry.loaded_once:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the models did not load within 30 s"
        time.sleep(0.02)
    return client


def app_for(repo: Repository, metrics: Metrics | None = None, **over: object) -> object:
    return create_app(build_services(Settings(model_repository=repo.root, **{**SETTINGS, **over}), metrics))


@pytest.fixture
def client(repo: Repository) -> Iterator[TestClient]:
    with TestClient(app_for(repo), raise_server_exceptions=False) as c:
        yield loaded(c)


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
# Each case with the status (and Connection header) FastAPI's routes answered before they were replaced by
# this path (the bodies and headers were compared byte for byte then).
CASES: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("v1 ok", "/v1/models/iris:predict", json.dumps({"instances": ROWS}).encode(), {}, 200),
    ("v1 regression", "/v1/models/reg:predict", b'{"instances": [[1, 2, 3]]}', {}, 200),
    ("v2 json ok", "/v2/models/iris/infer", json.dumps(V2_JSON).encode(), {}, 200),
    ("v2 version ok", "/v2/models/iris/versions/2/infer", json.dumps(V2_JSON).encode(), {}, 200),
    ("v2 version not served", "/v2/models/iris/versions/1/infer", json.dumps(V2_JSON).encode(), {}, 404),
    ("v2 binary ok", "/v2/models/iris/infer", *_binary_body(np.array(ROWS)), 200),
    ("not json", "/v2/models/iris/infer", b"{nope", {}, 400),
    ("empty body", "/v1/models/iris:predict", b"", {}, 400),
    ("wrong width", "/v1/models/iris:predict", b'{"instances": [[1, 2]]}', {}, 400),
    ("unknown model", "/v2/models/nope/infer", json.dumps(V2_JSON).encode(), {}, 404),
    ("bad model name", "/v1/models/NO%20PE:predict", b"{}", {}, 404),
    ("unknown version", "/v2/models/iris/versions/9/infer", json.dumps(V2_JSON).encode(), {}, 404),
    ("bad version", "/v2/models/iris/versions/x/infer", json.dumps(V2_JSON).encode(), {}, 404),
    ("broken model", "/v2/models/broken/infer", json.dumps(V2_JSON).encode(), {}, 503),
    ("too large", "/v1/models/iris:predict", b'{"instances": [' + b"[1,2,3,4]," * 500 + b"[1,2,3,4]]}", {},
     413),
    ("bad header length", "/v2/models/iris/infer", json.dumps(V2_JSON).encode(),
     {"Inference-Header-Content-Length": "x"}, 400),
    ("trailing slash", "/v2/models/iris/infer/", json.dumps(V2_JSON).encode(), {}, 307),
]  # fmt: skip


@pytest.mark.parametrize(("what", "path", "body", "headers", "status"), CASES, ids=[c[0] for c in CASES])
def test_the_routes_answer_as_pinned(
    client: TestClient, what: str, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    r = client.post(path, content=body, headers=headers, follow_redirects=False)
    assert r.status_code == status, (what, r.text[:200])
    assert r.headers["content-length"] == str(len(r.content))
    if status == 307:
        assert r.headers["location"] == "http://testserver/v2/models/iris/infer"
    elif status >= 400:
        assert r.headers["content-type"] == "application/json" and set(r.json()) == {"error"}
        assert r.headers.get("connection") == ("close" if status == 413 else None)
    elif "binary" in what:
        assert r.headers["content-type"] == "application/octet-stream"
        assert int(r.headers["inference-header-content-length"]) < len(r.content)
    else:
        assert r.headers["content-type"] == "application/json"
        assert "inference-header-content-length" not in r.headers


def test_match_reads_the_route_table() -> None:
    endpoint = Endpoint(ROUTES, None, None)

    def target(method: str, path: str) -> object:
        found = endpoint.match(method, path)
        return (found[0].handler.__name__, found[1]) if isinstance(found, tuple) else found

    assert target("POST", "/v2/models/iris/infer") == ("infer", {"name": "iris"})
    assert target("POST", "/v2/models/iris/versions/3/infer") == ("infer", {"name": "iris", "version": "3"})
    assert target("POST", "/v1/models/iris:predict") == ("predict", {"name": "iris"})
    assert target("GET", "/v2/models/stats") == ("all_stats", {})
    assert target("GET", "/v2/models/iris/infer") == ["POST"]  # a 405
    others = ["/v2/models/iris/infer/", "/v2/models/a/b/infer", "/v2/models//infer", "/v1/models/:predict"]
    others += ["/v1/models/a/b:predict", "/docs", "/openapi.json"]
    for other in others:
        assert target("POST", other) is None, other


def test_fast_path_counts_every_request(repo: Repository) -> None:
    metrics = Metrics()
    app = app_for(repo, metrics)
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
    app = app_for(repo, cors_origins=["http://ui.example"])
    with TestClient(app) as client:
        r = loaded(client).post(
            "/v1/models/iris:predict", json={"instances": ROWS}, headers={"Origin": "http://ui.example"}
        )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"


def test_fastapi_holds_no_route_of_the_table(repo: Repository) -> None:
    app = app_for(repo)
    assert not {getattr(r, "path", "") for r in app.router.routes} & {r.path for r in ROUTES}  # type: ignore[attr-defined]
    with TestClient(app) as client:
        assert loaded(client).post("/v1/models/iris:predict", json={"instances": ROWS}).status_code == 200
        assert client.post("/v2/models/iris/infer", json=V2_JSON).status_code == 200
        assert "/v2/models/{name}/infer" in client.get("/openapi.json").json()["paths"]


def test_while_draining_inference_is_refused(client: TestClient) -> None:
    client.app.state.services.drain.start(30)  # type: ignore[attr-defined]
    r = client.post("/v1/models/iris:predict", json={"instances": ROWS})
    assert r.status_code == 503 and r.headers.get("connection") == "close"
    assert r.json() == {"error": "The server is shutting down; send the request to another replica."}


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
    from server.http.body import read_body as read_asgi_body

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
