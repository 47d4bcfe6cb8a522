"""ModelInferRequest <-> InferenceRequest: typed and raw contents, BYTES, parameters, and every refusal."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from server.grpc import codec
from server.grpc.generated import grpc_service_pb2 as pb
from server.protocol.tensors import InferenceResponse, OutputTensor, ProtocolError


def request(
    *inputs: pb.ModelInferRequest.InferInputTensor, raw: list[bytes] | None = None
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="iris", model_version="2", id="r1")
    msg.inputs.extend(inputs)
    msg.raw_input_contents.extend(raw or [])
    return msg


def tensor(name: str = "x", datatype: str = "FP32", shape: tuple[int, ...] = (2, 2), **contents: list) -> Any:
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    return t


def refused(msg: pb.ModelInferRequest) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.decode_request(msg)
    assert info.value.status_code == 400
    return info.value.message


def test_typed_fp32_contents_decode_to_the_shape() -> None:
    req = codec.decode_request(request(tensor(fp32_contents=[1, 2, 3, 4])))
    assert (req.model_name, req.model_version, req.id) == ("iris", "2", "r1")
    x = req.inputs[0]
    assert (x.name, x.datatype, x.shape) == ("x", "FP32", (2, 2))
    np.testing.assert_array_equal(x.data, np.array([[1, 2], [3, 4]], np.float32))
    assert x.data.dtype == np.float32
    assert req.outputs is None


def test_raw_contents_equal_the_typed_ones() -> None:
    values = np.array([[0.5, -1.0], [3.25, 1e-3]], np.float32)
    raw = codec.decode_request(request(tensor(), raw=[values.tobytes()]))
    typed = codec.decode_request(request(tensor(fp32_contents=values.reshape(-1).tolist())))
    np.testing.assert_array_equal(raw.inputs[0].data, typed.inputs[0].data)


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("INT8", "int_contents", [-128, 127], np.int8),
        ("INT16", "int_contents", [-5, 300], np.int16),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1], np.int32),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1], np.int64),
        ("UINT8", "uint_contents", [0, 255], np.uint8),
        ("UINT32", "uint_contents", [0, 2**32 - 1], np.uint32),
        ("UINT64", "uint64_contents", [0, 2**64 - 1], np.uint64),
        ("FP64", "fp64_contents", [1.5, -2.0], np.float64),
        ("BOOL", "bool_contents", [True, False], np.bool_),
    ],
)
def test_every_typed_field(datatype: str, field: str, values: list, dtype: type) -> None:
    req = codec.decode_request(request(tensor(datatype=datatype, shape=(2,), **{field: values})))
    data = req.inputs[0].data
    assert data.dtype == dtype
    assert data.tolist() == values


def test_narrow_integers_out_of_range_are_refused() -> None:
    message = refused(request(tensor(datatype="INT8", shape=(1,), int_contents=[200])))
    assert message == "The contents of input 'x' have values outside the range of INT8."


def test_bytes_typed_and_raw() -> None:
    typed = codec.decode_request(request(tensor(datatype="BYTES", shape=(2,), bytes_contents=[b"a", b"bc"])))
    assert typed.inputs[0].data.tolist() == [b"a", b"bc"]
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    from_raw = codec.decode_request(request(tensor(datatype="BYTES", shape=(2,)), raw=[raw]))
    assert from_raw.inputs[0].data.tolist() == [b"a", b"bc"]
    assert from_raw.inputs[0].data.dtype == object


@pytest.mark.parametrize(
    "raw",
    [b"", struct.pack("<I", 5) + b"ab", struct.pack("<I", 1) + b"a" + b"junk", struct.pack("<I", 1) + b"a"],
)
def test_malformed_raw_bytes_are_refused(raw: bytes) -> None:
    message = refused(request(tensor(datatype="BYTES", shape=(2,)), raw=[raw]))
    assert "Input 'x'" in message and "BYTES" in message


def test_parameters_of_every_kind() -> None:
    msg = request(tensor(fp32_contents=[1, 2, 3, 4]))
    msg.parameters["timeout"].int64_param = 1500
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["flag"].bool_param = True
    msg.parameters["tag"].string_param = "a"
    msg.parameters["ratio"].double_param = 0.5
    msg.parameters["empty"].CopyFrom(pb.InferParameter())
    req = codec.decode_request(msg)
    assert req.parameters == {"timeout": 1500, "priority": 2, "flag": True, "tag": "a", "ratio": 0.5}


def test_requested_outputs_keep_their_order() -> None:
    msg = request(tensor(fp32_contents=[1, 2, 3, 4]))
    msg.outputs.add(name="label")
    msg.outputs.add(name="probabilities")
    req = codec.decode_request(msg)
    assert [o.name for o in req.outputs] == ["label", "probabilities"]


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (pb.ModelInferRequest(model_name="iris"), "The request must have at least one input."),
        (
            request(tensor(fp32_contents=[1, 2, 3])),
            "Input 'x' has 3 values in its contents but shape [2, 2] needs 4.",
        ),
        (request(tensor()), "Input 'x' has 0 values in its contents but shape [2, 2] needs 4."),
        (
            request(tensor(int64_contents=[1, 2, 3, 4])),
            "Input 'x' is FP32 but has 'int64_contents'; its values go in 'fp32_contents'.",
        ),
        (
            request(tensor(datatype="FP16", shape=(1,), fp32_contents=[1])),
            "Input 'x' is FP16 but has 'fp32_contents'; its values must be sent in raw_input_contents.",
        ),
        (
            request(tensor(), raw=[b"\0" * 12]),
            "Input 'x' has 12 bytes of binary data but shape [2, 2] of FP32 needs 16.",
        ),
        (
            request(tensor(), tensor(name="y"), raw=[b"\0" * 16]),
            "The request has 1 raw_input_contents for 2 inputs; "
            "send one per input, in the order of 'inputs'.",
        ),
        (
            request(tensor(fp32_contents=[1, 2, 3, 4]), raw=[b"\0" * 16]),
            "Input 'x' has both 'contents' and raw_input_contents; send one of them.",
        ),
        (request(tensor(), tensor()), "The request names input 'x' more than once."),
        (request(tensor(name="")), "Input 0 must have a non-empty 'name'."),
        (request(tensor(shape=(-1, 4))), "Input 'x' has shape [-1, 4] with a negative dimension."),
        (
            request(tensor(shape=(1 << 20, 1 << 20))),
            f"Input 'x' has shape [{1 << 20}, {1 << 20}], more than {1 << 31} elements.",
        ),
        (request(tensor(shape=(1,) * 17)), "Input 'x' has 17 dimensions; at most 16 are supported."),
    ],
)
def test_malformed_requests_get_one_sentence(msg: pb.ModelInferRequest, expected: str) -> None:
    assert refused(msg) == expected


def test_unknown_datatype_names_the_supported_ones() -> None:
    message = refused(request(tensor(datatype="FP8", fp32_contents=[1, 2, 3, 4])))
    assert message.startswith("Input 'x' has unknown datatype 'FP8'; supported: BOOL, ")


def test_missing_model_name() -> None:
    assert refused(pb.ModelInferRequest()) == "The request must name a model in 'model_name'."


def test_duplicate_and_unsupported_outputs() -> None:
    msg = request(tensor(fp32_contents=[1, 2, 3, 4]))
    msg.outputs.add(name="label")
    msg.outputs.add(name="label")
    assert refused(msg) == "The request names output 'label' more than once."
    msg = request(tensor(fp32_contents=[1, 2, 3, 4]))
    msg.outputs.add(name="label").parameters["classification"].int64_param = 2
    assert "classification extension" in refused(msg)


def test_shared_memory_is_refused() -> None:
    t = tensor(fp32_contents=[1, 2, 3, 4])
    t.parameters["shared_memory_region"].string_param = "r"
    assert refused(request(t)) == "Input 'x' uses shared memory, which this server does not support."


def test_response_goes_back_raw() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    label = np.array([1], np.int64)
    names = np.array([b"cat", "dog"], dtype=object)
    response = InferenceResponse(
        model_name="iris",
        model_version="2",
        id="r1",
        outputs=(
            OutputTensor("probabilities", "FP32", (1, 2), probs),
            OutputTensor("label", "INT64", (1,), label),
            OutputTensor("names", "BYTES", (2,), names),
        ),
        parameters={"member_count": 3},
    )
    msg = codec.encode_response(response)
    assert (msg.model_name, msg.model_version, msg.id) == ("iris", "2", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("probabilities", "FP32", [1, 2]),
        ("label", "INT64", [1]),
        ("names", "BYTES", [2]),
    ]
    np.testing.assert_array_equal(np.frombuffer(msg.raw_output_contents[0], "<f4").reshape(1, 2), probs)
    np.testing.assert_array_equal(np.frombuffer(msg.raw_output_contents[1], "<i8"), label)
    assert msg.raw_output_contents[2] == struct.pack("<I", 3) + b"cat" + struct.pack("<I", 3) + b"dog"
    assert msg.parameters["member_count"].int64_param == 3
    # A round trip through the wire form changes nothing.
    assert pb.ModelInferResponse.FromString(msg.SerializeToString()) == msg
