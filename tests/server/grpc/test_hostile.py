"""Hostile gRPC input against a real server: each gets its status code and one sentence; it stays ready."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from testing.server_process import ServerProcess
from tests.server.grpc.conftest import rows

pytestmark = pytest.mark.slow

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def stub(grpc_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_send_message_length", -1)]  # so the 100 MB message leaves the client
    with grpc.insecure_channel(grpc_server.grpc_target, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(
    model: str = "iris", datatype: str = "FP32", shape: tuple[int, ...] = (1, 4)
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="input", datatype=datatype, shape=shape)
    return msg


def typed(values: list[float], **kwargs: object) -> pb.ModelInferRequest:
    msg = request(**kwargs)  # type: ignore[arg-type]
    msg.inputs[0].contents.fp32_contents.extend(values)
    return msg


def raw(data: bytes, **kwargs: object) -> pb.ModelInferRequest:
    msg = request(**kwargs)  # type: ignore[arg-type]
    msg.raw_input_contents.append(data)
    return msg


def refused(stub: pb_grpc.GRPCInferenceServiceStub, msg: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(msg, timeout=30)
    return info.value.code(), info.value.details()


def http_error(server: ServerProcess, model: str, x: np.ndarray, datatype: str = "FP32") -> str:
    body = {"inputs": [{"name": "input", "datatype": datatype, "shape": list(x.shape), "data": x.tolist()}]}
    r = server.client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code in (400, 404), r.text
    return r.json()["error"]


def assert_still_serving(server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert server.client.get("/v2/health/ready").status_code == 200
    answer = stub.ModelInfer(raw(rows(1, 4).tobytes()))
    assert [o.name for o in answer.outputs] == ["probabilities", "label", "spread"]


@pytest.mark.parametrize(
    ("msg", "code", "message"),
    [
        (
            typed([1.0] * 4, datatype="FP8"),
            INVALID,
            "Input 'input' has unknown datatype 'FP8'; supported: BOOL, ",
        ),
        (
            typed([1.0, 2.0, 3.0]),
            INVALID,
            "Input 'input' has 3 values in its contents but shape [1, 4] needs 4.",
        ),
        (
            raw(b"\0" * 15),
            INVALID,
            "Input 'input' has 15 bytes of binary data but shape [1, 4] of FP32 needs 16.",
        ),
        (typed([], shape=(1 << 40, 4)), INVALID, f"Input 'input' has shape [{1 << 40}, 4], more than "),
        (typed([], shape=(-1, 4)), INVALID, "Input 'input' has shape [-1, 4] with a negative dimension."),
        (typed([], shape=(1,) * 40), INVALID, "Input 'input' has 40 dimensions; at most 16 are supported."),
        (typed([1.0] * 4, model="nope"), NOT_FOUND, "Model 'nope' does not exist."),
        (typed([1.0] * 4, model="../etc"), NOT_FOUND, "Model '../etc' does not exist."),
    ],
)
def test_malformed_requests(
    grpc_server: ServerProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    msg: pb.ModelInferRequest,
    code: object,
    message: str,
) -> None:
    got_code, details = refused(stub, msg)
    assert got_code == code
    assert details.startswith(message), details
    assert_still_serving(grpc_server, stub)


def test_model_checks_say_what_http_says(
    grpc_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Checks against the model are the data plane's: the same sentence over both transports."""
    x = rows(2, 7)  # 7 features for a 4-feature model
    assert refused(stub, raw(x.tobytes(), shape=(2, 7))) == (INVALID, http_error(grpc_server, "iris", x))
    flags = np.array([[True, False, True, True]])
    wrong_type = request(datatype="BOOL")
    wrong_type.inputs[0].contents.bool_contents.extend(flags.reshape(-1).tolist())
    assert refused(stub, wrong_type) == (INVALID, http_error(grpc_server, "iris", flags, "BOOL"))
    nan = raw(np.full((1, 4), np.nan, np.float32).tobytes())
    code, details = refused(stub, nan)
    assert code == INVALID and "NaN" in details
    assert_still_serving(grpc_server, stub)


def test_a_100_mb_message_is_resource_exhausted(
    grpc_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    n = 100 * 1024 * 1024 // 16
    code, details = refused(stub, raw(b"\0" * (n * 16), shape=(n, 4)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert_still_serving(grpc_server, stub)


def test_bytes_that_are_not_a_message(grpc_server: ServerProcess) -> None:
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff garbage", timeout=10)
        assert (info.value.code(), info.value.details()) == (
            INVALID,
            "The request is not a valid ModelInferRequest message.",
        )
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert_still_serving(grpc_server, stub)


def test_stream_of_bad_requests_gets_in_band_errors(
    grpc_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    answers = list(
        stub.ModelStreamInfer(iter([typed([1.0]), typed([1.0] * 4, model="nope"), raw(rows(1, 4).tobytes())]))
    )
    assert [a.error_message for a in answers] == [
        "Input 'input' has 1 values in its contents but shape [1, 4] needs 4.",
        "Model 'nope' does not exist.",
        "",
    ]
    assert_still_serving(grpc_server, stub)


@pytest.mark.parametrize("version", ["1" * 5000, "1" * 19])
def test_a_version_past_18_digits_is_not_found(
    grpc_server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, version: str
) -> None:
    """Past Python's int-digit limit (4,300) this was INTERNAL with a traceback in the log."""
    msg = raw(rows(1, 4).tobytes())
    msg.model_version = version
    code, message = refused(stub, msg)
    assert code == NOT_FOUND and "positive integers" in message and len(message) < 200, message
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="iris", version=version), timeout=30)
    assert info.value.code() == NOT_FOUND
    assert_still_serving(grpc_server, stub)
    text = grpc_server.log.read_text()
    assert "Traceback" not in text and "1" * 1000 not in text
