"""v2.decode_fast (the fast decode of the usual request) agrees with the general path or steps aside."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import BadRequest
from server.inputs import model_input
from server.protocol import v2
from server.protocol.tensors import InferenceRequest
from testing.repositories import make_manifest

MANIFEST = make_manifest(labels=["a", "b", "c"])
ROWS = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32)


def json_body(doc: dict[str, Any]) -> tuple[bytes, str | None]:
    return json.dumps(doc).encode(), None


def binary_body(
    doc: dict[str, Any], x: np.ndarray = ROWS, size: int | None = None
) -> tuple[bytes, str | None]:
    raw = np.ascontiguousarray(x, "<f4").tobytes()
    doc = copy.deepcopy(doc)
    doc["inputs"][0].setdefault("parameters", {})["binary_data_size"] = len(raw) if size is None else size
    header = json.dumps(doc).encode()
    return header + raw, str(len(header))


def base(**over: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": ROWS.tolist(), **over}
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


def facts(r: InferenceRequest) -> Any:
    """Everything a request holds, arrays as dtype, shape and bytes (so that == compares them)."""
    inputs = [(t.name, t.datatype, t.shape, dict(t.parameters), t.data.dtype, t.data.shape, t.data.tobytes())
              for t in r.inputs]  # fmt: skip
    return (r.model_name, r.model_version, r.id, dict(r.parameters), inputs, r.outputs)


def outcome(body: bytes, header_length: str | None) -> Any:
    try:
        return facts(v2.parse_infer_request(body, header_length, "m", "1"))
    except BadRequest as exc:
        return ("error", exc.message)


def agree(body: bytes, header_length: str | None) -> bool:
    """Asserts the fast path returns what the general path returns, or None; True when it decoded."""
    fast = v2.decode_fast(body, header_length, "m", "1")
    if fast is None:
        return False
    assert outcome(body, header_length) == facts(fast)
    assert fast.inputs[0].data.flags.c_contiguous
    return True


BIN_OUTPUTS = [{"name": n, "parameters": {"binary_data": True}} for n in ("probabilities", "label", "spread")]
USUAL = {
    "json": json_body(base()),
    "json flat data": json_body(base(data=ROWS.reshape(-1).tolist())),
    "json integers": json_body(base(data=[[1, 2], [3, 4]])),
    "json with id and outputs": json_body({**base(), "id": "r", "outputs": [{"name": "label"}]}),
    "json binary_data_output": json_body({**base(), "parameters": {"binary_data_output": True}}),
    "json mixed output flags": json_body(
        {
            **base(),
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "spread", "parameters": {"binary_data": False}}, {"name": "label"}],
        }
    ),
    "json empty outputs": json_body({**base(), "outputs": []}),
    "binary": binary_body({**base(data=None), "outputs": BIN_OUTPUTS}),
    "binary no outputs": binary_body(base(data=None)),
    "binary one row": binary_body(base(data=None, shape=[1, 2]), ROWS[:1]),
}


@pytest.mark.parametrize("name", list(USUAL))
def test_the_usual_requests_take_the_fast_path_and_agree(name: str) -> None:
    assert agree(*USUAL[name]), f"{name} did not take the fast path"


UNUSUAL = {
    "not json": (b"{nope", None),
    "array": (b"[1]", None),
    "id number": json_body({**base(), "id": 5}),
    "parameters list": json_body({**base(), "parameters": []}),
    "binary_data_output string": json_body({**base(), "parameters": {"binary_data_output": "yes"}}),
    "two inputs": json_body({"inputs": base()["inputs"] * 2}),
    "no inputs": json_body({"inputs": []}),
    "other input name": json_body(base(name="x")),
    "FP64": json_body(base(datatype="FP64")),
    "INT32 data": json_body(base(datatype="INT32", data=[[1, 2], [3, 4]])),
    "1-D shape": json_body(base(shape=[4], data=[1, 2, 3, 4])),
    "zero rows": json_body(base(shape=[0, 2], data=[])),
    "wrong width": json_body(base(shape=[1, 4], data=[1, 2, 3, 4])),
    "bool shape": json_body(base(shape=[2, True])),
    "float shape": json_body(base(shape=[2.0, 2])),
    "shape vs data": json_body(base(shape=[1, 2])),
    "bool data": json_body(base(data=[[True, False], [True, True]])),
    "string data": json_body(base(data=[["1", "2"], ["3", "4"]])),
    "ragged data": json_body(base(data=[[1, 2], [3]])),
    "too large for FP32": json_body(base(data=[[1e300, 2], [3, 4]])),
    "no data": json_body(base(data=None)),
    "shared memory": json_body(base(parameters={"shared_memory_region": "r"})),
    "unknown output": json_body({**base(), "outputs": [{"name": "nope"}]}),
    "duplicate output": json_body({**base(), "outputs": [{"name": "label"}, {"name": "label"}]}),
    "output not object": json_body({**base(), "outputs": ["label"]}),
    "outputs object": json_body({**base(), "outputs": {"name": "label"}}),
    "binary_data number": json_body(
        {**base(), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}
    ),
    "classification": json_body(
        {**base(), "outputs": [{"name": "label", "parameters": {"classification": 2}}]}
    ),
    "binary size mismatch": binary_body(base(data=None), size=12),
    "binary and data": binary_body(base()),
    "binary short tail": (binary_body(base(data=None))[0][:-4], binary_body(base(data=None))[1]),
    "binary NaN": binary_body(base(data=None), np.array([[np.nan, 1], [2, 3]])),
    "binary infinity": binary_body(base(data=None), np.array([[np.inf, 1], [2, 3]])),
    "binary without header": (binary_body(base(data=None))[0], None),
    "header length not a number": (json_body(base())[0], "x"),
    "header length too long": (json_body(base())[0], "100000"),
    "header length with JSON data": (json_body(base())[0], str(len(json_body(base())[0]))),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_or_bad_requests_are_left_to_the_general_path(name: str) -> None:
    body, header_length = UNUSUAL[name]
    agree(body, header_length)  # agrees when it decodes at all
    if name.startswith("binary N") or name.startswith("binary i"):
        assert agree(body, header_length)  # valid V2: refused later, by the model's input check


def test_nonfinite_binary_values_are_refused_by_the_model_input_check() -> None:
    body, header_length = UNUSUAL["binary NaN"]
    request = v2.decode_request(body, header_length, "m", None)
    assert np.isnan(request.inputs[0].data).any()
    with pytest.raises(BadRequest, match="NaN"):
        model_input(request, MANIFEST.input, False)
    assert np.isnan(model_input(request, MANIFEST.input, True)).any()


# Random edits of a usual request: whatever the fast path decodes, the general path decodes the same.
FLAGS = st.dictionaries(st.sampled_from(["binary_data", "binary_data_output", "x"]), st.booleans())
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3), FLAGS,
)  # fmt: skip
PLACES = st.sampled_from(
    ["id", "parameters", "inputs", "outputs", "input.name", "input.shape", "input.datatype", "input.data",
     "input.parameters", "output.name", "output.parameters"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(edits=st.lists(st.tuples(PLACES, VALUES), max_size=3), binary=st.booleans())
def test_random_edits_agree(edits: list[tuple[str, Any]], binary: bool) -> None:
    doc: dict[str, Any] = {**base(data=None if binary else ROWS.tolist()), "outputs": [{"name": "label"}]}
    if binary:
        body, header_length = binary_body(doc)
        doc = json.loads(body[: int(header_length)])
    for place, value in edits:
        if place.startswith("input."):
            if type(doc["inputs"]) is list and doc["inputs"] and type(doc["inputs"][0]) is dict:
                doc["inputs"][0][place[6:]] = value
        elif place.startswith("output."):
            if type(doc.get("outputs")) is list:
                doc["outputs"].append({"name": "spread", place[7:]: value})
        else:
            doc[place] = value
    header = json.dumps(doc).encode()
    tail = np.ascontiguousarray(ROWS, "<f4").tobytes() if binary else b""
    agree(header + tail, str(len(header)) if binary else None)
