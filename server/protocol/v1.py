"""The simple JSON API: ``{"instances": [[...], ...]}`` -> ``{"predictions": [...], ...}``."""

from __future__ import annotations

from typing import Any

import numpy as np

from server.errors import BadRequest
from server.manifest import Manifest
from server.protocol.common import check_features, to_float_matrix


def decode_predict_request(body: dict[str, Any], manifest: Manifest, allow_nonfinite: bool) -> np.ndarray:
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BadRequest("The request must have 'instances': a list of rows of numbers.")
    if not instances:
        raise BadRequest("'instances' is empty; send at least one row.")
    x = to_float_matrix(instances, "'instances'")
    if x.ndim == 1:
        raise BadRequest("'instances' must be a list of rows (lists of numbers), not one flat list.")
    return check_features(x, manifest.input.shape[1], allow_nonfinite)


def encode_predict_response(
    manifest: Manifest, version: int, results: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Classification: predictions are label names; regression: values (a number per row when one target)."""
    if manifest.task == "classification":
        labels = manifest.labels or []
        predictions: Any = [labels[i] for i in results["label"].tolist()]
        extra = {"probabilities": results["probabilities"], "spread": results["spread"]}
    else:
        pred = results["prediction"]
        predictions = pred[:, 0] if pred.shape[1] == 1 else pred
        spread = results["spread"]
        extra = {"spread": spread[:, 0] if spread.shape[1] == 1 else spread}
    return {"predictions": predictions, **extra, "model_name": manifest.name, "model_version": str(version)}
