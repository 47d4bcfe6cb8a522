"""KServe V2 / Open Inference Protocol for one model: decode an infer request, encode its response.

The one decode path for V2 infer bodies, JSON or with Triton's binary tensor extension:
``server.protocol.binary`` parses the body (zero-copy views for binary tensors), ``model_input`` checks
it against the manifest and casts it to FP32 rows. Responses carry binary outputs where the client asked
(an output's ``binary_data``, or the request's ``binary_data_output``); otherwise they are plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from server.errors import BadRequest
from server.manifest import Manifest
from server.protocol.binary import ProtocolError, _decode_json, encode_infer_response, parse_infer_request
from server.protocol.model_input import model_input
from server.triton_config import model_metadata as triton_model_metadata


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    x: np.ndarray  # [N, F] FP32 rows, C-contiguous (possibly a read-only view of the body)
    outputs: list[str]  # served output names, in the order to answer them
    binary: set[str]  # which of them go back as binary
    id: str | None = None


def decode_infer_request(
    body: bytes, header_length: str | None, manifest: Manifest, allow_nonfinite: bool
) -> DecodedRequest:
    """Validate a V2 infer body (`header_length`: the Inference-Header-Content-Length header, if any)."""
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.")
    common = decode_common(body, header_length, manifest, allow_nonfinite)
    if common is not None:
        return common
    return decode_general(body, header_length, manifest, allow_nonfinite)


def decode_general(
    body: bytes, header_length: str | None, manifest: Manifest, allow_nonfinite: bool
) -> DecodedRequest:
    """Any V2 infer body, every check, every error message."""
    try:
        request = parse_infer_request(body, header_length)
        x = model_input(request, manifest.input, allow_nonfinite)
        names = request.output_names([o.name for o in manifest.outputs])
    except ProtocolError as exc:
        raise BadRequest(exc.message) from None
    return DecodedRequest(x, names, request.binary_outputs(names), request.id)


def decode_common(
    body: bytes, header_length: str | None, manifest: Manifest, allow_nonfinite: bool
) -> DecodedRequest | None:
    """The usual valid request (one FP32 input ``[N, F]``, JSON or binary; outputs by name, with or
    without ``binary_data``) decoded in a few steps; None for anything else, valid or not.

    The general path (``parse_infer_request`` + ``model_input``) costs tens of microseconds of Python per
    request, a large share of a single-row request. This returns exactly what that path returns for the
    requests it accepts, and never raises: every error, and every unusual request, is left to the general
    path, which owns the messages (tests/server/test_protocol_fast.py checks both paths agree)."""
    try:
        return _decode_common(body, header_length, manifest, allow_nonfinite)
    except Exception:  # anything unexpected in an odd body: the general path will say what is wrong
        return None


def _decode_common(
    body: bytes, header_length: str | None, manifest: Manifest, allow_nonfinite: bool
) -> DecodedRequest | None:
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
    binary_output = False
    parameters = doc.get("parameters")
    if parameters is not None:
        if type(parameters) is not dict:
            return None
        binary_output = parameters.get("binary_data_output", False)
        if type(binary_output) is not bool:
            return None

    inputs = doc.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        return None
    item, spec = inputs[0], manifest.input
    shape = item.get("shape")
    if item.get("name") != spec.name or item.get("datatype") != "FP32" or type(shape) is not list:
        return None
    n_features = spec.shape[1]
    if len(shape) != 2 or type(shape[0]) is not int or shape[0] < 1 or shape[1] != n_features:
        return None
    if type(shape[1]) is not int:
        return None
    params = item.get("parameters")
    size = None
    if params is not None:
        if type(params) is not dict or "shared_memory_region" in params:
            return None
        size = params.get("binary_data_size")
    if size is None:
        if length is not None or "data" not in item:
            return None
        x = _decode_json(spec.name, "FP32", (shape[0], n_features), item["data"])
    else:
        nbytes = shape[0] * n_features * 4
        if type(size) is not int or "data" in item or length is None or size != nbytes:
            return None
        if len(body) - length != nbytes:
            return None
        x = np.frombuffer(body, dtype="<f4", offset=length).reshape(shape[0], n_features)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        return None
    if not allow_nonfinite and not np.isfinite(x).all():
        return None

    available = [o.name for o in manifest.outputs]
    binary: set[str] = set()
    outputs = doc.get("outputs", [])  # present but null is an error, left to the general path
    if outputs == []:
        names = list(available)
        if binary_output:
            binary.update(names)
    else:
        if type(outputs) is not list:
            return None
        names = []
        for out in outputs:
            if type(out) is not dict:
                return None
            name = out.get("name")
            if type(name) is not str or name not in available or name in names:
                return None
            own = None
            out_params = out.get("parameters")
            if out_params is not None:
                if type(out_params) is not dict:
                    return None
                if "shared_memory_region" in out_params or "classification" in out_params:
                    return None
                own = out_params.get("binary_data")
                if own is not None and type(own) is not bool:
                    return None
            names.append(name)
            if own if own is not None else binary_output:
                binary.add(name)
    return DecodedRequest(x, names, binary, request_id)


def encode_response(
    manifest: Manifest, version: int, req: DecodedRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """``(body, header_length)``: header_length is None for a plain JSON body."""
    outputs = [(name, results[name], manifest.output(name).datatype) for name in req.outputs]
    return encode_infer_response(manifest.name, version, outputs, request_id=req.id, binary=req.binary)


def model_metadata(manifest: Manifest, versions: list[int], extra: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/{m}``: Triton's metadata (the same tensors as the config) plus our parameters."""
    return {
        **triton_model_metadata(manifest, versions),
        "parameters": {"task": manifest.task, "labels": manifest.labels, **extra},
    }
