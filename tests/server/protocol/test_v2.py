import json
from typing import NamedTuple

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import BadRequest
from server.inputs import model_input
from server.protocol import v1, v2
from server.protocol.tensors import InferenceRequest, InferenceResponse, OutputTensor
from server.protocol.v1 import parse_json_object
from testing.repositories import make_manifest

MANIFEST = make_manifest(labels=["a", "b", "c"])


class Decoded(NamedTuple):
    """What the data plane takes from a decoded request (server.dataplane.DataPlane.infer_with)."""

    request: InferenceRequest
    x: np.ndarray  # the model's rows
    outputs: list[str]  # the outputs to answer, in order
    binary: set[str]  # which of them go back as binary (V2)


def checked(request: InferenceRequest, allow_nonfinite: bool = False) -> Decoded:
    x = model_input(request, MANIFEST.input, allow_nonfinite)
    names = request.output_names([o.name for o in MANIFEST.outputs])
    return Decoded(request, x, names, v2.binary_outputs(request, names))


def response(decoded: Decoded, results: dict[str, np.ndarray], version: str = "1") -> InferenceResponse:
    outputs = tuple(
        OutputTensor(n, MANIFEST.output(n).datatype, results[n].shape, results[n]) for n in decoded.outputs
    )
    return InferenceResponse(MANIFEST.name, version, decoded.request.id, outputs)


def v1_rows(body: dict, allow_nonfinite: bool = False) -> np.ndarray:
    request = v1.decode_request(json.dumps(body).encode(), MANIFEST, MANIFEST.name)
    return model_input(request, MANIFEST.input, allow_nonfinite)


def tensor(**over: object) -> dict:
    base = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    base.update(over)
    return {"inputs": [{k: v for k, v in base.items() if v is not None}]}


def decode(body: dict, allow_nonfinite: bool = False, tail: bytes = b"") -> Decoded:
    header = json.dumps(body).encode()  # the stdlib writes integers beyond 64 bits too
    request = v2.decode_request(header + tail, str(len(header)) if tail else None, MANIFEST.name, None)
    return checked(request, allow_nonfinite)


def test_flat_and_nested_data_give_the_same_rows() -> None:
    flat = decode(tensor())
    nested = decode(tensor(data=[[1, 2], [3, 4]]))
    np.testing.assert_array_equal(flat.x, nested.x)
    assert flat.x.dtype == np.float32 and flat.x.shape == (2, 2)
    assert flat.outputs == ["probabilities", "label", "spread"] and flat.binary == set()


def test_integer_and_double_datatypes_are_cast() -> None:
    assert decode(tensor(datatype="INT64")).x.dtype == np.float32
    assert decode(tensor(datatype="FP64")).x[1, 1] == 4
    raw = np.array([[1, 2], [3, 4]], dtype="<f8").tobytes()
    binary = decode(tensor(data=None, datatype="FP64", parameters={"binary_data_size": 32}), tail=raw)
    assert binary.x.dtype == np.float32 and binary.x.tolist() == [[1, 2], [3, 4]]


def test_binary_fp32_input_is_a_view_of_the_body() -> None:
    raw = np.array([[1, 2], [3, 4]], dtype="<f4").tobytes()
    req = decode(tensor(data=None, parameters={"binary_data_size": len(raw)}), tail=raw)
    np.testing.assert_array_equal(req.x, [[1, 2], [3, 4]])
    assert not req.x.flags.owndata


def test_binary_outputs_follow_the_request() -> None:
    body = {
        **tensor(),
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "spread"}],
    }
    assert decode(body).binary == {"label"}
    assert decode({**tensor(), "parameters": {"binary_data_output": True}}).binary == {
        "probabilities",
        "label",
        "spread",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": []}, "non-empty 'inputs'"),
        (tensor(name="x"), "unknown input 'x'"),
        (tensor(datatype="BYTES", data=["a", "b", "c", "d"]), "is BYTES; send FP32"),
        (tensor(data=[1.0, None, 3, 4]), "NaN or infinite values \\(or null"),
        (tensor(datatype="BOOL", data=[True, False, True, True]), "is BOOL; send FP32"),
        (tensor(shape=[3, 2]), "has 4 values in 'data' but shape"),
        (tensor(shape="2x2"), "array of integers"),
        (tensor(shape=[1, 4]), "must have 2 features; got 4"),
        (tensor(shape=[4]), "must be 2-D"),
        (tensor(data=[[1, 2], [3]]), "ragged"),
        (tensor(data=["a", 2, 3, 4]), "not numbers"),
        (tensor(datatype="INT32", data=[1.5, 2, 3, 4]), "must hold integers"),
        (tensor(data=[1e300, 2, 3, 4]), "outside the range of FP32"),
        (tensor(datatype="FP64", data=[1e300, 2, 3, 4]), "NaN or infinite"),
        (tensor(shape=[0, 2], data=[]), "no rows"),
        ({**tensor(), "outputs": [{"name": "nope"}]}, "Unknown output 'nope'"),
        ({**tensor(), "outputs": "label"}, "'outputs' must be an array"),
        ({**tensor(), "id": 5}, "'id' must be a string"),
        (tensor(data=None, parameters={"binary_data_size": 16}), "no Inference-Header-Content-Length"),
    ],
)
def test_bad_v2_requests_are_refused_with_a_reason(body: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(body)


def test_nonfinite_allowed_when_configured() -> None:
    raw = np.array([[np.nan, 2], [np.inf, 4]], dtype="<f4").tobytes()
    body = tensor(data=None, parameters={"binary_data_size": len(raw)})
    with pytest.raises(BadRequest, match="NaN or infinite"):
        decode(body, tail=raw)
    x = decode(body, allow_nonfinite=True, tail=raw).x
    assert np.isnan(x[0, 0]) and np.isinf(x[1, 0])
    assert np.isinf(decode(tensor(datatype="FP64", data=[1e300, 2, 3, 4]), allow_nonfinite=True).x[0, 0])


def test_v2_response_selects_outputs_and_echoes_id() -> None:
    req = decode({**tensor(), "id": "r1", "outputs": [{"name": "label"}]})
    results = {
        "probabilities": np.full((2, 3), 1 / 3, np.float32),
        "label": np.array([0, 2]),
        "spread": np.zeros((2, 3), np.float32),
    }
    raw, header_length = v2.encode_response(req.request, response(req, results))
    assert header_length is None
    body = orjson.loads(raw)
    assert body["id"] == "r1" and body["model_version"] == "1"
    assert body["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}]


def test_v2_binary_response_carries_the_raw_bytes() -> None:
    req = decode({**tensor(), "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
    probs = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], np.float32)
    raw, header_length = v2.encode_response(req.request, response(req, {"probabilities": probs}))
    assert header_length is not None
    header = orjson.loads(raw[:header_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": probs.nbytes}
    np.testing.assert_array_equal(np.frombuffer(raw[header_length:], "<f4").reshape(2, 3), probs)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "must have 'instances'"),
        ({"instances": []}, "empty"),
        ({"instances": [1, 2]}, "not one flat list"),
        ({"instances": [[1, 2], [1]]}, "equal length"),
        ({"instances": [[1, 2, 3]]}, "2 features; got 3"),
    ],
)
def test_bad_v1_requests(body: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        v1_rows(body)


def test_v1_response_names_labels() -> None:
    results = {
        "probabilities": np.array([[0.1, 0.2, 0.7]], np.float32),
        "label": np.array([2]),
        "spread": np.zeros((1, 3), np.float32),
    }
    req = checked(v1.decode_request(b'{"instances": [[1, 2]]}', MANIFEST, MANIFEST.name))
    assert orjson.loads(v1.encode_response(MANIFEST, response(req, results)))["predictions"] == ["c"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "empty"), (b"{", "not valid JSON"), (b"\xff\xfe", "UTF-8"), (b"[]", "JSON object")],
)
def test_body_parsing(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_json_object(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    shape=st.one_of(json_values, st.lists(st.integers(-3, 2**40), max_size=4)),
    data=json_values,
    datatype=st.sampled_from(["FP32", "INT64", "FP16", "BYTES", None, 3]),
    extra=st.dictionaries(st.sampled_from(["outputs", "id", "parameters"]), json_values, max_size=3),
)
def test_any_json_gives_rows_or_bad_request(
    shape: object, data: object, datatype: object, extra: dict
) -> None:
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}], **extra}
    try:
        req = decode(body)
    except BadRequest:
        return
    assert req.x.dtype == np.float32 and req.x.ndim == 2 and req.x.shape[1] == 2 and np.isfinite(req.x).all()


@settings(max_examples=200, deadline=None)
@given(instances=json_values)
def test_any_v1_instances_give_rows_or_bad_request(instances: object) -> None:
    try:
        x = v1_rows({"instances": instances})
    except BadRequest:
        return
    assert x.shape[1] == 2 and len(x) >= 1
