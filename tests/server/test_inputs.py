"""server.inputs: a decoded request checked against the model's input spec."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from server.errors import BadRequest
from server.inputs import model_input
from server.manifest import InputSpec
from server.protocol.tensors import ProtocolError
from server.protocol.v2 import parse_infer_request

SPEC = InputSpec(name="input", datatype="FP32", shape=[-1, 3])


def _request(*tensors: dict[str, Any], tail: bytes = b"") -> Any:
    header = orjson.dumps({"inputs": list(tensors)})
    return parse_infer_request(header + tail, len(header) if tail else None)


def _tensor(**over: Any) -> dict[str, Any]:
    return {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6], **over}


def test_rows_come_back_with_their_shape_and_dtype() -> None:
    rows = model_input(_request(_tensor()), SPEC, False)
    assert rows.dtype == np.float32
    assert rows.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "INT64", "INT8", "UINT8"])
def test_numeric_datatypes_are_cast_to_fp32(datatype: str) -> None:
    rows = model_input(_request(_tensor(datatype=datatype)), SPEC, False)
    assert rows.dtype == np.float32 and rows.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([_tensor(name="x")], "unknown input 'x'; this model takes exactly one input, 'input'"),
        ([_tensor(), _tensor(name="extra")], "unknown input 'extra'"),
        ([_tensor(datatype="BOOL", data=[True] * 6)], "is BOOL; send FP32"),
        ([_tensor(shape=[3, 2])], "must have 3 features; got 2"),
        ([_tensor(shape=[6])], "must be 2-D"),
        ([_tensor(shape=[0, 3], data=[])], "no rows"),
    ],
)
def test_mismatches_are_refused(tensors: list[dict[str, Any]], message: str) -> None:
    with pytest.raises((ProtocolError, BadRequest), match=message):
        model_input(_request(*tensors), SPEC, False)


def test_binary_nan_is_refused_unless_allowed() -> None:
    raw = np.array([[1, np.nan, 3]], dtype="<f4").tobytes()
    binary = {
        "name": "input",
        "datatype": "FP32",
        "shape": [1, 3],
        "parameters": {"binary_data_size": len(raw)},
    }
    with pytest.raises(BadRequest, match="NaN or infinite"):
        model_input(_request(binary, tail=raw), SPEC, False)
    assert np.isnan(model_input(_request(binary, tail=raw), SPEC, True)[0, 1])
