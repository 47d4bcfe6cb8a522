"""The KServe V2 / Open Inference Protocol REST wire format: body <-> InferenceRequest / InferenceResponse.

Bodies are JSON, or Triton's binary tensor data extension (triton-inference-server/server
``docs/protocol/extension_binary_data.md``): a JSON object followed by raw tensor bytes (little-endian,
row-major, no padding; BOOL is one byte 0 or 1), the ``Inference-Header-Content-Length`` HTTP header
giving the JSON part's length. An input with ``parameters.binary_data_size`` takes its bytes from the tail,
in the order the inputs are listed; outputs asked for with ``binary_data`` (or the request-level
``binary_data_output``) come back the same way.

Two decoders, one answer: :func:`parse_infer_request` decodes any body with every check and message;
:func:`decode_fast` decodes the usual request (one 2-D FP32 input, JSON or binary) in a few steps and
steps aside (None) for anything else; :func:`decode_request` tries the fast one first.
tests/server/test_protocol_fast.py pins the fast decoder to the general one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, NamedTuple

import numpy as np
import orjson

from server.errors import BadRequest
from server.protocol.tensors import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ProtocolError,
    RequestedOutput,
    check_datatype,
    check_shape,
    check_unique_names,
    decode_binary_tensor,
    decode_json_tensor,
    output_dtype,
)

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
# What Triton sends when binary data follows the JSON header.
BINARY_CONTENT_TYPE = "application/octet-stream"


# ---------------------------------------------------------------------------------------------- decoding


def decode_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str | None
) -> InferenceRequest:
    """A V2 infer body (`header_length`: the Inference-Header-Content-Length header, if any)."""
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.")
    fast = decode_fast(body, header_length, model_name, model_version)
    if fast is not None:
        return fast
    return parse_infer_request(body, header_length, model_name, model_version)


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
    body: bytes | bytearray | memoryview,
    header_length: int | str | None = None,
    model_name: str = "",
    model_version: str | None = None,
) -> InferenceRequest:
    """Decode any V2 inference request body, every check, every error message (the general path);
    `header_length` is the ``Inference-Header-Content-Length`` header (None when absent: the whole body
    is JSON), `model_name` / `model_version` come from the URL. Raises ProtocolError (400)."""
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
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise ProtocolError("The request parameter 'binary_data_output' must be true or false.")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("The request must have a non-empty 'inputs' array.")
    specs = [_input_spec(i, item) for i, item in enumerate(raw_inputs)]
    check_unique_names([spec.name for spec in specs], "input")

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
            array = decode_json_tensor(spec.name, spec.datatype, spec.shape, spec.data)
        else:
            array = decode_binary_tensor(
                spec.name, spec.datatype, spec.shape, view[offset : offset + spec.size]
            )
            offset += spec.size
        inputs.append(InputTensor(spec.name, spec.datatype, spec.shape, array, spec.parameters))

    outputs = None
    if "outputs" in doc:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("The request 'outputs' must be an array.")
        # An empty list asks for nothing in particular, like an absent one: every output.
        outputs = tuple(_requested_output(i, item) for i, item in enumerate(raw_outputs)) or None
        check_unique_names([o.name for o in outputs or ()], "output")
    return InferenceRequest(model_name, model_version, request_id, parameters, tuple(inputs), outputs)


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
    check_datatype(datatype, f"Input '{name}'")
    shape = item.get("shape")
    if not isinstance(shape, list):
        raise ProtocolError(f"Input '{name}' must have a 'shape' that is an array of integers.")
    check_shape(name, shape)
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


def _object(value: Any, who: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{who} must be a JSON object.")
    return value


def decode_fast(
    body: bytes, header_length: str | None, model_name: str, model_version: str | None
) -> InferenceRequest | None:
    """The usual valid request (one FP32 input ``[N, F]`` with N >= 1, JSON or binary; outputs by name,
    with or without ``binary_data``) decoded in a few steps; None for anything else, valid or not.

    The general path costs tens of microseconds of Python per request, a large share of a single-row
    request. This returns exactly what that path returns for the requests it accepts, and never raises:
    every error, and every unusual request, is left to the general path, which owns the messages."""
    try:
        return _decode_fast(body, header_length, model_name, model_version)
    except Exception:  # anything unexpected in an odd body: the general path will say what is wrong
        return None


def _decode_fast(
    body: bytes, header_length: str | None, model_name: str, model_version: str | None
) -> InferenceRequest | None:
    length = None
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):
            return None
        length = int(header_length)
        if length > len(body):
            return None
    doc = orjson.loads(body if length is None else memoryview(body)[:length])
    if type(doc) is not dict:
        return None
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        return None
    parameters = doc.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict or type(parameters.get("binary_data_output", False)) is not bool:
        return None

    inputs = doc.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        return None
    item = inputs[0]
    name, shape = item.get("name"), item.get("shape")
    if type(name) is not str or not name or item.get("datatype") != "FP32" or type(shape) is not list:
        return None
    if len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
        return None
    rows, width = shape
    if rows < 1 or width < 1:
        return None
    params = item.get("parameters")
    size = None
    if params is None:
        params = {}
    else:
        if type(params) is not dict or "shared_memory_region" in params:
            return None
        size = params.get("binary_data_size")
    if size is None:
        if length is not None or "data" not in item:
            return None
        x = decode_json_tensor(name, "FP32", (rows, width), item["data"])
    else:
        nbytes = rows * width * 4
        if type(size) is not int or "data" in item or length is None or size != nbytes:
            return None
        if len(body) - length != nbytes:
            return None
        x = np.frombuffer(body, dtype="<f4", offset=length).reshape(rows, width)

    outputs = doc.get("outputs", [])  # present but null is an error, left to the general path
    requested: tuple[RequestedOutput, ...] | None = None
    if outputs != []:
        if type(outputs) is not list:
            return None
        names: set[str] = set()
        chosen = []
        for out in outputs:
            if type(out) is not dict:
                return None
            out_name = out.get("name")
            if type(out_name) is not str or not out_name or out_name in names:
                return None
            own = None
            out_params = out.get("parameters")
            if out_params is None:
                out_params = {}
            else:
                if type(out_params) is not dict:
                    return None
                if "shared_memory_region" in out_params or out_params.get("classification"):
                    return None
                own = out_params.get("binary_data")
                if own is not None and type(own) is not bool:
                    return None
            names.add(out_name)
            chosen.append(RequestedOutput(out_name, own, out_params))
        requested = tuple(chosen)
    tensor = InputTensor(name, "FP32", (rows, width), x, params)
    return InferenceRequest(model_name, model_version, request_id, parameters, (tensor,), requested)


def binary_outputs(request: InferenceRequest, names: Iterable[str]) -> set[str]:
    """Which of `names` go back as binary: an output's own ``binary_data`` overrides the request's
    ``binary_data_output`` (extension_binary_data.md)."""
    default = request.parameters.get("binary_data_output", False)
    own = {out.name: out.binary_data for out in request.outputs or ()}
    chosen = set()
    for name in names:
        flag = own.get(name)
        if flag if flag is not None else default:
            chosen.add(name)
    return chosen


# ---------------------------------------------------------------------------------------------- encoding


def encode_response(request: InferenceRequest, response: InferenceResponse) -> tuple[bytes, int | None]:
    """``(body, header_length)`` for `response`, binary where `request` asked; header_length is None for a
    plain JSON body (else send it as ``Inference-Header-Content-Length``)."""
    outputs = [(t.name, t.data, t.datatype) for t in response.outputs]
    binary = binary_outputs(request, [t.name for t in response.outputs])
    return encode_infer_response(
        response.model_name,
        response.model_version,
        outputs,
        request_id=response.id,
        binary=binary,
        parameters=response.parameters,
    )


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
        try:  # "output 'p' has unsupported datatype 'BYTES'", "output 'p' is float64 but ..."
            dtype = output_dtype(array, datatype)
        except ValueError as exc:
            raise ValueError(f"output {name!r} {exc}") from None
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
