"""The data plane's scheduling parameters (Triton's request ``timeout`` and ``priority``), in process."""

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from server.lifecycle import Services, build_services
from server.settings import Settings
from testing.repositories import Repository


@pytest.fixture
def app(repo: Repository) -> Iterator[tuple[TestClient, Services]]:
    services = build_services(Settings(model_repository=repo.root, warmup_runs=0, max_batch_size=8))
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        end = time.monotonic() + 30
        while client.get("/v2/models/iris/ready").status_code != 200 and time.monotonic() < end:
            time.sleep(0.02)
        yield client, services


def body(**parameters: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
    return {"inputs": [tensor], "parameters": parameters}


def test_priority_maps_to_the_batch_queue_level_and_zero_is_the_default(
    app: tuple[TestClient, Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = app
    batcher = services.dataplane.lookup("iris", None).batcher
    assert batcher is not None and batcher.priority_levels == 3
    levels: list[int] = []
    submit = batcher.submit

    async def spy(x: Any, deadline: float, timing: Any = None, level: int = 0) -> Any:
        levels.append(level)
        return await submit(x, deadline, timing, level)

    monkeypatch.setattr(batcher, "submit", spy)
    for params in ({}, {"priority": 0}, {"priority": 1}, {"priority": 3}):
        assert client.post("/v2/models/iris/infer", json=body(**params)).status_code == 200
    assert levels == [1, 1, 0, 2]  # the default level is 2 of 3 (index 1); 1 is first


@pytest.mark.parametrize("priority", [4, -1, "high", 1.5, True])
def test_priority_outside_the_levels_is_400(app: tuple[TestClient, Services], priority: Any) -> None:
    client, _ = app
    r = client.post("/v2/models/iris/infer", json=body(priority=priority))
    assert r.status_code == 400 and "'priority' must be 0" in r.json()["error"]


def test_request_timeout_in_microseconds_is_honoured(app: tuple[TestClient, Services]) -> None:
    client, _ = app
    r = client.post("/v2/models/iris/infer", json=body(timeout=1))  # 1 us: gone before it can run
    assert r.status_code == 504 and "timed out" in r.json()["error"]
    assert client.post("/v2/models/iris/infer", json=body(timeout=10_000_000)).status_code == 200
    assert client.post("/v2/models/iris/infer", json=body(timeout=0)).status_code == 200  # none of its own
    stats = client.get("/v2/models/iris/versions/2/stats").json()["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 2


@pytest.mark.parametrize("timeout", [-1, "100", 0.5, False])
def test_bad_timeout_is_400(app: tuple[TestClient, Services], timeout: Any) -> None:
    client, _ = app
    r = client.post("/v2/models/iris/infer", json=body(timeout=timeout))
    assert r.status_code == 400 and "'timeout'" in r.json()["error"]


def test_model_config_names_the_priority_levels(app: tuple[TestClient, Services]) -> None:
    client, _ = app
    batching = client.get("/v2/models/iris/config").json()["dynamic_batching"]
    assert batching["priority_levels"] == 3 and batching["default_priority_level"] == 2


def test_a_transport_deadline_already_past_is_504_and_counted(app: tuple[TestClient, Services]) -> None:
    """gRPC passes its call's deadline to DataPlane.infer; a deadline gone by is a Timeout (504)."""
    from server.errors import Timeout
    from server.protocol.tensors import InferenceRequest, InputTensor

    client, services = app
    x = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    request = InferenceRequest("iris", None, None, {}, (InputTensor("input", "FP32", (1, 4), x),))

    async def late() -> None:
        await services.dataplane.infer(request, protocol="grpc", deadline=time.perf_counter() - 0.001)

    assert client.portal is not None
    with pytest.raises(Timeout):
        client.portal.call(late)
    assert 'outcome="504",protocol="grpc"' in client.get("/metrics").text
