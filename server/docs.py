"""API docs that work offline: Swagger UI (``/docs``) and ReDoc (``/redoc``) from packaged assets.

FastAPI's default pages load their JavaScript from a CDN, which an air-gapped server cannot reach; the
``fastapi-offline`` wheel ships the same Swagger UI 5 and ReDoc bundles, served here under ``/docs-assets``.
The inference handlers read raw bytes (orjson, and Triton's binary tensors), so FastAPI cannot infer their
bodies; the pydantic models below exist only to describe those bodies in the OpenAPI document.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from server.protocol.model_input import CASTABLE

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
    datatype: str = Field(examples=["FP32"], json_schema_extra={"enum": sorted(CASTABLE)})
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
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1)
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
    """Simple JSON: one list of raw feature values per row."""

    instances: list[list[float]] = Field(
        min_length=1, examples=[[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]]
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


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _describe(operation: dict[str, Any], request: type[BaseModel], response: type[BaseModel]) -> None:
    content: dict[str, Any] = {"application/json": {"schema": _ref(request)}}
    if request is V2InferenceRequest:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "Triton's binary tensor extension: a JSON header of `Inference-Header-Content-"
            "Length` bytes (as in application/json), then each input's raw little-endian bytes.",
        }
    operation["requestBody"] = {"required": True, "content": content}
    responses = {
        "200": {"description": "Outputs", "content": {"application/json": {"schema": _ref(response)}}}
    }
    for code, text in _ERRORS.items():
        responses[code] = {"description": text, "content": {"application/json": {"schema": _ref(ErrorBody)}}}
    operation["responses"] = responses


def _openapi_with_bodies(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        models = (V2InferenceRequest, V2InferenceResponse, V1PredictRequest, V1PredictResponse, ErrorBody)
        for model in models:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        for path, item in schema.get("paths", {}).items():
            post = item.get("post")
            if post is None:
                continue
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                _describe(post, V2InferenceRequest, V2InferenceResponse)
            elif path.startswith("/v1/models/") and path.endswith(":predict"):
                _describe(post, V1PredictRequest, V1PredictResponse)
        app.openapi_schema = schema
    return app.openapi_schema


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets; `app` must be created with docs_url=redoc_url=None."""
    app.openapi = lambda: _openapi_with_bodies(app)  # type: ignore[method-assign]
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
