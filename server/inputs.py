"""A decoded request checked against the model it asks for: its rows and the outputs to answer.

Data-plane side, so every transport (V2, V1, gRPC) gets the same checks and the same messages. Today's
models take one ``[-1, F]`` FP32 input (``manifest.input``); numeric datatypes are cast to it.
"""

from __future__ import annotations

import math

import numpy as np

from server.errors import BadRequest
from server.manifest import InputSpec
from server.protocol.tensors import InferenceRequest, ProtocolError

# Numeric datatypes a client may send; all are cast to the model's FP32 (JSON integers were already
# checked to be whole and in range by the decoder). BOOL and BYTES are not features.
CASTABLE = frozenset({"FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32"})


def model_input(request: InferenceRequest, spec: InputSpec, allow_nonfinite: bool) -> np.ndarray:
    """The ``[N, F]`` FP32 rows of `request` for a model whose input is `spec` (N >= 1).

    Refuses (400) an unknown or missing input, a datatype that is not a number, a shape other than
    ``[N, F]``, no rows, and NaN/infinite features unless `allow_nonfinite` (binary data can carry them;
    so can an FP64 value too large for FP32). An FP32 binary input stays a zero-copy view of the body."""
    inputs = request.inputs
    if len(inputs) != 1 or inputs[0].name != spec.name:
        names = [tensor.name for tensor in inputs]
        unknown = [name for name in names if name != spec.name]
        what = f"unknown input '{unknown[0]}'" if unknown else f"no input '{spec.name}'"
        raise ProtocolError(f"The request has {what}; this model takes exactly one input, '{spec.name}'.")
    tensor = inputs[0]
    if tensor.datatype not in CASTABLE:
        raise ProtocolError(
            f"Input '{spec.name}' is {tensor.datatype}; send {spec.datatype} (or another numeric type, "
            f"which is cast to {spec.datatype})."
        )
    return check_features(tensor.data, spec.shape[1], allow_nonfinite)


_SUM = np.add.reduce  # the ufunc itself: ndarray.sum() goes through a Python wrapper first


def check_features(x: np.ndarray, n_features: int, allow_nonfinite: bool) -> np.ndarray:
    """Check a ``[rows, features]`` matrix against the model; returns it as C-contiguous float32."""
    if x.ndim != 2:
        raise BadRequest(f"The input must be 2-D [rows, {n_features}]; got {x.ndim}-D.")
    if x.shape[0] < 1:
        raise BadRequest("The input has no rows.")
    if x.shape[1] != n_features:
        raise BadRequest(f"Each row must have {n_features} features; got {x.shape[1]}.")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        # Cast first: a finite float64 such as 1e300 becomes inf in float32.
        with np.errstate(over="ignore"):
            x = np.ascontiguousarray(x, dtype=np.float32)
    # A finite sum means every value is finite (NaN and infinities propagate): one reduction, no temporary,
    # on the hot path; only a sum that overflowed (or a bad value) pays for the exact check.
    finite_sum = math.isfinite(_SUM(x, axis=None, dtype=np.float64))
    if not allow_nonfinite and not finite_sum and not np.isfinite(x).all():
        raise BadRequest("The input contains NaN or infinite values (or values too large for FP32).")
    return x
