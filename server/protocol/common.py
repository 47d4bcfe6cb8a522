"""Shared decoding helpers: JSON bodies, feature matrices and their checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from server.errors import BadRequest

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


def check_features(x: np.ndarray, n_features: int, allow_nonfinite: bool) -> np.ndarray:
    """Check a ``[rows, features]`` float32 matrix against the model; returns it C-contiguous."""
    if x.ndim != 2:
        raise BadRequest(f"The input must be 2-D [rows, {n_features}]; got {x.ndim}-D.")
    if x.shape[0] < 1:
        raise BadRequest("The input has no rows.")
    if x.shape[1] != n_features:
        raise BadRequest(f"Each row must have {n_features} features; got {x.shape[1]}.")
    # Cast first: a finite float64 such as 1e300 becomes inf in float32.
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not allow_nonfinite and not np.isfinite(x).all():
        raise BadRequest("The input contains NaN or infinite values (or values too large for FP32).")
    return x


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
    return arr.astype(np.float64)
