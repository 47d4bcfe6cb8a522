"""Check a parsed V2 request against the model's one input (``manifest.input``) and hand back its rows."""

from __future__ import annotations

import numpy as np

from server.manifest import InputSpec
from server.protocol.binary import InferRequest, ProtocolError


def model_input(request: InferRequest, spec: InputSpec) -> np.ndarray:
    """The ``[N, F]`` feature rows of `request` for a model whose input is `spec` (N >= 1, all finite).

    Raises ProtocolError (a 400) for an unknown or missing input, another datatype, a shape other than
    ``[N, F]``, or NaN/infinite features (binary data can carry them, and a model would only turn them
    into NaN predictions)."""
    names = [tensor.name for tensor in request.inputs]
    if names != [spec.name]:
        unknown = [name for name in names if name != spec.name]
        what = f"unknown input '{unknown[0]}'" if unknown else f"no input '{spec.name}'"
        raise ProtocolError(f"The request has {what}; this model takes exactly one input, '{spec.name}'.")
    tensor = request.inputs[0]
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"Input '{spec.name}' must be {spec.datatype}, not {tensor.datatype}.")
    n_features = spec.shape[1]
    if len(tensor.shape) != 2 or tensor.shape[1] != n_features:
        raise ProtocolError(
            f"Input '{spec.name}' must have shape [N, {n_features}], got {list(tensor.shape)}."
        )
    if tensor.shape[0] == 0:
        raise ProtocolError(f"Input '{spec.name}' must have at least one row.")
    if tensor.data.dtype.kind == "f" and not np.isfinite(tensor.data).all():
        raise ProtocolError(f"Input '{spec.name}' has NaN or infinite values.")
    return tensor.data
