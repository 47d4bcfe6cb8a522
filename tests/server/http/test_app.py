"""In-process checks of the app wiring (the real-process tests are in test_api.py)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from server.lifecycle import build_services
from server.settings import Settings
from testing.repositories import Repository


@pytest.fixture
def client(repo: Repository) -> Iterator[TestClient]:
    app = create_app(build_services(Settings(model_repository=repo.root, warmup_runs=0, max_batch_size=8)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v2/models/{name}/infer" in paths and "/v1/models/{name}:predict" in paths


def test_unexpected_errors_are_500_json(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> dict:
        raise RuntimeError("bug")

    monkeypatch.setattr(client.app.state.services.dataplane, "server_metadata", boom)  # type: ignore[attr-defined]
    r = client.get("/v2")
    assert r.status_code == 500 and r.json() == {"error": "Internal server error."}


def test_admin_endpoints_are_404_without_a_token(client: TestClient) -> None:
    r = client.post("/v2/repository/index", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert client.get("/v2").json()["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
    ]
