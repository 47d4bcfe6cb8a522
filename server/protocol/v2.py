"""KServe V2 / Open Inference Protocol: decode an infer request, encode its response, describe a model.

`decode_infer_request` takes the JSON header and, for Triton's binary tensor extension, the raw buffers
that followed it (``server.protocol.binary`` splits a binary body into the two); inputs that carry
``parameters.binary_data_size`` read their bytes from those buffers in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import BadRequest
from server.manifest import Manifest
from server.protocol.common import check_features, to_float_matrix

PLATFORM = "onnxruntime_onnx"

# V2 datatypes accepted for the input, cast to FP32 (integers must be whole numbers).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "INT16": np.dtype("<i2"),
    "INT8": np.dtype("i1"),
    "UINT8": np.dtype("u1"),
}


@dataclass
class InferRequest:
    x: np.ndarray
    outputs: list[str]  # served output names, in the order to answer them
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise BadRequest("The input's 'shape' must be a list of integers.")
    if any(d < 0 for d in value):
        raise BadRequest("The input's 'shape' must not have negative sizes.")
    return value


def _input_array(tensor: dict[str, Any], raw: list[bytes] | None, raw_index: int) -> tuple[np.ndarray, int]:
    datatype = tensor.get("datatype")
    if datatype not in NUMPY_DTYPES:
        raise BadRequest(f"The input's datatype must be one of {', '.join(NUMPY_DTYPES)}; got {datatype!r}.")
    shape = _shape(tensor.get("shape"))
    params = tensor.get("parameters") or {}
    size = math.prod(shape)  # Python ints: no int64 overflow on absurd shapes
    if isinstance(params, dict) and "binary_data_size" in params:
        if raw is None or raw_index >= len(raw):
            raise BadRequest("The input says it is binary but no binary data follows the JSON header.")
        buf = raw[raw_index]
        dtype = NUMPY_DTYPES[datatype]
        if len(buf) != size * dtype.itemsize:
            raise BadRequest(f"The input's binary data has {len(buf)} bytes; shape {shape} needs "
                             f"{size * dtype.itemsize}.")  # fmt: skip
        arr = np.frombuffer(buf, dtype=dtype).astype(np.float64).reshape(shape)
        return arr, raw_index + 1
    if "data" not in tensor:
        raise BadRequest("The input has no 'data'.")
    arr = to_float_matrix(tensor["data"], "The input's 'data'")
    if arr.size != size:
        raise BadRequest(f"The input's data has {arr.size} values but its shape {shape} needs {size}.")
    arr = arr.reshape(shape)
    if (
        datatype not in ("FP32", "FP64", "FP16")
        and np.isfinite(arr).all()
        and not (arr == np.round(arr)).all()
    ):
        raise BadRequest(f"The input's datatype is {datatype} but its data has fractional values.")
    return arr, raw_index


def decode_infer_request(
    header: dict[str, Any], manifest: Manifest, allow_nonfinite: bool, raw: list[bytes] | None = None
) -> InferRequest:
    """Validate a V2 infer request against the model and return the feature matrix and what to answer."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"The request must have exactly one input, '{manifest.input.name}'.")
    tensor = inputs[0]
    if tensor.get("name") != manifest.input.name:
        raise BadRequest(
            f"Unknown input {tensor.get('name')!r}; this model's input is '{manifest.input.name}'."
        )
    x, _ = _input_array(tensor, raw, 0)
    x = check_features(x, manifest.input.shape[1], allow_nonfinite)

    served = [o.name for o in manifest.outputs]
    wanted = header.get("outputs")
    out_params: dict[str, dict[str, Any]] = {}
    if wanted is None:
        names = served
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
            raise BadRequest("'outputs' must be a list of objects with a 'name'.")
        names = []
        for o in wanted:
            if o["name"] not in served:
                raise BadRequest(f"Unknown output {o['name']!r}; this model serves {', '.join(served)}.")
            names.append(o["name"])
            if isinstance(o.get("parameters"), dict):
                out_params[o["name"]] = o["parameters"]
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest("The request 'id' must be a string.")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("The request 'parameters' must be an object.")
    return InferRequest(x=x, outputs=names, id=req_id, parameters=params, output_parameters=out_params)


def encode_infer_response(
    manifest: Manifest, version: int, req: InferRequest, results: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The V2 JSON response (data flat, row-major); numpy arrays are serialized by orjson directly."""
    outputs = []
    for name in req.outputs:
        arr = results[name]
        spec = manifest.output(name)
        outputs.append(
            {
                "name": name,
                "datatype": spec.datatype,
                "shape": list(arr.shape),
                "data": np.ascontiguousarray(arr).ravel(),
            }
        )
    body: dict[str, Any] = {"model_name": manifest.name, "model_version": str(version), "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    return body


def model_metadata(manifest: Manifest, versions: list[int], extra: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/{m}``: name, versions, platform and the signature."""
    inp = manifest.input
    return {
        "name": manifest.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": inp.name, "datatype": inp.datatype, "shape": inp.shape}],
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape} for o in manifest.outputs],
        "parameters": {"task": manifest.task, "labels": manifest.labels, **extra},
    }
