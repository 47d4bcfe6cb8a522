"""The simple JSON API: ``{"instances": [[...], ...]}`` -> ``{"predictions": [...], ...}``.

A V1 body decodes into the same :class:`~server.protocol.tensors.InferenceRequest` as a V2 one (one
tensor of raw rows under the model's input name), so the data plane checks both alike; the response is
written from the same :class:`~server.protocol.tensors.InferenceResponse`, with label names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from server.errors import BadRequest
from server.manifest import Manifest
from server.protocol.tensors import InferenceRequest, InferenceResponse, InputTensor

DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object; anything else is a 400 with the reason."""
    if not body:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "it is not valid UTF-8" if "utf-8" in str(exc).lower() else "it is not valid JSON"
        raise BadRequest(f"Cannot read the request body: {reason}.") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.")
    return value


def to_float_matrix(data: Any, what: str) -> np.ndarray:
    """Nested JSON numbers -> float64 array; ragged rows or non-numbers are a 400.

    numpy is asked to infer the type first: with ``dtype=float64`` it would quietly turn the strings "1"
    and "nan" into numbers and ``null`` into NaN (which ``allow_nonfinite`` would then let through)."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what} must be numbers in rows of equal length.") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(
            f"{what} must hold only numbers (not strings, null, objects, only booleans, "
            "or integers beyond 64 bits)."
        )
    return arr.astype(np.float64, copy=False)


def decode_request(body: bytes, manifest: Manifest, model_name: str) -> InferenceRequest:
    """A ``:predict`` body as a request for the model's one input (rows as FP64, checked and cast to the
    model's FP32 by the data plane)."""
    instances = parse_json_object(body).get("instances")
    if not isinstance(instances, list):
        raise BadRequest("The request must have 'instances': a list of rows of numbers.")
    if not instances:
        raise BadRequest("'instances' is empty; send at least one row.")
    x = to_float_matrix(instances, "'instances'")
    if x.ndim == 1:
        raise BadRequest("'instances' must be a list of rows (lists of numbers), not one flat list.")
    tensor = InputTensor(manifest.input.name, "FP64", x.shape, x)
    return InferenceRequest(model_name, None, None, {}, (tensor,))


def encode_response(manifest: Manifest, response: InferenceResponse) -> bytes:
    """Classification: predictions are label names; regression: values (a number per row when one target)."""
    results = {t.name: t.data for t in response.outputs}
    if manifest.task == "classification":
        labels = manifest.labels or []
        predictions: Any = [labels[i] for i in results["label"].tolist()]
        extra = {"probabilities": results["probabilities"], "spread": results["spread"]}
    else:
        pred = results["prediction"]
        predictions = pred[:, 0] if pred.shape[1] == 1 else pred
        spread = results["spread"]
        extra = {"spread": spread[:, 0] if spread.shape[1] == 1 else spread}
    doc = {
        "predictions": predictions,
        **extra,
        "model_name": manifest.name,
        "model_version": response.model_version,
    }
    return orjson.dumps(doc, option=DUMPS_OPTIONS)
