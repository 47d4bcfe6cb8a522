"""Security: admin endpoints off by default and token-guarded when on (compared in constant time), no
dangerous code in ``server/``, path-like model names refused over HTTP, CORS headers only when configured.
The image's non-root user is checked by tests/deploy/test_dockerfile.py
(test_final_stage_is_non_root_exec_form_and_exposes_8000)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from server.dataplane import DataPlane
from testing.server_process import ServerProcess
from tests.reliability.conftest import ADMIN_TOKEN, CORS_ORIGIN
from tests.reliability.rawhttp import request
from tests.reliability.record import record

SERVER_DIR = Path(__file__).resolve().parents[2] / "server"
ADMIN = ["/v2/repository/index", "/v2/repository/models/iris/load", "/v2/repository/models/iris/unload"]
# Modules that run code from data (pickle & co.) or pull the training half (torch) into the server.
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "torch", "training"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


@pytest.mark.parametrize("path", ADMIN)
def test_admin_endpoints_are_404_by_default(server: ServerProcess, path: str) -> None:
    r = server.client.post(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert "model_repository" not in server.client.get("/v2").json()["extensions"]
    record("security", f"POST {path}, no admin token configured", "404", str(r.status_code))


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Basic dXNlcjpwYXNz", 401),
        (f"Token {ADMIN_TOKEN}", 401),
        ("Bearer", 401),
        ("Bearer wrong", 403),
        (f"Bearer {ADMIN_TOKEN[:-1]}", 403),
        (f"Bearer {ADMIN_TOKEN}x", 403),
        (f"Bearer {ADMIN_TOKEN.upper()}", 403),
        (f"Bearer {ADMIN_TOKEN}", 200),
        (f"bearer {ADMIN_TOKEN}", 200),
    ],
)
def test_admin_token(open_server: ServerProcess, authorization: str | None, status: int) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = open_server.client.post("/v2/repository/index", headers=headers)
    shown = "none" if authorization is None else authorization.replace(ADMIN_TOKEN, "<token>")
    record("security", f"admin index with Authorization: {shown}", str(status), str(r.status_code))
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer" and set(r.json()) == {"error"}
    if status == 403:
        assert set(r.json()) == {"error"}


@pytest.mark.parametrize(
    "name",
    ["..%2F..%2Fetc", "%2e%2e", "..", "..%5Cwin", "iris%2F..%2Firis", "a" * 3000, "iris%00", "IRIS", ".iris"],
)
def test_admin_load_refuses_path_like_names(open_server: ServerProcess, name: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = request(open_server.port, "POST", f"/v2/repository/models/{name}/load", headers=headers)
    record("security", f"admin load of model '{name[:40]}'", "404", str(r.status))
    assert r.status == 404, r.body[:200]
    # Nothing was loaded or unloaded by it: the real model still serves.
    assert open_server.client.get("/v2/models/iris/ready").status_code == 200


def test_admin_token_is_compared_in_constant_time() -> None:
    source = inspect.getsource(DataPlane.check_admin)
    assert "hmac.compare_digest(" in source
    assert "== token" not in source and "token ==" not in source


def python_files() -> list[Path]:
    return sorted(p for p in SERVER_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def test_server_has_no_pickle_torch_eval_or_exec() -> None:
    found = []
    files = python_files()
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.split(".")[0] in FORBIDDEN_MODULES]  # fmt: skip
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{path.name}: from {node.module} import ...")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in FORBIDDEN_CALLS
            ):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}(...)")
            elif isinstance(node, ast.keyword) and node.arg == "shell":
                found.append(f"{path.name}:{node.value.lineno}: shell=...")
    # And plainly, as text, in case of code the parser sees differently (strings handed to a runtime).
    for path in files:
        text = path.read_text()
        found += [f"{path.name}: text {word!r}" for word in ("pickle", "import torch", "eval(", "exec(")
                  if word in text]  # fmt: skip
    record("security", "server/ scanned for pickle, torch, eval(, exec(", "none", str(found or "none"))
    assert found == []


def test_no_cors_headers_unless_configured(server: ServerProcess) -> None:
    r = server.client.get("/v2", headers={"Origin": CORS_ORIGIN})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("access-control-")]
    pre = server.client.options(
        "/v2/models/iris/infer",
        headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert not [h for h in pre.headers if h.startswith("access-control-")]
    assert pre.status_code == 405 and set(pre.json()) == {"error"}
    record(
        "security",
        "Origin header, cors_origins unset",
        "no CORS headers",
        f"none; preflight {pre.status_code}",
    )


def test_cors_headers_only_for_the_configured_origin(open_server: ServerProcess) -> None:
    c = open_server.client
    r = c.get("/v2", headers={"Origin": CORS_ORIGIN})
    assert r.headers["access-control-allow-origin"] == CORS_ORIGIN
    other = c.get("/v2", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    pre = c.options(
        "/v2/models/iris/infer", headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == CORS_ORIGIN
    bad = c.options(
        "/v2/models/iris/infer",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    record("security", f"cors_origins=[{CORS_ORIGIN}]", "headers for that origin only",
           f"allowed origin: {r.headers['access-control-allow-origin']}; other origin: none; "
           f"preflight {pre.status_code}/{bad.status_code}")  # fmt: skip


def test_nonfinite_inputs_are_accepted_only_when_allowed(
    open_server: ServerProcess, server: ServerProcess
) -> None:
    import struct

    body = struct.pack("<4f", 1.0, float("nan"), 2.0, 3.0)
    header = (
        b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}'
    )
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    allowed = open_server.client.post("/v2/models/iris/infer", content=header + body, headers=headers)
    refused = server.client.post("/v2/models/iris/infer", content=header + body, headers=headers)
    record("input", "NaN feature (binary FP32)", "400 by default; 200 with allow_nonfinite",
           f"{refused.status_code} by default; {allowed.status_code} with allow_nonfinite")  # fmt: skip
    assert refused.status_code == 400 and "NaN" in refused.json()["error"]
    assert allowed.status_code == 200, allowed.text
