"""The HTTP application: ONE route table, thin handlers over the data plane, and the ASGI stack around them.

``ROUTES`` is read by the router (``server.http.endpoint``, which answers every route straight from ASGI)
and by the OpenAPI document (``server.http.docs``). Each handler is a few lines: path parameters and
headers in, one data plane call, a body out. The stack, outermost first: CORS (when configured, plain ASGI
middleware), the drain (``server.http.drain``), the router, and FastAPI behind it for ``/docs`` and the
lifespan (``server.lifecycle.running``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import orjson
from fastapi import FastAPI

from server import __version__
from server.errors import ServerError
from server.http import docs
from server.http.drain import DrainMiddleware
from server.http.endpoint import Call, Endpoint, Reply, Route
from server.http.errors import JSON, Receive, Scope, Send, install_error_handlers
from server.lifecycle import Services, running
from server.manifest import Manifest
from server.metrics import CONTENT_TYPE
from server.observability import RequestContext
from server.protocol import v1, v2
from server.protocol.tensors import InferenceRequest, InferenceResponse

_HEADER_LENGTH = b"inference-header-content-length"
_AUTHORIZATION = b"authorization"
_REQUEST_ID, _TRACEPARENT, _TRACESTATE = b"x-request-id", b"traceparent", b"tracestate"
REQUEST_ID_HEADER = "X-Request-ID"


def _json(body: Any, status: int = 200) -> Reply:
    return status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), JSON, None


# ---------------------------------------------------------------------------------- V2 server
async def server_metadata(s: Services, call: Call) -> Reply:
    return _json(s.dataplane.server_metadata())


async def live(s: Services, call: Call) -> Reply:
    return _json({"live": s.dataplane.server_live()})


async def ready(s: Services, call: Call) -> Reply:
    state = s.dataplane.readiness()
    return _json(state, 200 if state["ready"] else 503)


# ---------------------------------------------------------------------------------- observability
def _context(s: Services, call: Call) -> RequestContext | None:
    """What server.observability needs of an inference request: X-Request-ID, the caller's W3C trace
    context and the peer (only the id, to echo it, when nothing is logged or traced)."""
    if s.dataplane.observer is None:
        rid = call.header(_REQUEST_ID)
        return RequestContext(rid) if rid else None
    rid = traceparent = tracestate = None
    for key, value in call.scope["headers"]:
        if key == _REQUEST_ID:
            rid = rid or value.decode("latin-1")
        elif key == _TRACEPARENT:
            traceparent = traceparent or value.decode("latin-1")
        elif key == _TRACESTATE:
            tracestate = tracestate or value.decode("latin-1")
    client = call.scope.get("client")
    return RequestContext(rid, traceparent, tracestate, f"{client[0]}:{client[1]}" if client else None)


async def _echo_request_id(context: RequestContext | None, answer: Awaitable[Reply]) -> Reply:
    """`answer`, or its error, with X-Request-ID: the client's own, else the id it was logged under."""
    try:
        status, body, content_type, headers = await answer
    except ServerError as exc:
        if context is not None and (rid := context.echo_id):
            exc.headers[REQUEST_ID_HEADER] = rid
        raise
    if context is None or not (rid := context.echo_id):
        return status, body, content_type, headers
    return status, body, content_type, {**(headers or {}), REQUEST_ID_HEADER: rid}


# ---------------------------------------------------------------------------------- V2 models
async def all_stats(s: Services, call: Call) -> Reply:
    return _json(s.dataplane.statistics(None, None))


async def model_metadata(s: Services, call: Call) -> Reply:
    return _json(s.dataplane.model_metadata(call.params["name"], call.params.get("version")))


async def model_ready(s: Services, call: Call) -> Reply:
    # 404 / 503 from the lookup, as for every model route.
    sv = s.dataplane.lookup(call.params["name"], call.params.get("version"))
    if "version" in call.params:
        return _json({"name": sv.name, "version": str(sv.version), "ready": True})
    return _json({"name": sv.name, "ready": True})


async def model_config(s: Services, call: Call) -> Reply:
    return _json(s.dataplane.model_config(call.params["name"], call.params.get("version")))


async def model_stats(s: Services, call: Call) -> Reply:
    return _json(s.dataplane.statistics(call.params["name"], call.params.get("version")))


async def infer(s: Services, call: Call) -> Reply:
    """V2 inference: JSON, or Triton's binary tensors when Inference-Header-Content-Length is set."""
    name, version = call.params["name"], call.params.get("version")
    header_length = call.header(_HEADER_LENGTH)

    async def decode(manifest: Manifest, timeout_s: float) -> InferenceRequest:
        body = await call.body(s.settings.max_body_bytes, timeout_s)
        return v2.decode_request(body, header_length, name, version)

    def encode(manifest: Manifest, request: InferenceRequest, response: InferenceResponse) -> Reply:
        out, length = v2.encode_response(request, response)
        if length is None:
            return 200, out, v2.JSON_CONTENT_TYPE, None
        return 200, out, v2.BINARY_CONTENT_TYPE, {v2.HEADER_LENGTH_HEADER: str(length)}

    context = _context(s, call)
    answer = s.dataplane.infer_with(name, version, decode, encode, protocol="v2", context=context)
    return await (answer if context is None else _echo_request_id(context, answer))


# ---------------------------------------------------------------------------------- V1
async def predict(s: Services, call: Call) -> Reply:
    name = call.params["name"]

    async def decode(manifest: Manifest, timeout_s: float) -> InferenceRequest:
        return v1.decode_request(await call.body(s.settings.max_body_bytes, timeout_s), manifest, name)

    def encode(manifest: Manifest, request: InferenceRequest, response: InferenceResponse) -> Reply:
        return 200, v1.encode_response(manifest, response), JSON, None

    context = _context(s, call)
    answer = s.dataplane.infer_with(name, None, decode, encode, protocol="v1", context=context)
    return await (answer if context is None else _echo_request_id(context, answer))


# ---------------------------------------------------------------------------------- repository admin
async def repository_index(s: Services, call: Call) -> Reply:
    s.dataplane.check_admin(call.header(_AUTHORIZATION))
    return _json(await s.dataplane.repository_index())


async def repository_load(s: Services, call: Call) -> Reply:
    s.dataplane.check_admin(call.header(_AUTHORIZATION))
    await s.dataplane.load_model(call.params["name"])
    return _json({"name": call.params["name"], "loaded": True})


async def repository_unload(s: Services, call: Call) -> Reply:
    s.dataplane.check_admin(call.header(_AUTHORIZATION))
    await s.dataplane.unload_model(call.params["name"])
    return _json({"name": call.params["name"], "unloaded": True})


# ---------------------------------------------------------------------------------- metrics
async def prometheus(s: Services, call: Call) -> Reply:
    return 200, s.metrics.render(), CONTENT_TYPE, None


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/v2", server_metadata, "Server metadata", "v2"),
    Route("GET", "/v2/health/live", live, "Liveness", "v2"),
    Route("GET", "/v2/health/ready", ready, "Readiness (every model loaded and warm)", "v2"),
    # Before /v2/models/{name}, which would otherwise take "stats" for a model name.
    Route("GET", "/v2/models/stats", all_stats, "Statistics of every served version", "v2"),
    Route("GET", MODEL, model_metadata, "Model metadata", "v2"),
    Route("GET", VERSION, model_metadata, "Model version metadata", "v2"),
    Route("GET", f"{MODEL}/ready", model_ready, "Model readiness", "v2"),
    Route("GET", f"{VERSION}/ready", model_ready, "Model version readiness", "v2"),
    Route("GET", f"{MODEL}/config", model_config, "Model configuration (Triton's)", "v2"),
    Route("GET", f"{VERSION}/config", model_config, "Model version configuration (Triton's)", "v2"),
    Route("GET", f"{MODEL}/stats", model_stats, "Model statistics (Triton's)", "v2"),
    Route("GET", f"{VERSION}/stats", model_stats, "Model version statistics (Triton's)", "v2"),
    Route("POST", f"{MODEL}/infer", infer, "Inference", "v2", docs.V2InferenceRequest,
          docs.V2InferenceResponse, binary_body=True),
    Route("POST", f"{VERSION}/infer", infer, "Inference on a version", "v2", docs.V2InferenceRequest,
          docs.V2InferenceResponse, binary_body=True),
    Route("POST", "/v1/models/{name}:predict", predict, "Simple JSON prediction", "v1", docs.V1PredictRequest,
          docs.V1PredictResponse),
    Route("POST", "/v2/repository/index", repository_index, "Repository index", "admin"),
    Route("POST", "/v2/repository/models/{name}/load", repository_load, "Load a model", "admin"),
    Route("POST", "/v2/repository/models/{name}/unload", repository_unload, "Unload a model", "admin"),
    Route("GET", "/metrics", prometheus, "Prometheus metrics", "metrics"),
)  # fmt: skip


class EnsembleApp(FastAPI):
    """FastAPI (for ``/docs`` and the lifespan) with every request going through :attr:`stack` first."""

    stack: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] == "lifespan" or self.stack is None:
            await super().__call__(scope, receive, send)
            return
        await self.stack(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(services: Services) -> EnsembleApp:
    """The ASGI application over `services` (server.lifecycle.build_services); its lifespan runs them."""
    settings = services.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(services):
            yield

    # /docs and /redoc come from packaged assets (server.http.docs), never from a CDN.
    app = EnsembleApp(
        title="ensemble-serving", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.services = services
    docs.install_docs(app, ROUTES)
    install_error_handlers(app)
    # On SIGTERM the drain refuses new work and counts what is still running (server.http.drain).
    stack: Any = DrainMiddleware(Endpoint(ROUTES, services, app.fastapi), state=services.drain)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        stack = CORSMiddleware(stack, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                               allow_headers=["*"])  # fmt: skip
    app.stack = stack
    return app
