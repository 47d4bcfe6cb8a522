"""gRPC messages <-> the transport-free tensors: ModelInferRequest -> InferenceRequest, and back.

An input's values come either typed, in ``contents`` (the repeated field that matches its datatype), or
raw, in ``raw_input_contents`` (one entry per input, in the order of ``inputs``: the same little-endian,
row-major bytes as Triton's binary HTTP tensors; BYTES as 4-byte little-endian lengths each followed by
that many bytes). Responses go back raw in ``raw_output_contents``, as Triton answers, which every client
(tritonclient, KServe's, perf_analyzer) reads. Bad input raises ProtocolError (INVALID_ARGUMENT) with one
sentence, never a 500: the shape and element checks come from ``server.protocol.tensors``, the same as
HTTP's, so both transports refuse the same requests with the same words.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from server.grpc.generated import grpc_service_pb2 as pb
from server.protocol.tensors import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    OutputTensor,
    ProtocolError,
    RequestedOutput,
    check_datatype,
    check_shape,
    check_unique_names,
    decode_binary_tensor,
    encode_binary_tensor,
)

# The typed field of InferTensorContents for each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def parameters(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """An InferParameter map as plain values (an entry with no value set is left out)."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    # bool before int: bool is an int in Python.
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 1 << 63:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


# --------------------------------------------------------------------------------------------- requests


def decode_request(msg: pb.ModelInferRequest) -> InferenceRequest:
    """The transport-free request of a ModelInferRequest; ProtocolError on any malformed part."""
    if not msg.model_name:
        raise ProtocolError("The request must name a model in 'model_name'.")
    if not msg.inputs:
        raise ProtocolError("The request must have at least one input.")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise ProtocolError(
            f"The request has {len(raw)} raw_input_contents for {len(msg.inputs)} inputs; "
            "send one per input, in the order of 'inputs'."
        )
    names = [tensor.name for tensor in msg.inputs]
    check_unique_names(names, "input")
    inputs = tuple(_decode_input(i, tensor, raw[i] if raw else None) for i, tensor in enumerate(msg.inputs))
    outputs = tuple(_requested_output(i, out) for i, out in enumerate(msg.outputs)) or None
    check_unique_names([out.name for out in outputs or ()], "output")
    return InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        parameters=parameters(msg.parameters),
        inputs=inputs,
        outputs=outputs,
    )


def _decode_input(
    index: int, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> InputTensor:
    name = tensor.name
    if not name:
        raise ProtocolError(f"Input {index} must have a non-empty 'name'.")
    datatype = tensor.datatype
    if datatype != "BYTES":
        check_datatype(datatype, f"Input '{name}'")
    shape = check_shape(name, list(tensor.shape))
    params = parameters(tensor.parameters)
    if "shared_memory_region" in params:
        raise ProtocolError(f"Input '{name}' uses shared memory, which this server does not support.")
    if raw is not None:
        if tensor.HasField("contents") and _has_values(tensor.contents):
            raise ProtocolError(
                f"Input '{name}' has both 'contents' and raw_input_contents; send one of them."
            )
        if datatype == "BYTES":
            data = _decode_raw_bytes(name, shape, raw)
        else:
            data = decode_binary_tensor(name, datatype, shape, memoryview(raw))
    else:
        data = _decode_contents(name, datatype, shape, tensor.contents)
    return InputTensor(name, datatype, shape, data, params)


def _has_values(contents: pb.InferTensorContents) -> bool:
    return any(len(getattr(contents, field)) for field in set(CONTENTS_FIELD.values()))


def _decode_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    """Typed contents: only the field of the tensor's datatype may hold values, exactly prod(shape)."""
    needed = math.prod(shape)
    field = CONTENTS_FIELD.get(datatype)
    for other in set(CONTENTS_FIELD.values()) - {field}:
        if len(getattr(contents, other)):
            where = (
                f"its values go in '{field}'" if field else "its values must be sent in raw_input_contents"
            )
            raise ProtocolError(f"Input '{name}' is {datatype} but has '{other}'; {where}.")
    values = getattr(contents, field) if field else ()
    if len(values) != needed:
        raise ProtocolError(
            f"Input '{name}' has {len(values)} values in its contents but shape {list(shape)} needs {needed}."
        )
    if datatype == "BYTES":
        array = np.empty(needed, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = check_datatype(datatype, f"Input '{name}'").newbyteorder("=")
    if field == "fp32_contents" or field == "fp64_contents" or field == "bool_contents":
        return np.array(values, dtype=dtype).reshape(shape)
    # INT8/INT16 travel in int32, UINT8/UINT16 in uint32: check the range before narrowing.
    wide = np.array(values, dtype=np.int64 if field != "uint64_contents" else np.uint64)
    info = np.iinfo(dtype)
    if needed and (wide.min() < info.min or wide.max() > info.max):
        raise ProtocolError(f"The contents of input '{name}' have values outside the range of {datatype}.")
    return wide.astype(dtype).reshape(shape)


def _decode_raw_bytes(name: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """BYTES in raw form: each element is a 4-byte little-endian length and then that many bytes."""
    needed = math.prod(shape)
    if needed > len(raw) // _LENGTH.size:  # each element takes at least its 4-byte length
        raise ProtocolError(
            f"Input '{name}' has {len(raw)} bytes of raw BYTES data, too few for the {needed} elements "
            f"of shape {list(shape)}."
        )
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    for _ in range(needed):
        if offset + _LENGTH.size > len(raw):
            break
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            break
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != needed or offset != len(raw):
        raise ProtocolError(
            f"Input '{name}' has raw BYTES data that does not hold exactly the {needed} length-prefixed "
            f"elements of shape {list(shape)}."
        )
    array = np.empty(needed, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _requested_output(index: int, out: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    if not out.name:
        raise ProtocolError(f"Requested output {index} must have a non-empty 'name'.")
    params = parameters(out.parameters)
    if "shared_memory_region" in params:
        raise ProtocolError(
            f"Output '{out.name}' asks for shared memory, which this server does not support."
        )
    if params.get("classification"):
        raise ProtocolError(
            f"Output '{out.name}' asks for the classification extension, which this server does not support."
        )
    return RequestedOutput(out.name, None, params)


# -------------------------------------------------------------------------------------------- responses


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output in raw_output_contents, in the order of `outputs`."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=str(response.model_version), id=response.id or ""
    )
    for key, value in response.parameters.items():
        _set_parameter(msg.parameters[key], value)
    for tensor in response.outputs:
        msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        msg.raw_output_contents.append(_raw(tensor))
    return msg


def _raw(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for item in tensor.data.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            parts += (_LENGTH.pack(len(value)), value)
        return b"".join(parts)
    return encode_binary_tensor(tensor.data, tensor.datatype)
