"""Check a parsed V2 request against the model's one input (``manifest.input``) and hand back its rows."""

from __future__ import annotations

import numpy as np

from server.manifest import InputSpec
from server.protocol.binary import InferRequest, ProtocolError
from server.protocol.common import check_features

# Numeric datatypes a client may send; all are cast to the model's FP32 (JSON integers were already
# checked to be whole and in range by the parser). BOOL and BYTES are not features.
CASTABLE = frozenset({"FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16", "UINT32"})


def model_input(request: InferRequest, spec: InputSpec, allow_nonfinite: bool) -> np.ndarray:
    """The ``[N, F]`` FP32 rows of `request` for a model whose input is `spec` (N >= 1).

    Raises ProtocolError for an unknown or missing input or a datatype that is not a number, and
    BadRequest (both are 400s) for a shape other than ``[N, F]``, no rows, or NaN/infinite features unless
    `allow_nonfinite` (binary data can carry them; so can an FP64 value too large for FP32). An FP32
    binary input stays a zero-copy view of the body."""
    names = [tensor.name for tensor in request.inputs]
    if names != [spec.name]:
        unknown = [name for name in names if name != spec.name]
        what = f"unknown input '{unknown[0]}'" if unknown else f"no input '{spec.name}'"
        raise ProtocolError(f"The request has {what}; this model takes exactly one input, '{spec.name}'.")
    tensor = request.inputs[0]
    if tensor.datatype not in CASTABLE:
        raise ProtocolError(
            f"Input '{spec.name}' is {tensor.datatype}; send {spec.datatype} (or another numeric type, "
            f"which is cast to {spec.datatype})."
        )
    return check_features(tensor.data, spec.shape[1], allow_nonfinite)
