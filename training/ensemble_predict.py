"""Average member outputs with the server's own function, and score the ensemble. Pure numpy: no torch
here, so a repository can be checked (and this module imported) where only onnxruntime is installed.

The rule (aggregation ``mean``) is ``server.averaging.average``: the reported test metrics are those of
what the server answers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.averaging import average
from server.manifest import Task

# Probabilities are clipped before the log so that one confident mistake costs a large, finite loss.
LOG_LOSS_EPS = 1e-7


def average_predictions(member_outputs: Sequence[np.ndarray], task: Task) -> dict[str, np.ndarray]:
    """Mean and spread of the members' outputs ``[N, W]``; classification adds ``label`` ``[N]``."""
    if not member_outputs:
        raise ValueError("an ensemble needs at least one member output")
    stacked = np.stack([np.asarray(o, dtype=np.float32) for o in member_outputs], axis=0)
    if stacked.ndim != 3:
        raise ValueError(f"each member output must be 2-D [N, W], got shape {stacked.shape[1:]}")
    return average(stacked, task)


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy and mean log-loss (natural log) of class-index targets against ``[N, C]`` probabilities."""
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities {p.shape} do not match {y.shape[0]} targets")
    picked = np.clip(p[np.arange(y.shape[0]), y], LOG_LOSS_EPS, 1.0)
    return {
        "accuracy": float(np.mean(p.argmax(axis=1) == y)),
        "log_loss": float(-np.mean(np.log(picked))),
    }


def regression_metrics(y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """RMSE over every target value, and R2 averaged over targets (scikit-learn's ``uniform_average``)."""
    pred = np.asarray(prediction, dtype=np.float64)
    pred = pred.reshape(pred.shape[0], -1)
    y = np.asarray(y_true, dtype=np.float64).reshape(pred.shape)
    residual = ((y - pred) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    # A constant target has no variance to explain: R2 is 1 when predicted exactly, else 0 (as scikit-learn).
    r2 = np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), (residual == 0).astype(float))
    return {"rmse": float(np.sqrt(np.mean((y - pred) ** 2))), "r2": float(np.mean(r2))}


def ensemble_metrics(
    member_outputs: Sequence[np.ndarray], y_true: np.ndarray, task: Task
) -> dict[str, float]:
    """Held-out metrics of the averaged ensemble: accuracy + log_loss, or rmse + r2."""
    averaged = average_predictions(member_outputs, task)
    if task == "classification":
        return classification_metrics(y_true, averaged["probabilities"])
    return regression_metrics(y_true, averaged["prediction"])
