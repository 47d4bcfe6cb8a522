"""/docs and /redoc render from packaged assets (no CDN), and the OpenAPI document describes the bodies."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from server.lifecycle import build_services
from server.settings import Settings
from testing.repositories import Repository
from testing.server_process import ServerProcess

INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
PREDICT_PATH = "/v1/models/{name}:predict"


def settings_for(repo: Repository) -> Settings:
    return Settings(model_repository=repo.root, warmup_runs=0, repository_poll_interval_s=0)


@pytest.fixture(scope="module")
def client(repo: Repository) -> Iterator[TestClient]:
    app = create_app(build_services(settings_for(repo)))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    html = client.get(page).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 0, url


def test_openapi_describes_inference_bodies(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path in INFER_PATHS:
        body = doc["paths"][path]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/V2InferenceRequest"}
        assert "application/octet-stream" in body  # Triton's binary tensor extension
    predict = doc["paths"][PREDICT_PATH]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/V1PredictRequest"}
    assert set(predict["responses"]) >= {"200", "400", "404", "413", "429", "503", "504"}
    assert {"inputs", "outputs", "id"} <= set(schemas["V2InferenceRequest"]["properties"])
    assert set(schemas["V1PredictRequest"]["properties"]) == {"instances", "inputs"}
    assert schemas["ErrorBody"]["required"] == ["error"]


def render(url: str, profile: Path) -> str:
    """The DOM after Chromium ran the page's scripts; every host but 127.0.0.1 resolves to nothing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    args = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000", "--dump-dom", url,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout


def test_docs_render_in_a_browser_without_network(repo: Repository, tmp_path: Path) -> None:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    server = ServerProcess(repo.root, {"ENSEMBLE_WARMUP_RUNS": "0"}, tmp_path / "server.log")
    try:
        server.wait_live()
        swagger = render(f"{server.url}/docs", tmp_path / "profile-docs")
        redoc = render(f"{server.url}/redoc", tmp_path / "profile-redoc")
    finally:
        server.stop()
    rendered_paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', swagger))
    assert {*INFER_PATHS, PREDICT_PATH, "/v2/health/ready", "/metrics"} <= rendered_paths
    # ReDoc lays out the request body schemas: the V1 body's one field appears in the page.
    assert PREDICT_PATH in redoc and "instances" in redoc


def test_without_the_assets_package_docs_are_off_but_openapi_stays(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.http.docs

    monkeypatch.setattr(server.http.docs, "assets_dir", lambda: None)
    app = create_app(build_services(settings_for(repo)))
    with TestClient(app) as c:
        assert c.get("/docs").status_code == 404
        assert PREDICT_PATH in c.get("/openapi.json").json()["paths"]
