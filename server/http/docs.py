"""The OpenAPI document, built from the route table, and API docs that work offline.

Every route is answered from raw ASGI (``server.http.endpoint``), so FastAPI knows none of them: the
document is written here from ``server.http.app.ROUTES`` (path, method, summary, tag) and the pydantic
models below, which exist only to describe the bodies (the handlers read raw bytes: orjson, and Triton's
binary tensors). This is the one description of the V2 and V1 bodies.

FastAPI's default pages load their JavaScript from a CDN, which an air-gapped server cannot reach; the
``fastapi-offline`` wheel ships the same Swagger UI 5 and ReDoc bundles, served here under ``/docs-assets``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from server.inputs import CASTABLE
from server.manifest import ColumnInput, Manifest, TablePreprocessing

if TYPE_CHECKING:
    from server.http.endpoint import Route

log = logging.getLogger(__name__)
ASSETS_URL = "/docs-assets"


def assets_dir() -> Path | None:
    """The packaged Swagger UI / ReDoc bundles, or None where fastapi-offline is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


# ------------------------------------------------------------------ docs-only body models
class V2InputTensor(BaseModel):
    name: str = Field(description="The model's input name (see the model metadata).", examples=["input"])
    shape: list[int] = Field(description="[rows, features].", examples=[[2, 4]])
    datatype: str = Field(examples=["FP32"], json_schema_extra={"enum": sorted({*CASTABLE, "BYTES"})})
    data: list[Any] | None = Field(
        default=None,
        description="Row-major values, flat or nested; absent when the tensor travels as binary data.",
        examples=[[5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]],
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: bytes of this tensor after the JSON header."
    )


class V2RequestedOutput(BaseModel):
    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data`: true to get this output as raw bytes."
    )


class V2InferenceRequest(BaseModel):
    """KServe V2 / Open Inference Protocol inference request (JSON form)."""

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output`: true for every output as raw bytes."
    )
    inputs: list[V2InputTensor] = Field(
        min_length=1, description="The model's one input, or for a table model one input per column."
    )
    outputs: list[V2RequestedOutput] | None = Field(
        default=None, description="Outputs to return; absent or empty: every output."
    )


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


class V1PredictRequest(BaseModel):
    """Simple JSON: one list of raw feature values per row; or for a table model (and a matrix model that
    names its features) records keyed by column (``null`` = missing), or ``inputs``: lists keyed by column.
    The examples of this body are built from the loaded models."""

    instances: list[list[float] | dict[str, Any]] | None = Field(
        default=None, min_length=1, examples=[[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]]
    )
    inputs: dict[str, list[Any]] | None = Field(
        default=None, description="Columns: each column's name and its values, one per row."
    )


class V1PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="Label names (classification) or values (regression).")
    probabilities: list[list[float]] | None = Field(default=None, description="Classification only.")
    spread: list[Any] = Field(description="The members' standard deviation, per row.")
    model_name: str
    model_version: str


class ErrorBody(BaseModel):
    error: str = Field(examples=["The request has 5000 rows; at most 4096 are allowed."])


_ERRORS = {
    "400": "Bad input (shape, datatype, JSON).",
    "404": "Unknown model or version.",
    "408": "The body did not arrive within the request timeout (the connection is closed).",
    "413": "Body too large (the connection is closed).",
    "429": "Queue full; retry after `Retry-After`.",
    "503": "Not ready, model unavailable, or the server is draining.",
    "504": "Timed out.",
}


_PARAM = re.compile(r"\{([a-z_]+)\}")
MODELS = (V2InferenceRequest, V2InferenceResponse, V1PredictRequest, V1PredictResponse, ErrorBody)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(route: Route) -> dict[str, Any]:
    path_id = re.sub(r"\W+", "_", route.path).strip("_")
    op: dict[str, Any] = {
        "tags": [route.tag],
        "summary": route.summary,
        "operationId": f"{route.handler.__name__}_{path_id}_{route.method.lower()}",
    }
    params = _PARAM.findall(route.path)
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    ok = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}
    if route.response is not None:
        ok["content"]["application/json"]["schema"] = _ref(route.response)
    op["responses"] = {"200": ok}
    if route.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(route.body)}}
        if route.binary_body:
            content["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": "Triton's binary tensor extension: a JSON header of `Inference-Header-Content-"
                "Length` bytes (as in application/json), then each input's raw little-endian bytes.",
            }
        op["requestBody"] = {"required": True, "content": content}
        for code, text in _ERRORS.items():
            op["responses"][code] = {
                "description": text,
                "content": {"application/json": {"schema": _ref(ErrorBody)}},
            }
    return op


def _example_value(column: ColumnInput, median: float | None) -> Any:
    if column.kind == "categorical":
        return (column.categories or [""])[0]
    return round(median, 3) if median is not None else 0.0


def model_examples(manifest: Manifest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Example V2 and V1 bodies for one model: two rows (for a table model the second has missing values)."""
    if not manifest.is_table:
        spec = manifest.input
        width = spec.shape[1]
        row = [0.0] * width
        v2 = {"inputs": [{"name": spec.name, "datatype": "FP32", "shape": [1, width], "data": row}]}
        if spec.feature_names:
            return v2, {"instances": [dict(zip(spec.feature_names, row, strict=True))]}
        return v2, {"instances": [row]}
    pre = manifest.preprocessing
    medians = {c.column: c.median for c in pre.columns} if isinstance(pre, TablePreprocessing) else {}
    first = {c.column: _example_value(c, medians.get(c.column)) for c in manifest.columns}
    second = {c.column: (None if c.accepts_missing else first[c.column]) for c in manifest.columns}
    v2_inputs = [
        {"name": c.name, "datatype": c.datatype, "shape": [2, 1], "data": [first[c.column], second[c.column]]}
        for c in manifest.columns
    ]
    return {"inputs": v2_inputs}, {"instances": [first, second]}


def _with_model_examples(doc: dict[str, Any], manifests: Sequence[Manifest]) -> dict[str, Any]:
    """`doc` with each loaded model's example bodies on the inference routes (the cache is not changed)."""
    if not manifests:
        return doc
    v2: dict[str, Any] = {}
    v1: dict[str, Any] = {}
    for manifest in manifests:
        v2_body, v1_body = model_examples(manifest)
        summary = f"{manifest.name} ({'one input per column' if manifest.is_table else 'one matrix input'})"
        v2[manifest.name] = {"summary": summary, "value": v2_body}
        v1[manifest.name] = {"summary": summary, "value": v1_body}
    paths = dict(doc["paths"])
    for path, examples in (
        *((p, v2) for p in paths if p.endswith("/infer")),
        *((p, v1) for p in paths if p.endswith(":predict")),
    ):
        post = dict(paths[path]["post"])
        body = dict(post["requestBody"])
        content = dict(body["content"])
        content["application/json"] = {**content["application/json"], "examples": examples}
        body["content"], post["requestBody"] = content, body
        paths[path] = {**paths[path], "post": post}
    return {**doc, "paths": paths}


def openapi(app: FastAPI, routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (cached on the app), with example bodies of the loaded models."""
    services = getattr(app.state, "services", None)
    manifests: list[Manifest] = []
    if services is not None:
        latest: dict[str, Manifest] = {}
        for sv in sorted(services.registry.models.values(), key=lambda sv: (sv.name, sv.version)):
            latest[sv.name] = sv.manifest
        manifests = list(latest.values())
    return _with_model_examples(_base_document(app, routes), manifests)


def _base_document(app: FastAPI, routes: Sequence[Route]) -> dict[str, Any]:
    if app.openapi_schema is None:
        paths: dict[str, dict[str, Any]] = {}
        for route in routes:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
        components: dict[str, Any] = {}
        for model in MODELS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = {
            "openapi": "3.1.0",
            "info": {"title": app.title, "version": app.version},
            "paths": paths,
            "components": {"schemas": components},
        }
    return app.openapi_schema


def install_docs(app: FastAPI, routes: Sequence[Route]) -> None:
    """Serve /openapi.json for `routes`, and /docs and /redoc from local assets; `app` must be created
    with docs_url=redoc_url=None."""
    app.openapi = lambda: openapi(app, routes)  # type: ignore[method-assign]
    assets = assets_dir()
    if assets is None:  # a trimmed install (e.g. the GPU check's wheel folder): /openapi.json only
        log.warning("fastapi-offline is not installed: /docs and /redoc are off (/openapi.json still served)")
        return
    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
