"""The HTTP application: route table, thin handlers, error handlers and the start-up/shut-down lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server import __version__, triton_config
from server.docs import install_docs
from server.drain import DrainMiddleware, DrainState
from server.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
)
from server.fastpath import EnsembleApp, InferEndpoint, Reply
from server.manifest import NAME_RE
from server.metrics import CONTENT_TYPE, Metrics
from server.protocol import v1, v2
from server.protocol.binary import BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER, JSON_CONTENT_TYPE
from server.protocol.common import DUMPS_OPTIONS, parse_json_object
from server.reloader import RepositoryPoller
from server.repository import LoadedModel, ModelRegistry
from server.settings import Settings

log = logging.getLogger("server")
SERVER_NAME = "ensemble-serving"
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=DUMPS_OPTIONS), status_code, headers, "application/json")


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status_code, headers)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refusing (413) one larger than `limit` from its Content-Length or while it streams in, and
    (408) one still incomplete after `timeout_s`: a client that trickles its body must not hold a request
    (and, on SIGTERM, the drain) for ever."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is {declared} bytes; at most {limit} are accepted.")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The request body is over {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:.3g} seconds.") from None
    return b"".join(chunks)


def _model_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise NotFound(f"Model '{name[:64]}' does not exist.")
    return name


def _version(version: str) -> int:
    # isdigit() alone also takes "¹" and other digits that int() refuses.
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise NotFound(f"Version '{version[:20]}' does not exist; versions are positive integers.")
    return int(version)


class Handlers:
    """The logic behind each route; handlers read requests and return responses, nothing else."""

    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics) -> None:
        self.settings, self.registry, self.metrics = settings, registry, metrics
        # Extensions really implemented; model_repository only when its (token-guarded) endpoints are on.
        self.extensions: list[str] = ["binary_tensor_data", "model_configuration", "statistics"]
        if settings.admin_token:
            self.extensions.append("model_repository")

    def lookup(self, name: str, version: str | None) -> LoadedModel:
        return self.registry.get(_model_name(name), _version(version) if version is not None else None)

    def server_metadata(self) -> dict[str, Any]:
        providers = sorted({lm.ensemble.info.provider for lm in self.registry.models.values()})
        return {
            "name": SERVER_NAME,
            "version": __version__,
            "extensions": self.extensions,
            "available_providers": ort.get_available_providers(),
            "providers": providers,
        }

    def model_metadata(self, lm: LoadedModel) -> dict[str, Any]:
        e = lm.ensemble
        extra = {
            "provider": e.info.provider,
            "device": e.info.device,
            "members": e.members,
            "member_execution": e.execution,
            "max_batch_size": self.settings.max_batch_size,
        }
        return v2.model_metadata(lm.manifest, self.registry.versions_of(lm.name), extra)

    def statistics(self, models: list[LoadedModel]) -> dict[str, Any]:
        """Triton's statistics extension for `models`, sorted by name and version."""
        ordered = sorted(models, key=lambda lm: (lm.name, lm.version))
        return {"model_stats": [self.metrics.stats.model_stats(lm.name, str(lm.version)) for lm in ordered]}

    def model_config(self, lm: LoadedModel) -> dict[str, Any]:
        """Triton's model configuration with the settings and the provider that really run."""
        s, e = self.settings, lm.ensemble
        return triton_config.model_config(
            lm.manifest,
            max_batch_size=s.max_batch_size,
            max_queue_delay_us=round(s.max_queue_delay_ms * 1000),
            instance_kind="KIND_GPU" if e.info.provider in GPU_PROVIDERS else "KIND_CPU",
            gpu_device_id=s.gpu_device_id,
            version_policy=s.version_policy,
            parameters={
                "provider": e.info.provider,
                "device": e.info.device,
                "member_execution": e.execution,
            },
        )

    async def infer(self, request: Request, name: str, version: str | None, protocol: str) -> Response:
        """The FastAPI route's way in (the fast path in server.fastpath calls run_infer directly)."""

        def read(limit: int, timeout_s: float) -> Awaitable[bytes]:
            return read_body(request, limit, timeout_s)

        header_length = request.headers.get(HEADER_LENGTH_HEADER) if protocol == "v2" else None
        out, content_type, length = await self.run_infer(name, version, protocol, read, header_length)
        headers = None if length is None else {HEADER_LENGTH_HEADER: str(length)}
        return Response(out, 200, headers, media_type=content_type)

    async def run_infer(
        self,
        name: str,
        version: str | None,
        protocol: str,
        read: Callable[[int, float], Awaitable[bytes]],
        header_length: str | None,
    ) -> Reply:
        """Shared by V2 and V1: body -> rows -> batcher -> ``(body, content type, header length)``.

        Records the request's metrics. `read(limit, timeout_s)` reads the body (413, 408);
        `header_length` is the request's Inference-Header-Content-Length header."""
        start = time.perf_counter()
        deadline = start + self.settings.request_timeout_s
        lm = self.lookup(name, version)
        lm.active += 1  # no await since the lookup: a hot-reload swap waits for this before retiring lm
        m = self.metrics.model(lm.name, str(lm.version))
        m.request_started()
        outcome = "ok"
        try:
            body = await read(self.settings.max_body_bytes, max(0.0, deadline - time.perf_counter()))
            if protocol == "v2":
                return await self._infer_v2(body, header_length, lm, deadline)
            return await self._predict_v1(body, lm, deadline)
        except ServerError as exc:
            outcome = str(exc.status_code)
            raise
        except ClientDisconnect:
            outcome = "499"  # the client left before sending its whole body (nginx's name for it)
            raise
        except Exception:
            outcome = "500"
            raise
        finally:
            lm.active -= 1
            m.request_finished()
            m.requests(protocol, outcome).inc()
            elapsed = time.perf_counter() - start
            m.request_duration(protocol).observe(elapsed)
            self.metrics.stats.record_request(lm.name, str(lm.version), outcome == "ok", elapsed)

    async def _infer_v2(
        self, body: bytes, header_length: str | None, lm: LoadedModel, deadline: float
    ) -> Reply:
        # JSON, or Triton's binary tensor extension when Inference-Header-Content-Length is set.
        req = v2.decode_infer_request(body, header_length, lm.manifest, self.settings.allow_nonfinite)
        assert lm.batcher is not None  # every model in the registry has one
        results = await lm.batcher.submit(req.x, deadline)
        out, out_header_length = v2.encode_response(lm.manifest, lm.version, req, results)
        return out, JSON_CONTENT_TYPE if out_header_length is None else BINARY_CONTENT_TYPE, out_header_length

    async def _predict_v1(self, body: bytes, lm: LoadedModel, deadline: float) -> Reply:
        x = v1.decode_predict_request(parse_json_object(body), lm.manifest, self.settings.allow_nonfinite)
        assert lm.batcher is not None
        results = await lm.batcher.submit(x, deadline)
        out = orjson.dumps(v1.encode_predict_response(lm.manifest, lm.version, results), option=DUMPS_OPTIONS)
        return out, "application/json", None

    def check_admin(self, request: Request) -> None:
        token = self.settings.admin_token
        if not token:
            raise NotFound("Not found.")
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise Unauthorized()
        if not hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            raise Forbidden("The bearer token is not valid.")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> Response:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"Invalid request: {where}: {first.get('msg', 'invalid')}.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "Not found.", 405: "Method not allowed."}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is listening; counted as outcome 499 by the handler. Not an error of ours.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error.")


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    registry = ModelRegistry(settings, metrics)
    h = Handlers(settings, registry, metrics)

    drain = DrainState()
    poller = RepositoryPoller(registry, settings.repository_poll_interval_s, paused=lambda: drain.draining)

    async def load_then_poll() -> None:
        # Load in the background so that /v2/health/live answers during start-up; then watch for changes.
        await asyncio.to_thread(poller.baseline)
        try:
            await registry.reload()
        except Exception as exc:
            log.error("loading failed: %r", exc)
        if settings.repository_poll_interval_s > 0:
            await poller.run()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        background = asyncio.create_task(load_then_poll())
        yield
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await background
        # After a drain every request is answered; otherwise (no signal) the usual request timeout applies.
        await registry.close(drain.remaining(settings.request_timeout_s))

    # /docs and /redoc come from packaged assets (server.docs), never from a CDN.
    app = EnsembleApp(
        title="ensemble-serving", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings, app.state.registry, app.state.metrics, app.state.handlers = (
        settings,
        registry,
        metrics,
        h,
    )
    app.state.drain, app.state.poller = drain, poller
    install_docs(app)
    _install_error_handlers(app)
    # Around every route: on SIGTERM (server.drain) it refuses new work and counts what is still running.
    app.add_middleware(DrainMiddleware, state=drain)
    # Inference POSTs skip the FastAPI stack (server.fastpath) but not the drain; CORS must see them.
    if not settings.cors_origins:
        app.fast_app = DrainMiddleware(InferEndpoint(h), state=drain)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])  # fmt: skip

    # ---------------------------------------------------------------- V2 server
    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> Response:
        return json_response(h.server_metadata())

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> Response:
        if registry.is_ready():
            return json_response({"ready": True})
        not_ready = {n: s.reason or s.state for n, s in registry.status.items() if s.state != "ready"}
        return json_response({"ready": False, "loading": not registry.loaded_once, "models": not_ready}, 503)

    # ---------------------------------------------------------------- V2 models
    # Before /v2/models/{name}, which would otherwise take "stats" for a model name.
    @app.get("/v2/models/stats", tags=["v2"])
    async def all_stats() -> Response:
        return json_response(h.statistics(list(registry.models.values())))

    @app.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(name: str) -> Response:
        return json_response(h.model_metadata(h.lookup(name, None)))

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"])
    async def model_version_metadata(name: str, version: str) -> Response:
        return json_response(h.model_metadata(h.lookup(name, version)))

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def model_ready(name: str) -> Response:
        lm = h.lookup(name, None)
        return json_response({"name": lm.name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"])
    async def model_version_ready(name: str, version: str) -> Response:
        lm = h.lookup(name, version)
        return json_response({"name": lm.name, "version": str(lm.version), "ready": True})

    @app.get("/v2/models/{name}/config", tags=["v2"])
    async def model_config(name: str) -> Response:
        return json_response(h.model_config(h.lookup(name, None)))

    @app.get("/v2/models/{name}/versions/{version}/config", tags=["v2"])
    async def model_version_config(name: str, version: str) -> Response:
        return json_response(h.model_config(h.lookup(name, version)))

    @app.get("/v2/models/{name}/stats", tags=["v2"])
    async def model_stats(name: str) -> Response:
        h.lookup(name, None)  # 404 / 503 as for any other model route
        return json_response(h.statistics([lm for lm in registry.models.values() if lm.name == name]))

    @app.get("/v2/models/{name}/versions/{version}/stats", tags=["v2"])
    async def model_version_stats(name: str, version: str) -> Response:
        return json_response(h.statistics([h.lookup(name, version)]))

    @app.post("/v2/models/{name}/infer", tags=["v2"])
    async def infer(name: str, request: Request) -> Response:
        return await h.infer(request, name, None, "v2")

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"])
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await h.infer(request, name, version, "v2")

    # ---------------------------------------------------------------- V1
    @app.post("/v1/models/{name}:predict", tags=["v1"])
    async def predict(name: str, request: Request) -> Response:
        return await h.infer(request, name, None, "v1")

    # ---------------------------------------------------------------- repository admin
    @app.post("/v2/repository/index", tags=["admin"])
    async def repository_index(request: Request) -> Response:
        h.check_admin(request)
        rows = []
        for name, st in sorted(registry.status.items()):
            for v in st.versions or [None]:
                state = "UNAVAILABLE" if v in st.failed else st.state.upper()
                row = {"name": name, "state": "READY" if (name, v) in registry.models else state}
                if v is not None:
                    row["version"] = str(v)
                if st.reason:
                    row["reason"] = st.reason
                rows.append(row)
        return json_response(rows)

    @app.post("/v2/repository/models/{name}/load", tags=["admin"])
    async def repository_load(name: str, request: Request) -> Response:
        h.check_admin(request)
        await registry.load(_model_name(name))
        st = registry.status[name]
        if st.state != "ready":
            raise BadRequest(f"Model '{name}' failed to load: {st.reason}")
        return json_response({"name": name, "loaded": True})

    @app.post("/v2/repository/models/{name}/unload", tags=["admin"])
    async def repository_unload(name: str, request: Request) -> Response:
        h.check_admin(request)
        await registry.unload(_model_name(name))
        return json_response({"name": name, "unloaded": True})

    # ---------------------------------------------------------------- metrics
    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
