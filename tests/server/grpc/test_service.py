"""The gRPC service over a fake data plane, in process: routing, status codes, drain, health, admin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.errors import Forbidden, NotFound, QueueFull, Timeout, Unauthorized, Unavailable
from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from server.grpc.service import GrpcServer, create_grpc_server
from server.lifecycle import DrainState
from server.protocol.tensors import InferenceRequest, InferenceResponse, OutputTensor

TOKEN = "s3cret"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeDataPlane:
    """Doubles its one input; model names pick a failure. Records what each call was given."""

    extensions: ClassVar[list[str]] = ["model_repository", "statistics"]

    def __init__(self) -> None:
        self.ready = True
        self.calls: list[tuple[InferenceRequest, str, float | None]] = []
        self.release = asyncio.Event()

    async def infer(self, request: InferenceRequest, *, protocol: str, deadline: float | None = None) -> Any:
        self.calls.append((request, protocol, deadline))
        failures = {"unknown": NotFound("Unknown model 'unknown'."), "full": QueueFull("The queue is full.")}
        if request.model_name in failures:
            raise failures[request.model_name]
        if request.model_name == "late":
            raise Timeout("The request timed out.")
        if request.model_name == "slow":
            await self.release.wait()
        if request.model_name == "bug":
            raise RuntimeError("a bug")
        x = request.inputs[0]
        out = OutputTensor("y", x.datatype, x.shape, x.data * 2)
        return InferenceResponse(request.model_name, "1", request.id, (out,))

    async def infer_with(
        self,
        name: str,
        version: str | None,
        decode: Any,
        encode: Any,
        *,
        protocol: str,
        deadline: Any = None,
        context: Any = None,  # server.observability.RequestContext: the fake logs nothing
    ) -> Any:
        """As DataPlane.infer_with: decode, run, encode (the real one also looks the model up first)."""
        request = await decode(None, 1.0)
        return encode(None, request, await self.infer(request, protocol=protocol, deadline=deadline))

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "ensemble-serving", "version": "0.1.0", "extensions": self.extensions}

    def _known(self, name: str) -> None:
        if name != "iris":
            raise NotFound(f"Unknown model '{name}'.")

    def model_ready(self, name: str, version: str | None) -> bool:
        self._known(name)
        return True

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self._known(name)
        tensor = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
        return {"name": name, "versions": ["1"], "platform": "onnxruntime_onnx", "inputs": [tensor],
                "outputs": [], "not_in_proto": 1}  # fmt: skip

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        self._known(name)
        inp = {"name": "x", "data_type": "TYPE_FP32", "dims": [4]}
        return {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": 256, "input": [inp],
                "dynamic_batching": {"max_queue_delay_microseconds": 500}}  # fmt: skip

    def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        stat = {
            "name": "iris",
            "version": "1",
            "inference_count": 3,
            "inference_stats": {"success": {"count": 3, "ns": 9}},
        }
        return {"model_stats": [stat]}

    def check_admin(self, authorization: str | None) -> None:
        if authorization is None:
            raise Unauthorized()
        if authorization != f"Bearer {TOKEN}":
            raise Forbidden("The admin token is wrong.")

    async def repository_index(self) -> list[dict[str, Any]]:
        return [
            {"name": "iris", "version": "1", "state": "READY", "reason": ""},
            {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "bad checksum"},
        ]

    async def load_model(self, name: str) -> None:
        self._known(name)

    async def unload_model(self, name: str) -> None:
        if name == "busy":
            raise Unavailable("The model is busy.")
        self._known(name)


def services(**settings: Any) -> SimpleNamespace:
    base = {"host": "127.0.0.1", "grpc_port": 0, "max_body_bytes": 100_000, "header_timeout_s": 10.0}
    return SimpleNamespace(
        settings=SimpleNamespace(**{**base, **settings}),
        dataplane=FakeDataPlane(),
        drain=DrainState(),
        cluster=None,  # one process (with --workers N, a worker's link to its parent)
    )


Body = Callable[[pb_grpc.GRPCInferenceServiceStub, SimpleNamespace, grpc.aio.Channel], Awaitable[None]]


def serve(body: Body, **settings: Any) -> None:
    """Start a GrpcServer on a free port, run `body` against it, stop it."""

    async def main() -> None:
        svc = services(**settings)
        svc.dataplane.release = asyncio.Event()
        server = GrpcServer(svc)  # grpc_port 0 here: a free port, chosen by the kernel
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await body(pb_grpc.GRPCInferenceServiceStub(channel), svc, channel)
        finally:
            await server.stop(0)

    asyncio.run(main())


def infer_request(model: str = "iris", values: list[float] | None = None) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, id="a")
    x = msg.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    x.contents.fp32_contents.extend(values or [1.0, 2.5])
    return msg


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


def test_port_zero_turns_grpc_off() -> None:
    assert create_grpc_server(services(grpc_port=0)) is None


def test_infer_goes_through_the_data_plane_as_grpc() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        answer = await stub.ModelInfer(infer_request(), timeout=5)
        assert (answer.model_name, answer.model_version, answer.id) == ("iris", "1", "a")
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [2.0, 5.0]
        _, protocol, deadline = svc.dataplane.calls[0]
        assert protocol == "grpc"
        # The client's 5 s deadline is the data plane's deadline.
        assert deadline is not None and 0 < deadline - time.perf_counter() <= 5
        await stub.ModelInfer(infer_request())
        assert svc.dataplane.calls[1][2] is None  # no client deadline: the data plane's own timeout

    serve(body)


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("unknown", grpc.StatusCode.NOT_FOUND, "Unknown model 'unknown'."),
        ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, "The queue is full."),
        ("late", grpc.StatusCode.DEADLINE_EXCEEDED, "The request timed out."),
        ("bug", grpc.StatusCode.INTERNAL, "The server failed on this request; its log has the details."),
    ],
)
def test_data_plane_errors_map_to_status_codes(model: str, code: grpc.StatusCode, message: str) -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        assert await status_of(stub.ModelInfer(infer_request(model))) == (code, message)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live  # still serving

    serve(body)


def test_bad_input_is_invalid_argument() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        code, message = await status_of(stub.ModelInfer(infer_request(values=[1.0])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message == "Input 'x' has 1 values in its contents but shape [1, 2] needs 2."
        assert svc.dataplane.calls == []  # refused by the codec, before the data plane

    serve(body)


def test_message_over_the_body_limit_is_resource_exhausted() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        code, _ = await status_of(stub.ModelInfer(infer_request(values=[0.0] * 50_000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.ModelInfer(infer_request())).raw_output_contents

    serve(body, max_body_bytes=100_000)


def test_metadata_config_and_statistics() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert (meta.name, list(meta.extensions)) == ("ensemble-serving", ["model_repository", "statistics"])
        model = await stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
        assert (model.platform, model.inputs[0].name, list(model.inputs[0].shape)) == (
            "onnxruntime_onnx",
            "x",
            [-1, 4],
        )
        config = (await stub.ModelConfig(pb.ModelConfigRequest(name="iris"))).config
        assert (config.max_batch_size, list(config.input[0].dims)) == (256, [4])
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="iris"))
        assert stats.model_stats[0].inference_stats.success.count == 3
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris"))).ready
        for call in (stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")),
                     stub.ModelReady(pb.ModelReadyRequest(name="nope"))):  # fmt: skip
            assert await status_of(call) == (grpc.StatusCode.NOT_FOUND, "Unknown model 'nope'.")

    serve(body)


def test_repository_calls_need_the_admin_token() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        index = pb.RepositoryIndexRequest()
        code, message = await status_of(stub.RepositoryIndex(index))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in message
        wrong = (("authorization", "Bearer nope"),)
        assert await status_of(stub.RepositoryIndex(index, metadata=wrong)) == (
            grpc.StatusCode.PERMISSION_DENIED, "The admin token is wrong.",
        )  # fmt: skip
        good = (("authorization", f"Bearer {TOKEN}"),)
        models = (await stub.RepositoryIndex(index, metadata=good)).models
        assert [(m.name, m.state, m.reason) for m in models] == [
            ("iris", "READY", ""), ("broken", "UNAVAILABLE", "bad checksum"),
        ]  # fmt: skip
        ready_only = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=good)
        assert [m.name for m in ready_only.models] == ["iris"]
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="iris"), metadata=good)
        unload = pb.RepositoryModelUnloadRequest(model_name="busy")
        assert await status_of(stub.RepositoryModelUnload(unload, metadata=good)) == (
            grpc.StatusCode.UNAVAILABLE, "The model is busy.",
        )  # fmt: skip
        load = pb.RepositoryModelLoadRequest(model_name="iris")
        assert (await status_of(stub.RepositoryModelLoad(load)))[0] == grpc.StatusCode.UNAUTHENTICATED

    serve(body)


def test_stream_answers_each_request_and_reports_errors_in_band() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        requests = [infer_request(), infer_request("unknown"), infer_request(values=[1.0]), infer_request()]
        answers = [a async for a in stub.ModelStreamInfer(iter(requests))]
        assert [a.error_message for a in answers] == [
            "",
            "Unknown model 'unknown'.",
            "Input 'x' has 1 values in its contents but shape [1, 2] needs 2.",
            "",
        ]
        assert np.frombuffer(answers[3].infer_response.raw_output_contents[0], "<f4").tolist() == [2.0, 5.0]
        assert answers[1].infer_response.model_name == "unknown"

    serve(body)


def test_drain_refuses_new_calls_finishes_running_ones_and_turns_health_off() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == SERVING
        running = asyncio.ensure_future(stub.ModelInfer(infer_request("slow")))
        while svc.drain.in_flight == 0:  # the call reached the data plane (counted with HTTP's requests)
            await asyncio.sleep(0.01)
        svc.drain.draining = True
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
        assert await status_of(stub.ModelInfer(infer_request())) == (
            grpc.StatusCode.UNAVAILABLE, "The server is shutting down; send the request to another replica.",
        )  # fmt: skip
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live  # liveness still answers
        svc.dataplane.release.set()
        assert (await running).model_name == "slow"
        assert svc.drain.in_flight == 0

    serve(body)


def test_health_follows_readiness() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        svc.dataplane.ready = False
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        svc.dataplane.ready = True
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING

    serve(body)


def test_unimplemented_rpcs_say_so() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        code, _ = await status_of(stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED

    serve(body)


def test_bytes_that_are_not_a_message_are_invalid_argument() -> None:
    async def body(stub: Any, svc: SimpleNamespace, channel: Any) -> None:
        garbage = b"\xff\xff\xff\xff not protobuf"
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        assert await status_of(unary(garbage)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "The request is not a valid ModelInferRequest message.",
        )
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        good = infer_request().SerializeToString()
        answers = [a async for a in stream(iter([garbage, good]))]
        assert [a.error_message for a in answers] == [
            "The request is not a valid ModelInferRequest message.",
            "",
        ]

    serve(body)


def test_a_taken_port_is_one_clear_error() -> None:
    async def main() -> None:
        first = GrpcServer(services())
        await first.start()
        try:
            with pytest.raises(
                OSError, match=rf"gRPC cannot listen on 127.0.0.1:{first.port}: the port is in use"
            ):
                GrpcServer(services(grpc_port=first.port))
        finally:
            await first.stop(0)

    asyncio.run(main())
