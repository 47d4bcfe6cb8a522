"""server.protocol.v2 and its tensor codecs against the real tritonclient (2.41.1): its request bodies and
its response reader."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.http._utils import _get_inference_request

from server.protocol.tensors import DATATYPES, InferenceRequest, ProtocolError
from server.protocol.v2 import (
    HEADER_LENGTH_HEADER,
    binary_outputs,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
)

NUMPY_OF = {name: dtype.newbyteorder("=") for name, dtype in DATATYPES.items()}


def _client_request(
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    """The exact body tritonclient's InferenceServerClient.infer would POST."""
    return _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )


def _client_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _tensors(*, finite: bool) -> st.SearchStrategy[tuple[str, np.ndarray]]:
    """(datatype, array) for every supported datatype, shapes up to 3-D including empty ones."""

    def for_type(datatype: str) -> st.SearchStrategy[tuple[str, np.ndarray]]:
        dtype = NUMPY_OF[datatype]
        elements = None
        if dtype.kind == "f":
            elements = hnp.from_dtype(dtype, allow_nan=not finite, allow_infinity=not finite)
        arrays = hnp.arrays(
            dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5), elements=elements
        )
        return arrays.map(lambda a: (datatype, a))

    return st.sampled_from(sorted(DATATYPES)).flatmap(for_type)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


# ------------------------------------------------------------------------------------- requests, round trip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tensors=st.lists(_tensors(finite=True), min_size=1, max_size=4),
    binary=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_tritonclient_requests_round_trip(tensors: list[tuple[str, np.ndarray]], binary: list[bool]) -> None:
    inputs = [_client_input(f"in{i}", a, dt, binary[i]) for i, (dt, a) in enumerate(tensors)]
    body, header_length = _client_request(inputs, request_id="abc")

    request = parse_infer_request(body, header_length)

    assert request.id == "abc"
    assert [t.name for t in request.inputs] == [f"in{i}" for i in range(len(tensors))]
    for (datatype, array), got in zip(tensors, request.inputs, strict=True):
        assert got.datatype == datatype
        assert got.shape == array.shape
        assert _same(got.data, array), (datatype, array, got.data)


@settings(max_examples=60, deadline=None)
@given(tensor=_tensors(finite=False))
def test_binary_inputs_carry_nan_and_infinity_exactly(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    body, header_length = _client_request([_client_input("x", array, datatype, True)])
    got = parse_infer_request(body, header_length).input("x").data
    assert _same(got, array)


def test_binary_inputs_are_zero_copy_views_and_the_header_length_may_be_a_string() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, header_length = _client_request([_client_input("x", array, "FP32", True)])
    got = parse_infer_request(body, str(header_length)).input("x").data
    assert not got.flags.writeable
    assert np.shares_memory(got, np.frombuffer(body, dtype=np.uint8))


def test_mixed_json_and_binary_inputs_keep_their_order() -> None:
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    b = np.array([7, 8, 9], dtype=np.int64)
    c = np.array([True, False], dtype=bool)
    inputs = [_client_input("a", a, "FP32", True), _client_input("b", b, "INT64", False)]
    inputs.append(_client_input("c", c, "BOOL", True))
    request = parse_infer_request(*_client_request(inputs))
    assert _same(request.input("a").data, a)
    assert _same(request.input("b").data, b)
    assert _same(request.input("c").data, c)
    assert request.input("a").parameters == {"binary_data_size": 8}


def test_nested_json_data_is_accepted_row_major() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    )
    got = parse_infer_request(body).input("x").data
    assert _same(got, np.array([[1, 2], [3, 4]], dtype=np.float32))


def test_json_only_request_needs_no_header_length() -> None:
    array = np.array([[0.25, 0.5]], dtype=np.float64)
    body, header_length = _client_request([_client_input("x", array, "FP64", False)])
    assert header_length is None
    assert _same(parse_infer_request(body, None).input("x").data, array)


# ------------------------------------------------------------------------------------- requested outputs


def test_no_requested_outputs_means_all_outputs_as_binary() -> None:
    # tritonclient sets binary_data_output when the caller names no outputs.
    array = np.zeros((1, 4), dtype=np.float32)
    request = parse_infer_request(*_client_request([_client_input("x", array, "FP32", True)]))
    assert request.outputs is None
    assert request.parameters["binary_data_output"] is True
    assert request.output_names(["probabilities", "label", "spread"]) == ["probabilities", "label", "spread"]
    assert binary_outputs(request, ["probabilities", "label"]) == {"probabilities", "label"}


def test_per_output_binary_data_overrides_binary_data_output() -> None:
    array = np.zeros((1, 4), dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("spread"), httpclient.InferRequestedOutput("label", False)]
    request = parse_infer_request(*_client_request([_client_input("x", array, "FP32", True)], outputs))
    assert request.output_names(["probabilities", "label", "spread"]) == ["spread", "label"]
    assert binary_outputs(request, ["spread", "label"]) == {"spread"}

    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
            "parameters": {"binary_data_output": True},
        }
    )
    request = parse_infer_request(body)
    assert binary_outputs(request, ["a", "b"]) == {"b"}


def test_unknown_requested_output_is_refused() -> None:
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "nope"}],
        }
    )
    with pytest.raises(ProtocolError, match="Unknown output 'nope'; this model has outputs a, b"):
        parse_infer_request(body).output_names(["a", "b"])


# ------------------------------------------------------------------------------------- malformed requests


def _json_request(**tensor: Any) -> dict[str, Any]:
    base = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    base.update(tensor)
    return {"inputs": [{k: v for k, v in base.items() if v is not ...}]}


def _binary_body(tensor: dict[str, Any], tail: bytes) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [tensor]})
    return header + tail, len(header)


JSON_CASES = [
    (_json_request(datatype="FP8"), "unknown datatype 'FP8'; supported: BOOL, INT8"),
    (_json_request(datatype="BYTES", data=[["a"], "b"]), "is ragged"),
    (_json_request(datatype="BYTES", data=["a", {"b": 1}]), "neither text nor a number"),
    (_json_request(datatype="BYTES", data=["a"]), "has 1 values in 'data' but shape \\[2\\] needs 2"),
    (_json_request(datatype=3), "must have a string 'datatype'"),
    (_json_request(shape=[-1]), "shape \\[-1\\] with a negative dimension"),
    (_json_request(shape=[2.0]), "'shape' that is an array of integers"),
    (_json_request(shape=[True]), "'shape' that is an array of integers"),
    (_json_request(shape=...), "'shape' that is an array of integers"),
    (_json_request(name=...), "Input 0 must have a non-empty string 'name'"),
    (_json_request(data=...), "neither 'data' nor a binary_data_size"),
    (_json_request(data=[1.0, 2.0, 3.0]), "has 3 values in 'data' but shape \\[2\\] needs 2"),
    (_json_request(shape=[2, 2], data=[[1.0, 2.0], [3.0]]), "is ragged"),
    (_json_request(data=[1.0, "2"]), "values that are not numbers"),
    (_json_request(datatype="INT64", data=[1, None]), "values that are not numbers"),
    (_json_request(data=[True, None]), "values that are not numbers"),
    (_json_request(data=[1.0, {"a": 1}]), "values that are not numbers"),
    # orjson reads integers beyond 64 bits as floats.
    (
        b'{"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1], "data": [18446744073709551616]}]}',
        "outside the range of UINT64",
    ),
    (_json_request(data=[True, False]), "must hold numbers, not booleans"),
    (_json_request(data=1.0, shape=[1]), "'data' of input 'x' must be a JSON array"),
    (_json_request(datatype="INT32", data=[1.5, 2]), "INT32, so its 'data' must hold integers"),
    (_json_request(datatype="UINT64", data=[2**63, 0.5]), "UINT64, so its 'data' must hold integers"),
    (_json_request(datatype="INT64", data=[2**63, 0]), "outside the range of INT64"),
    (_json_request(datatype="UINT64", data=[2**63, -1]), "outside the range of UINT64"),
    (_json_request(datatype="UINT8", data=[256.0, 1]), "outside the range of UINT8"),
    (_json_request(datatype="INT8", data=[-129.0, 1.0]), "outside the range of INT8"),
    (_json_request(datatype="INT8", data=[1, 300]), "outside the range of INT8"),
    (_json_request(datatype="UINT8", data=[1, -1]), "outside the range of UINT8"),
    (_json_request(datatype="FP16", data=[1.0, 1e6]), "outside the range of FP16"),
    (_json_request(datatype="FP32", data=[1.0, 1e300]), "outside the range of FP32"),
    (_json_request(datatype="BOOL", data=[1, 0]), "must hold only true and false"),
    (_json_request(parameters=[]), "The 'parameters' of input 'x' must be a JSON object"),
    (_json_request(parameters={"shared_memory_region": "r"}), "uses shared memory"),
    ({"inputs": []}, "non-empty 'inputs' array"),
    ({"inputs": {"x": 1}}, "non-empty 'inputs' array"),
    ({"inputs": [3]}, "Input 0 must be a JSON object"),
    ([1, 2], "must be a JSON object"),
    ({**_json_request(), "id": 5}, "'id' must be a string"),
    (
        {**_json_request(), "parameters": {"binary_data_output": "yes"}},
        "'binary_data_output' must be true or false",
    ),
    ({**_json_request(), "parameters": 1}, "The request 'parameters' must be a JSON object"),
    ({**_json_request(), "outputs": {}}, "'outputs' must be an array"),
    (
        {**_json_request(), "outputs": [{"name": ""}]},
        "Requested output 0 must have a non-empty string 'name'",
    ),
    ({**_json_request(), "outputs": ["a"]}, "Requested output 0 must be a JSON object"),
    (
        {**_json_request(), "outputs": [{"name": "a", "parameters": {"binary_data": 1}}]},
        "must be true or false",
    ),
    ({**_json_request(), "outputs": [{"name": "a", "parameters": {"classification": 3}}]}, "classification"),
    ({**_json_request(), "outputs": [{"name": "a"}, {"name": "a"}]}, "names output 'a' more than once"),
    ({"inputs": _json_request()["inputs"] * 2}, "names input 'x' more than once"),
]


@pytest.mark.parametrize(("doc", "message"), JSON_CASES)
def test_malformed_json_requests_are_refused_with_one_sentence(doc: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer_request(doc if isinstance(doc, bytes) else orjson.dumps(doc))
    assert info.value.message == str(info.value)
    assert info.value.message.endswith(".")
    assert isinstance(info.value, ValueError)


def _fp32_binary(size: int, **extra: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": size}, **extra}


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b'{"inputs": []}', 100, "is 100 but the request body has only 14 bytes"),
        (b"{}", -1, "must be a non-negative integer"),
        (b"{}", "12a", "must be a non-negative integer, got '12a'"),
        (b"{}", True, "must be a non-negative integer"),
        (b"\xff\xfe{}", None, "request body is not valid UTF-8 JSON"),
        (b"{'a': 1}", None, "request body is not valid UTF-8 JSON"),
        (b'{"a": NaN}', None, "not valid UTF-8 JSON"),
        (b"", None, "not valid UTF-8 JSON"),
        (*_binary_body(_fp32_binary(8), b"\0" * 12), "declare 8 bytes in all, but 12 bytes follow"),
        (*_binary_body(_fp32_binary(8), b"\0" * 4), "declare 8 bytes in all, but 4 bytes follow"),
        (
            *_binary_body(_fp32_binary(12), b"\0" * 12),
            "has 12 bytes of binary data but shape \\[2\\] of FP32 needs 8",
        ),
        (*_binary_body(_fp32_binary(-8), b""), "binary_data_size that is not a non-negative integer"),
        (*_binary_body(_fp32_binary(8, data=[1, 2]), b"\0" * 8), "both 'data' and a binary_data_size"),
        (
            *_binary_body(
                {"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}},
                b"\1\2",
            ),
            "BOOL but has bytes other than 0 and 1",
        ),
        (orjson.dumps({"inputs": [_fp32_binary(8)]}), None, "has no Inference-Header-Content-Length header"),
        (
            orjson.dumps({"inputs": [_fp32_binary(8)]}) + b"\0" * 8,
            None,
            "not valid UTF-8 JSON .*needs the Inference-Header-Content-Length header",
        ),
        (b"\xff{}", 1, "inference header is not valid UTF-8 JSON"),
        (*_binary_body(_json_request()["inputs"][0], b"junk"), "declare 0 bytes in all, but 4 bytes follow"),
    ],
)
def test_malformed_binary_requests_are_refused(body: bytes, header_length: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer_request(body, header_length)
    assert info.value.message.endswith(".")


def test_the_header_length_header_name_is_tritons() -> None:
    assert HEADER_LENGTH_HEADER == "Inference-Header-Content-Length"
    assert parse_header_length(None, 10) is None
    assert parse_header_length(" 7 ", 10) == 7


# ------------------------------------------------------------------------------------- responses


def _read(body: bytes, header_length: int | None) -> httpclient.InferResult:
    return httpclient.InferResult.from_response_body(body, header_length=header_length)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(_tensors(finite=False), min_size=1, max_size=4), data=st.data())
def test_responses_read_back_with_tritonclient(
    tensors: list[tuple[str, np.ndarray]], data: st.DataObject
) -> None:
    outputs = [(f"out{i}", a, dt) for i, (dt, a) in enumerate(tensors)]
    binary = data.draw(st.sets(st.sampled_from([name for name, _, _ in outputs])))
    body, header_length = encode_infer_response("m", 3, outputs, request_id="r", binary=binary)

    assert (header_length is None) == (not binary)
    result = _read(body, header_length)
    assert result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "r"
    for name, array, _ in outputs:
        got = result.as_numpy(name)
        assert got.shape == array.shape
        if array.size == 0:
            # tritonclient returns float64 for an empty binary output, whatever its datatype.
            assert got.size == 0
        elif name in binary:
            assert _same(got, array)
        elif array.dtype.kind == "f":
            # JSON cannot carry NaN or infinities: they go as null and tritonclient reads NaN.
            expected = np.where(np.isfinite(array), array, np.nan)
            assert np.array_equal(got.astype(array.dtype), expected, equal_nan=True)
        else:
            assert np.array_equal(got, array)


def test_json_response_data_is_flat_and_row_major() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, header_length = encode_infer_response("m", "1", [("p", array, "FP32")], binary=False)
    assert header_length is None
    doc = orjson.loads(body)
    assert doc == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "p", "datatype": "FP32", "shape": [2, 3], "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
        ],
    }


def test_json_response_writes_nan_as_null() -> None:
    array = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    body, _ = encode_infer_response("m", "1", [("p", array, "FP32")], binary=False)
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, None, None]


def test_binary_response_layout_matches_the_extension() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    label = np.array([1], dtype=np.int64)
    outputs = [("probabilities", probabilities, "FP32"), ("label", label, "INT64")]
    body, header_length = encode_infer_response("m", 1, outputs, binary=True, parameters={"members": 5})
    header = orjson.loads(body[:header_length])
    assert header["parameters"] == {"members": 5}
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 8]
    assert "data" not in header["outputs"][0]
    assert body[header_length:] == struct.pack("<2f", 0.25, 0.75) + struct.pack("<q", 1)


def test_non_contiguous_outputs_are_written_row_major() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3).T  # Fortran order view
    for binary in (True, False):
        body, header_length = encode_infer_response("m", 1, [("p", array, "FP32")], binary=binary)
        assert _same(_read(body, header_length).as_numpy("p"), np.ascontiguousarray(array))


def test_encoding_refuses_programming_errors() -> None:
    with pytest.raises(ValueError, match="is float64 but datatype FP32"):
        encode_infer_response("m", 1, [("p", np.zeros(2), "FP32")])
    with pytest.raises(ValueError, match="not in the response"):
        encode_infer_response("m", 1, [("p", np.zeros(2, dtype=np.float32), "FP32")], binary={"q"})
    with pytest.raises(ValueError, match="unsupported datatype 'BYTES'"):
        encode_infer_response("m", 1, [("p", np.zeros(2, dtype=np.float32), "BYTES")])


def test_request_to_response_through_tritonclient_end_to_end() -> None:
    """What perf_analyzer and tritonclient do: binary input, binary outputs for every output."""
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    request: InferenceRequest = parse_infer_request(
        *_client_request([_client_input("input", features, "FP32", True)])
    )
    x = request.input("input").data
    outputs = {"probabilities": x / np.abs(x).sum(axis=1, keepdims=True), "label": x.argmax(axis=1)}
    names = request.output_names(["probabilities", "label"])
    datatypes = {"probabilities": "FP32", "label": "INT64"}
    body, header_length = encode_infer_response(
        "digits", 1, [(n, outputs[n], datatypes[n]) for n in names], binary=binary_outputs(request, names)
    )
    result = _read(body, header_length)
    assert _same(result.as_numpy("probabilities"), outputs["probabilities"])
    assert _same(result.as_numpy("label"), outputs["label"].astype(np.int64))
    assert math.isclose(float(np.abs(result.as_numpy("probabilities")).sum()), 5.0, rel_tol=1e-5)


def test_json_integers_at_the_64_bit_edges_stay_exact() -> None:
    big = [0, 18446744073709550592, 2**64 - 1]
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "UINT64", "shape": [3], "data": big}]})
    assert parse_infer_request(body).input("x").data.tolist() == big
    small = [-(2**63), 2**63 - 1]
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": small}]})
    assert parse_infer_request(body).input("x").data.tolist() == small


def test_integral_floats_are_accepted_for_integer_datatypes() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [3.0, 1]}]})
    assert _same(parse_infer_request(body).input("x").data, np.array([3, 1], dtype=np.int32))


def test_an_empty_outputs_list_asks_for_every_output() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": []}
    )
    request = parse_infer_request(body)
    assert request.outputs is None
    assert request.output_names(["a", "b"]) == ["a", "b"]
    assert binary_outputs(request, ["a", "b"]) == set()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 2**63 - 1, 2**63 - 1], "more than"),  # numpy: "array is too big", even with no element
        ([1] * 70, "at most 16"),  # numpy: more than 64 axes
        ([0] * 70, "at most 16"),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_shapes_numpy_cannot_hold_are_a_clear_protocol_error(
    shape: list[int], message: str, binary: bool
) -> None:
    tensor: dict = {"name": "input", "datatype": "FP32", "shape": shape}
    if binary:
        tensor["parameters"] = {"binary_data_size": 0}
    else:
        tensor["data"] = [1] if shape[0] == 1 else []
    header = orjson.dumps({"inputs": [tensor]})
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(header, len(header) if binary else None)


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def test_binary_bytes_are_length_prefixed_elements() -> None:
    raw = _bytes_elements(b"Biscoe", b"", "Dr\u00e9am".encode())
    tensor = {"name": "x", "datatype": "BYTES", "shape": [3, 1], "parameters": {"binary_data_size": len(raw)}}
    body, length = _binary_body(tensor, raw)
    data = parse_infer_request(body, length).inputs[0].data
    assert data.shape == (3, 1) and data.reshape(-1).tolist() == [b"Biscoe", b"", "Dr\u00e9am".encode()]


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (_bytes_elements(b"a"), [2], "BYTES data for 1 elements but shape \\[2\\] needs 2"),
        ((9).to_bytes(4, "little") + b"abc", [1], "claims 9 bytes, more than the data holds"),
        (_bytes_elements(b"a", b"b"), [1], "5 bytes of binary data left over"),
        (b"\x01\x00", [1], "BYTES data for 0 elements"),
    ],
)
def test_malformed_binary_bytes_are_refused(raw: bytes, shape: list[int], message: str) -> None:
    tensor = {"name": "x", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(raw)}}
    body, length = _binary_body(tensor, raw)
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body, length)
