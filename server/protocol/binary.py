"""KServe V2 inference bodies with Triton's binary tensor data extension: parse requests, encode responses.

The extension (triton-inference-server/server ``docs/protocol/extension_binary_data.md``): a body is a
JSON object, optionally followed by raw tensor bytes (little-endian, row-major, no padding; BOOL is one
byte 0 or 1). The ``Inference-Header-Content-Length`` HTTP header gives the JSON part's length. An input
with ``parameters.binary_data_size`` takes its bytes from the tail, in the order the inputs are listed;
outputs asked for with ``binary_data`` (or the request-level ``binary_data_output``) come back the same way.

Everything here is pure (bytes in, bytes out) so the HTTP handler stays thin. Bad client input raises
:class:`ProtocolError` whose ``message`` is one sentence fit for ``{"error": ...}`` with a 400.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
# What Triton sends when binary data follows the JSON header.
BINARY_CONTENT_TYPE = "application/octet-stream"

# V2 datatype -> the little-endian dtype of its binary form (also the dtype of decoded arrays).
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 31  # far above any body the server accepts; guards numpy's own limits

DATATYPES: Mapping[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_SUPPORTED = ", ".join(DATATYPES)


class ProtocolError(ValueError):
    """A malformed inference request; ``message`` is one clear sentence for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class InferInput:
    """One decoded input tensor. ``data`` has ``shape`` and the datatype's dtype; when it came as binary
    it is a zero-copy, read-only view into the request body."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs``; ``binary_data`` is None when the client did not say."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed ``POST .../infer`` body."""

    id: str | None
    parameters: dict[str, Any]
    inputs: tuple[InferInput, ...]
    # None when the request names no outputs: V2 then returns every output of the model.
    outputs: tuple[RequestedOutput, ...] | None
    binary_data_output: bool = False

    def input(self, name: str) -> InferInput:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def output_names(self, available: Sequence[str]) -> list[str]:
        """The outputs to return, in the order asked (all of `available` when none were named)."""
        if self.outputs is None:
            return list(available)
        known = set(available)
        for out in self.outputs:
            if out.name not in known:
                raise ProtocolError(
                    f"Unknown output '{out.name}'; this model has outputs {', '.join(available)}."
                )
        return [out.name for out in self.outputs]

    def binary_outputs(self, names: Iterable[str]) -> set[str]:
        """Which of `names` go back as binary: an output's own ``binary_data`` overrides the request's
        ``binary_data_output`` (extension_binary_data.md)."""
        own = {out.name: out.binary_data for out in self.outputs or ()}
        chosen = set()
        for name in names:
            flag = own.get(name)
            if flag if flag is not None else self.binary_data_output:
                chosen.add(name)
        return chosen


# ---------------------------------------------------------------------------------------------- parsing


def parse_header_length(value: int | str | None, body_length: int) -> int | None:
    """Validate the ``Inference-Header-Content-Length`` header against the body's length."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            raise ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got '{value}'.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value!r}.")
    if value > body_length:
        raise ProtocolError(
            f"{HEADER_LENGTH_HEADER} is {value} but the request body has only {body_length} bytes."
        )
    return value


def parse_infer_request(
    body: bytes | bytearray | memoryview, header_length: int | str | None = None
) -> InferRequest:
    """Parse a V2 inference request body; `header_length` is the ``Inference-Header-Content-Length``
    header (None when absent: the whole body is JSON). Raises ProtocolError on any malformed part."""
    view = memoryview(body).cast("B")
    length = parse_header_length(header_length, len(view))
    header = view if length is None else view[:length]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        if length is not None:
            raise ProtocolError(f"The inference header is not valid UTF-8 JSON ({exc}).") from None
        raise ProtocolError(
            f"The request body is not valid UTF-8 JSON ({exc}); "
            f"a body with binary tensors needs the {HEADER_LENGTH_HEADER} header."
        ) from None
    if not isinstance(doc, dict):
        raise ProtocolError("The inference request must be a JSON object.")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("The request 'id' must be a string.")
    parameters = _object(doc.get("parameters"), "The request 'parameters'")
    binary_data_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_data_output, bool):
        raise ProtocolError("The request parameter 'binary_data_output' must be true or false.")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("The request must have a non-empty 'inputs' array.")
    specs = [_input_spec(i, item) for i, item in enumerate(raw_inputs)]
    _no_duplicates([spec.name for spec in specs], "input")

    binary_specs = [spec for spec in specs if spec.size is not None]
    if length is None and binary_specs:
        raise ProtocolError(
            f"Input '{binary_specs[0].name}' declares binary_data_size "
            f"but the request has no {HEADER_LENGTH_HEADER} header."
        )
    tail = 0 if length is None else len(view) - length
    declared = sum(spec.size or 0 for spec in binary_specs)
    if declared != tail:
        raise ProtocolError(
            f"The binary inputs declare {declared} bytes in all, "
            f"but {tail} bytes follow the {length}-byte JSON header."
        )

    inputs = []
    offset = 0 if length is None else length
    for spec in specs:
        if spec.size is None:
            array = _decode_json(spec.name, spec.datatype, spec.shape, spec.data)
        else:
            array = _decode_binary(spec.name, spec.datatype, spec.shape, view[offset : offset + spec.size])
            offset += spec.size
        inputs.append(InferInput(spec.name, spec.datatype, spec.shape, array, spec.parameters))

    outputs = None
    if "outputs" in doc:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("The request 'outputs' must be an array.")
        # An empty list asks for nothing in particular, like an absent one: every output.
        outputs = tuple(_requested_output(i, item) for i, item in enumerate(raw_outputs)) or None
        _no_duplicates([o.name for o in outputs or ()], "output")
    return InferRequest(
        id=request_id,
        parameters=parameters,
        inputs=tuple(inputs),
        outputs=outputs,
        binary_data_output=binary_data_output,
    )


class _InputSpec(NamedTuple):
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any]
    size: int | None  # binary_data_size, None for JSON data
    data: Any


def _input_spec(index: int, item: Any) -> _InputSpec:
    """Check one ``$request_input`` object's fields; the data itself is decoded later."""
    if not isinstance(item, dict):
        raise ProtocolError(f"Input {index} must be a JSON object.")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"Input {index} must have a non-empty string 'name'.")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(f"Input '{name}' must have a string 'datatype'.")
    _dtype(datatype, f"Input '{name}'")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise ProtocolError(f"Input '{name}' must have a 'shape' that is an array of integers.")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"Input '{name}' has shape {shape} with a negative dimension.")
    # numpy refuses more than 64 axes or more elements than memory can address; say so as a 400.
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"Input '{name}' has {len(shape)} dimensions; at most {MAX_DIMS} are supported.")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy sizes even an empty array's other axes
        raise ProtocolError(f"Input '{name}' has shape {shape}, more than {MAX_ELEMENTS} elements.")
    params = _object(item.get("parameters"), f"The 'parameters' of input '{name}'")
    if "shared_memory_region" in params:
        raise ProtocolError(f"Input '{name}' uses shared memory, which this server does not support.")
    size = params.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise ProtocolError(f"Input '{name}' has a binary_data_size that is not a non-negative integer.")
    if size is not None and "data" in item:
        raise ProtocolError(f"Input '{name}' has both 'data' and a binary_data_size; send one of them.")
    if size is None and "data" not in item:
        raise ProtocolError(f"Input '{name}' has neither 'data' nor a binary_data_size parameter.")
    return _InputSpec(name, datatype, tuple(shape), params, size, item.get("data"))


def _requested_output(index: int, item: Any) -> RequestedOutput:
    if not isinstance(item, dict):
        raise ProtocolError(f"Requested output {index} must be a JSON object.")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"Requested output {index} must have a non-empty string 'name'.")
    params = _object(item.get("parameters"), f"The 'parameters' of output '{name}'")
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"The binary_data parameter of output '{name}' must be true or false.")
    if "shared_memory_region" in params:
        raise ProtocolError(f"Output '{name}' asks for shared memory, which this server does not support.")
    if params.get("classification"):
        raise ProtocolError(
            f"Output '{name}' asks for the classification extension, which this server does not support."
        )
    return RequestedOutput(name, binary, params)


def _decode_binary(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    dtype = DATATYPES[datatype]
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise ProtocolError(
            f"Input '{name}' has {len(raw)} bytes of binary data but shape {list(shape)} of {datatype} "
            f"needs {needed}."
        )
    if datatype == "BOOL" and np.frombuffer(raw, dtype=np.uint8).max(initial=0) > 1:
        raise ProtocolError(f"Input '{name}' is BOOL but has bytes other than 0 and 1.")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Decode ``data`` (flat or nested lists, row-major) without Python loops over the elements."""
    if not isinstance(data, list):
        raise ProtocolError(f"The 'data' of input '{name}' must be a JSON array.")
    try:
        # numpy infers bool / int64 / uint64 / float64 for numbers; anything else gives str or object.
        values = np.array(data)
    except ValueError:
        raise ProtocolError(
            f"The 'data' of input '{name}' is ragged (nested arrays differ in length) or nested too deeply."
        ) from None
    except (TypeError, OverflowError):
        raise ProtocolError(f"The 'data' of input '{name}' holds values that are not numbers.") from None
    needed = math.prod(shape)
    if values.dtype.kind not in "biuf":
        raise ProtocolError(
            f"The 'data' of input '{name}' holds values that are not numbers (or integers beyond 64 bits)."
        )
    if values.size != needed:
        raise ProtocolError(
            f"Input '{name}' has {values.size} values in 'data' but shape {list(shape)} needs {needed}."
        )
    target = DATATYPES[datatype].newbyteorder("=")
    if needed == 0:
        return np.zeros(shape, dtype=target)
    if datatype == "BOOL":
        if values.dtype.kind != "b":
            raise ProtocolError(f"Input '{name}' is BOOL, so its 'data' must hold only true and false.")
        return values.reshape(shape)
    if values.dtype.kind == "b":
        raise ProtocolError(f"Input '{name}' is {datatype}, so its 'data' must hold numbers, not booleans.")
    if target.kind in "iu":
        # Exact powers of two, so the bounds hold for float64 values too.
        bits = 8 * target.itemsize
        low, high = (0, 2**bits) if target.kind == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1))
        out_of_range = ProtocolError(
            f"The 'data' of input '{name}' has values outside the range of {datatype}."
        )
        if values.dtype.kind != "f":
            if values.min() < low or values.max() >= high:
                raise out_of_range
            return values.astype(target).reshape(shape)
        # float64 comes from real fractions, from integers beyond 64 bits (orjson reads them as floats),
        # or from integers that need both int64 and uint64 (0 next to 2**63), which numpy cannot mix.
        if not np.array_equal(values, np.floor(values)):
            raise ProtocolError(f"Input '{name}' is {datatype}, so its 'data' must hold integers.")
        if values.min() < low or values.max() > high:
            raise out_of_range
        try:
            with np.errstate(all="ignore"):
                # Convert the original numbers again: float64 cannot hold every UINT64 exactly.
                exact = np.array(data, dtype=target)
        except (OverflowError, ValueError):
            raise out_of_range from None
        if not np.array_equal(exact.astype(np.float64), values):
            raise out_of_range
        return exact.reshape(shape)
    with np.errstate(over="ignore"):
        cast = values.astype(target)
    # JSON has no infinities, so an infinity here is a finite number too large for the datatype.
    if np.isinf(cast).any():
        raise ProtocolError(f"The 'data' of input '{name}' has values outside the range of {datatype}.")
    return cast.reshape(shape)


def _dtype(datatype: str, who: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except KeyError:
        if datatype == "BYTES":
            raise ProtocolError(f"{who} has datatype BYTES, which this server does not support.") from None
        raise ProtocolError(f"{who} has unknown datatype '{datatype}'; supported: {_SUPPORTED}.") from None


def _object(value: Any, who: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{who} must be a JSON object.")
    return value


def _no_duplicates(names: list[str], kind: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ProtocolError(f"The request names {kind} '{name}' more than once.")
        seen.add(name)


# --------------------------------------------------------------------------------------------- encoding


def encode_infer_response(
    model_name: str,
    model_version: str | int,
    outputs: Sequence[tuple[str, np.ndarray, str]],
    *,
    request_id: str | None = None,
    binary: Set[str] | bool = False,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a V2 inference response: ``(body, header_length)``.

    `outputs` are ``(name, array, datatype)``; the array's dtype must be the datatype's. `binary` names the
    outputs to send as binary (True: all). With no binary output the body is plain JSON and
    `header_length` is None; otherwise send `header_length` as ``Inference-Header-Content-Length``.
    JSON ``data`` is flat and row-major; NaN and infinities become ``null`` there (JSON cannot carry them;
    tritonclient's ``as_numpy`` reads ``null`` back as NaN). Binary outputs carry every value exactly.
    """
    names = [name for name, _, _ in outputs]
    if isinstance(binary, bool):
        chosen = set(names) if binary else set()
    else:
        unknown = set(binary) - set(names)
        if unknown:
            raise ValueError(f"binary names outputs that are not in the response: {sorted(unknown)}")
        chosen = set(binary)

    tensors = []
    raws: list[bytes] = []
    for name, array, datatype in outputs:
        dtype = DATATYPES.get(datatype)
        if dtype is None:
            raise ValueError(f"output {name!r} has unsupported datatype {datatype!r}")
        if array.dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise ValueError(f"output {name!r} is {array.dtype} but datatype {datatype} needs {dtype}")
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in chosen:
            raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            # orjson writes numpy arrays natively (C-contiguous, native byte order), NaN/inf as null.
            tensor["data"] = np.ascontiguousarray(array, dtype=dtype.newbyteorder("=")).reshape(-1)
        tensors.append(tensor)

    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = tensors
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return header, None
    return b"".join([header, *raws]), len(header)
