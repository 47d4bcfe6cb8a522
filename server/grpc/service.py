"""Triton's ``inference.GRPCInferenceService`` (and ``grpc.health.v1``) on grpc.aio, over the data plane.

Routing and codecs only: every call decodes its message, asks the DataPlane, and encodes the answer; the
data plane records metrics and statistics (``protocol="grpc"``). Errors are the data plane's
``ServerError``s, turned into a status code by one renderer (``_abort``) with the same one-sentence message
HTTP sends in ``{"error"}``. The server runs in uvicorn's process and event loop, started and stopped by
the lifecycle, and shares its drain: while draining, readiness is false (ServerReady, grpc.health.v1) and
new inference and admin calls get UNAVAILABLE, while the calls already running finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.errors import ServerError, Unavailable
from server.grpc import codec
from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from server.grpc.generated import model_config_pb2
from server.http.connections import grpc_connection_cap, open_file_limit
from server.observability import RequestContext, grpc_context
from server.protocol.tensors import InferenceRequest

if TYPE_CHECKING:
    from server.lifecycle import Services

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
DRAINING = "The server is shutting down; send the request to another replica."
INTERNAL = "The server failed on this request; its log has the details."
HEALTH_REFRESH_S = 0.5  # how stale a grpc.health.v1 Watch stream may be
# A connection without calls for this long gets GOAWAY (clients reconnect when they next call): held
# channels of gone clients do not count against the cap for ever.
GRPC_IDLE_MS = 300_000
# Calls and streams at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; grpc's default is
# unbounded): a client beyond it queues on its side.
GRPC_MAX_STREAMS = 1024

# HTTP status of a ServerError -> gRPC status code (the status code table in docs/triton.md).
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

T = TypeVar("T")


def status_code(error: ServerError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status_code, grpc.StatusCode.INTERNAL)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs this server implements; the rest (shared memory, trace, log settings) stay UNIMPLEMENTED."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.dataplane = services.dataplane
        self.drain = services.drain

    # ---------------------------------------------------------------------------------------- plumbing

    async def _call(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC's work, rendering a ServerError (or a bug) as its status code and message."""
        try:
            return await work()
        except ServerError as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception:  # a bug: log it, answer INTERNAL, keep serving
            log.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
        raise AssertionError("context.abort returned")  # pragma: no cover

    def _admit(self) -> None:
        if self.drain.draining:
            raise Unavailable(DRAINING)

    @contextlib.contextmanager
    def _in_flight(self) -> Any:
        # Counted with HTTP's requests, so the drain waits for gRPC calls too before the process goes.
        self.drain.in_flight += 1
        try:
            yield
        finally:
            self.drain.in_flight -= 1

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = value if isinstance(value, str) else value.decode("latin-1")
        self.dataplane.check_admin(token)

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.perf_counter() + max(0.0, remaining)

    @staticmethod
    def _context(context: grpc.aio.ServicerContext) -> RequestContext:
        """x-request-id, traceparent and the peer, for the request log and traces (server.observability)."""
        return grpc_context(context.invocation_metadata(), context.peer())

    async def _infer(
        self, msg: pb.ModelInferRequest, deadline: float | None, observed: RequestContext | None = None
    ) -> pb.ModelInferResponse:
        self._admit()

        # Decoded and encoded inside the data plane's recorded region, so a malformed message counts
        # as a grpc 400 in the metrics, as a malformed HTTP body does.
        async def decode(manifest: Any, timeout_s: float) -> InferenceRequest:
            return codec.decode_request(msg)

        def encode(manifest: Any, request: InferenceRequest, response: Any) -> pb.ModelInferResponse:
            return codec.encode_response(response)

        with self._in_flight():
            return await self.dataplane.infer_with(
                msg.model_name,
                msg.model_version or None,
                decode,
                encode,
                protocol="grpc",
                deadline=deadline,
                context=observed,
            )

    # ------------------------------------------------------------------------------------------ health

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.server_live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=ready(self.services))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            is_ready = self.dataplane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=is_ready and not self.drain.draining)

        return await self._call(context, work)

    # ---------------------------------------------------------------------------------------- metadata

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            meta = self.dataplane.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta["name"], version=str(meta["version"]), extensions=meta.get("extensions", [])
            )

        return await self._call(context, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = self.dataplane.model_metadata(request.name, request.version or None)
            return _from_json(meta, pb.ModelMetadataResponse())

        return await self._call(context, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        async def work() -> pb.ModelConfigResponse:
            config = self.dataplane.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=_from_json(config, model_config_pb2.ModelConfig()))

        return await self._call(context, work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        async def work() -> pb.ModelStatisticsResponse:
            stats = self.dataplane.statistics(request.name or None, request.version or None)
            return _from_json(stats, pb.ModelStatisticsResponse())

        return await self._call(context, work)

    # --------------------------------------------------------------------------------------- inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._call(
            context, lambda: self._infer(request, self._deadline(context), self._context(context))
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request gets one response, in order; an error answers that request (error_message, as
        Triton does) and the stream goes on."""
        deadline = self._deadline(context)
        async for msg in self._until_drain(request_iterator):
            if msg is MALFORMED:
                yield pb.ModelStreamInferResponse(error_message=_malformed("ModelInferRequest"))
                continue
            try:
                answer = await self._infer(msg, deadline, self._context(context))
            except ServerError as exc:
                echo = pb.ModelInferResponse(
                    model_name=msg.model_name, model_version=msg.model_version, id=msg.id
                )
                yield pb.ModelStreamInferResponse(error_message=exc.message, infer_response=echo)
            except Exception:
                log.exception("gRPC stream request failed")
                yield pb.ModelStreamInferResponse(error_message=INTERNAL)
            else:
                yield pb.ModelStreamInferResponse(infer_response=answer)

    async def _until_drain(self, messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A stream's messages until the client ends it, or until the drain starts while the stream waits
        for its next message: an idle stream then ends (OK) at once rather than holding the shutdown for
        the whole drain timeout. A message being answered is answered first."""
        if self.drain.draining:
            return
        stop = asyncio.ensure_future(self.drain.begun.wait())
        try:
            while True:
                receive = asyncio.ensure_future(anext(messages))
                await asyncio.wait((receive, stop), return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    return
                try:
                    msg = receive.result()
                except StopAsyncIteration:
                    return
                yield msg
        finally:
            stop.cancel()

    # -------------------------------------------------------------------------------------- repository

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        async def work() -> pb.RepositoryIndexResponse:
            self._authorize(context)
            answer = pb.RepositoryIndexResponse()
            for entry in await self.dataplane.repository_index():
                if request.ready and entry.get("state") != "READY":
                    continue
                answer.models.add(
                    name=entry["name"],
                    version=str(entry.get("version") or ""),
                    state=entry.get("state") or "",
                    reason=entry.get("reason") or "",
                )
            return answer

        return await self._call(context, work)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> Any:
        async def work() -> pb.RepositoryModelLoadResponse:
            self._authorize(context)
            self._admit()
            with self._in_flight():
                await self.dataplane.load_model(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._call(context, work)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> Any:
        async def work() -> pb.RepositoryModelUnloadResponse:
            self._authorize(context)
            self._admit()
            with self._in_flight():
                await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call(context, work)


class _Malformed:
    """What the tolerant deserializer hands a method for bytes that are not its message."""


MALFORMED = _Malformed()


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    # grpc's own deserializer failure answers UNKNOWN "Unexpected <class ...DecodeError>"; this lets the
    # method answer INVALID_ARGUMENT with one sentence instead.
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return MALFORMED

    return parse


def _malformed(name: str) -> str:
    return f"The request is not a valid {name} message."


def _guard_unary(method: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(name))
        return await method(request, context)

    return guarded


def inference_handler(servicer: InferenceService) -> grpc.GenericRpcHandler:
    """The methods InferenceService implements, registered as the generated code would, but with a
    deserializer that lets a malformed message get INVALID_ARGUMENT (the rest answer UNIMPLEMENTED)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        if method.name not in InferenceService.__dict__:
            continue
        parse = _tolerant(getattr(pb, method.input_type.name))
        implementation = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                implementation, request_deserializer=parse, response_serializer=_serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(implementation, method.input_type.name),
                request_deserializer=parse,
                response_serializer=_serialize,
            )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _from_json(doc: dict[str, Any], message: T) -> T:
    """A V2 / Triton JSON document as its protobuf message (the HTTP form is protobuf's JSON mapping);
    fields this proto lacks are left out rather than failing the call."""
    return json_format.ParseDict(doc, message, ignore_unknown_fields=True)


def ready(services: Services) -> bool:
    return services.dataplane.server_ready() and not services.drain.draining


class Health(health.aio.HealthServicer):
    """grpc.health.v1 reflecting readiness ("" and the inference service): NOT_SERVING while loading or
    draining. Check reads readiness afresh; Watch streams see a change within HEALTH_REFRESH_S."""

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    async def refresh(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if ready(self.services) else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (health.OVERALL_HEALTH, SERVICE_NAME):
            if self._server_status.get(name) != status:
                await self.set(name, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)


class GrpcServer:
    """The grpc.aio server of one process: started and stopped by the lifecycle, beside uvicorn."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.settings = settings
        # The body limit is the message limit: larger messages get RESOURCE_EXHAUSTED from gRPC itself.
        options = [
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # ---- worker processes: every worker binds the gRPC port; the kernel spreads the connections.
            ("grpc.so_reuseport", 1 if services.cluster is not None else 0),
            # ---- connection limits: gRPC's share of this process's descriptors (server.http.connections),
            # so that idle connects cannot exhaust them and fail HTTP. Beyond the cap a new connection is
            # closed at once; one that never completes its HTTP/2 handshake is closed after the header
            # timeout, one without calls after the keep-alive idle time; streams per connection bounded.
            ("grpc.max_allowed_incoming_connections", grpc_connection_cap(open_file_limit())),
            ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", GRPC_IDLE_MS),
            ("grpc.max_concurrent_streams", GRPC_MAX_STREAMS),
        ]
        self.server = grpc.aio.server(options=options)
        self.health = Health(services)
        self.server.add_generic_rpc_handlers((inference_handler(InferenceService(services)),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{settings.host}:{settings.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind": say it as uvicorn says it for HTTP (exit 3)
            raise OSError(
                f"gRPC cannot listen on {address}: the port is in use or the address is not local"
            ) from None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._refresher = asyncio.create_task(self._refresh_health())
        log.info("gRPC listening on %s:%d", self.settings.host, self.port)

    async def _refresh_health(self) -> None:
        while True:
            try:
                await self.health.refresh()
            except Exception:  # never let the probe's updater die silently
                log.exception("gRPC health refresh failed")
            await asyncio.sleep(HEALTH_REFRESH_S)

    async def stop(self, grace_s: float) -> None:
        """Stop taking calls; the running ones get `grace_s` seconds, then are cancelled."""
        await self.health.enter_graceful_shutdown()
        if self._refresher is not None:
            self._refresher.cancel()
        await self.server.stop(grace_s)


def create_grpc_server(services: Services) -> GrpcServer | None:
    """The gRPC server for `services`, or None when ``grpc_port`` is 0 (gRPC off)."""
    if services.settings.grpc_port == 0:
        return None
    return GrpcServer(services)
