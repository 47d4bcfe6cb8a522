"""Transport-free tensors: V2 datatypes, the request and response types, and the tensor codecs.

Every transport decodes into these types and encodes from them: the V2 REST codec (``server.protocol.v2``,
JSON and Triton's binary tensors), the V1 codec and gRPC. The data plane (``server.dataplane``) sees only
these. Bad client input raises :class:`ProtocolError`, a 400 whose ``message`` is one sentence.

The types are slotted dataclasses, immutable by convention but not ``frozen``: several are made per
request on the hot path, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
costs about four times a plain one's. Nobody mutates them once built.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import BadRequest

MAX_DIMS = 16
MAX_ELEMENTS = 1 << 31  # far above any body the server accepts; guards numpy's own limits

# V2 datatype -> the little-endian dtype of its binary form (also the dtype of decoded arrays).
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
_SUPPORTED = ", ".join([*DATATYPES, "BYTES"])
# BYTES (text) has no fixed-size binary form: decoded arrays hold Python objects (bytes from binary data,
# the JSON values from JSON data), which the data plane reads per column (server.inputs).
BYTES = "BYTES"
OBJECT = np.dtype(object)
FLOATS = frozenset({"FP16", "FP32", "FP64"})


class ProtocolError(BadRequest, ValueError):
    """A malformed inference request (a 400); ``message`` is one clear sentence for the client. Also a
    ValueError, for callers of the codecs outside the server."""


@dataclass(slots=True)
class InputTensor:
    """One decoded input tensor. ``data`` has ``shape`` and the datatype's dtype; when it came as binary
    it is a zero-copy, read-only view into the request body."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs``; ``binary_data`` (HTTP only) is None when not said."""

    name: str
    binary_data: bool | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """One inference request, from any transport."""

    model_name: str
    model_version: str | None  # as sent; None or "": the default version
    id: str | None
    parameters: Mapping[str, Any]  # request parameters: timeout, priority, binary_data_output, ...
    inputs: tuple[InputTensor, ...]
    # None when the request names no outputs: every output of the model is returned.
    outputs: tuple[RequestedOutput, ...] | None = None

    def input(self, name: str) -> InputTensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def output_names(self, available: Collection[str]) -> list[str]:
        """The outputs to return, in the order asked (all of `available` when none were named)."""
        if self.outputs is None:
            return list(available)
        for out in self.outputs:
            if out.name not in available:
                raise ProtocolError(
                    f"Unknown output '{out.name}'; this model has outputs {', '.join(available)}."
                )
        return [out.name for out in self.outputs]


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: tuple[OutputTensor, ...]  # in the order asked
    parameters: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ tensor checks


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A request tensor's shape: non-negative integers, few enough axes and elements for numpy."""
    if not isinstance(shape, list | tuple) or not all(type(d) is int for d in shape):
        raise ProtocolError(f"Input '{name}' must have a 'shape' that is an array of integers.")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"Input '{name}' has shape {list(shape)} with a negative dimension.")
    # numpy refuses more than 64 axes or more elements than memory can address; say so as a 400.
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"Input '{name}' has {len(shape)} dimensions; at most {MAX_DIMS} are supported.")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy sizes even an empty array's other axes
        raise ProtocolError(f"Input '{name}' has shape {list(shape)}, more than {MAX_ELEMENTS} elements.")
    return tuple(shape)


def check_datatype(datatype: str, who: str) -> np.dtype:
    """The dtype of a V2 datatype this server decodes; `who` names the tensor in the message."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        if datatype == BYTES:
            return OBJECT
        raise ProtocolError(f"{who} has unknown datatype '{datatype}'; supported: {_SUPPORTED}.") from None


# ------------------------------------------------------------------------------------------ tensor codecs


def decode_binary_tensor(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    if datatype == BYTES:
        return decode_binary_bytes(name, shape, raw)
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


def decode_binary_bytes(name: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """Triton's binary BYTES: each element a 4-byte little-endian length, then that many bytes."""
    needed = math.prod(shape)
    out = np.empty(needed, dtype=OBJECT)
    view = memoryview(raw).cast("B")
    offset, end = 0, len(view)
    for i in range(needed):
        if offset + 4 > end:
            raise ProtocolError(
                f"Input '{name}' has binary BYTES data for {i} elements "
                f"but shape {list(shape)} needs {needed}."
            )
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise ProtocolError(
                f"Element {i} of input '{name}' claims {size} bytes, more than the data holds."
            )
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != end:
        raise ProtocolError(
            f"Input '{name}' has {end - offset} bytes of binary data left over after its {needed} elements."
        )
    return out.reshape(shape)


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """Row-major values of nested JSON arrays (each nesting level must be regular, as for numbers)."""
    flat: list[Any] = []

    ragged = ProtocolError(
        f"The 'data' of input '{name}' is ragged (nested arrays differ in length) or nested too deeply."
    )

    def walk(item: list[Any], depth: int) -> None:
        if depth > MAX_DIMS:
            raise ragged
        nested = [isinstance(value, list) for value in item]
        if not any(nested):
            flat.extend(item)
            return
        if not all(nested) or len({len(value) for value in item}) > 1:
            raise ragged
        for value in item:
            walk(value, depth + 1)

    walk(data, 1)
    return flat


def _decode_json_bytes(name: str, shape: tuple[int, ...], flat: list[Any]) -> np.ndarray:
    """JSON BYTES data: strings; as this project's extension also numbers, booleans and ``null`` (a missing
    value), which a table model's categorical column reads as their text (server.inputs)."""
    needed = math.prod(shape)
    if len(flat) != needed:
        raise ProtocolError(
            f"Input '{name}' has {len(flat)} values in 'data' but shape {list(shape)} needs {needed}."
        )
    for value in flat:
        if value is not None and not isinstance(value, str | int | float):
            raise ProtocolError(
                f"The 'data' of input '{name}' holds a value that is neither text nor a number."
            )
    out = np.empty(needed, dtype=OBJECT)
    out[:] = flat
    return out.reshape(shape)


def _nulls_as_nan(values: np.ndarray) -> np.ndarray:
    """An object array from JSON numbers and ``null`` -> float64 with NaN; anything else stays as it is
    (and is refused by the caller)."""
    flat = values.reshape(-1)
    if not any(v is None for v in flat):
        return values
    if not all(v is None or (type(v) in (int, float)) for v in flat):
        return values
    out = np.array([np.nan if v is None else v for v in flat], dtype=np.float64)
    return out.reshape(values.shape)


def decode_json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Decode ``data`` (flat or nested lists, row-major) without Python loops over the elements (BYTES and
    floats with ``null`` aside: this project's extension reads ``null`` in FP data as NaN, a missing value,
    which the data plane accepts only where the model's graph fills it in)."""
    if not isinstance(data, list):
        raise ProtocolError(f"The 'data' of input '{name}' must be a JSON array.")
    if datatype == BYTES:
        return _decode_json_bytes(name, shape, _flatten(name, data))
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
    if values.dtype == OBJECT and datatype in FLOATS:
        values = _nulls_as_nan(values)
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


def encode_binary_tensor(array: np.ndarray, datatype: str) -> bytes:
    """An output's raw bytes: little-endian, row-major, no padding (Triton's binary form, gRPC's raw)."""
    return np.ascontiguousarray(array, dtype=output_dtype(array, datatype)).tobytes()


def output_dtype(array: np.ndarray, datatype: str) -> np.dtype:
    """The little-endian dtype of an output `array` for `datatype`; ValueError (a programming error)
    says what is wrong after the output's name."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"has unsupported datatype {datatype!r}")
    if array.dtype.newbyteorder("=") != dtype.newbyteorder("="):
        raise ValueError(f"is {array.dtype} but datatype {datatype} needs {dtype}")
    return dtype


def check_unique_names(names: list[str], kind: str) -> None:
    """No input (or output) named twice in one request: the same refusal for every transport."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ProtocolError(f"The request names {kind} '{name}' more than once.")
        seen.add(name)
