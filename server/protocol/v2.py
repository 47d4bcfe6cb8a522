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

from server.errors import BadRequest
from server.manifest import Manifest
from server.protocol.binary import ProtocolError, encode_infer_response, parse_infer_request
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
    try:
        request = parse_infer_request(body, header_length)
        x = model_input(request, manifest.input, allow_nonfinite)
        names = request.output_names([o.name for o in manifest.outputs])
    except ProtocolError as exc:
        raise BadRequest(exc.message) from None
    return DecodedRequest(x, names, request.binary_outputs(names), request.id)


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
