"""Scores on the held-out rows with standard errors, the same way for every model.

Standard errors come from a bootstrap over the test rows (`RESAMPLES` resamples, a fixed seed, the *same*
resamples for every model of a table). For accuracy this matches the binomial SE sqrt(p(1-p)/n) closely;
for R² there is no such formula. Using the same resamples also gives the SE of the *paired* difference
between two models, which is what decides "within one SE of the best baseline": it removes the part of the
noise that comes from which rows happened to land in the test split, which both models share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
BOOTSTRAP_SEED = 0
PROB_FLOOR = 1e-15  # log-loss clips probabilities here, as scikit-learn did for years
# Higher is better for these; log-loss and rmse are lower-is-better.
HIGHER_IS_BETTER = {"accuracy": True, "r2": True, "log_loss": False, "rmse": False}
METRICS = {"classification": ("accuracy", "log_loss"), "regression": ("r2", "rmse")}


@dataclass(frozen=True)
class Prediction:
    """One model's answers for the test rows: class probabilities (columns in `classes` order) or values."""

    proba: np.ndarray | None = None  # [N, C]
    classes: Sequence[str] | None = None
    values: np.ndarray | None = None  # [N]


def align_proba(proba: np.ndarray, classes: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """Columns reordered to `order` (the true labels' order); a class a model never saw gets probability 0."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((proba.shape[0], len(order)), dtype=np.float64)
    for j, c in enumerate(order):
        if c in index:
            out[:, j] = proba[:, index[c]]
    return out


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _per_row(y: np.ndarray, pred: Prediction, order: Sequence[str]) -> dict[str, np.ndarray]:
    assert pred.proba is not None and pred.classes is not None
    proba = align_proba(np.asarray(pred.proba, dtype=np.float64), pred.classes, order)
    codes = np.searchsorted(np.asarray(order), y)
    p_true = proba[np.arange(len(y)), codes]
    correct = (np.asarray(order)[proba.argmax(axis=1)] == y).astype(np.float64)
    return {"accuracy": correct, "log_loss": -np.log(np.clip(p_true, PROB_FLOOR, 1.0))}


def _r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """R² along the last axis (each resample a row)."""
    ss_res = ((y - p) ** 2).sum(axis=-1)
    ss_tot = ((y - y.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)


def samples(task: str, y: np.ndarray, pred: Prediction, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on the full test set (index 0) followed by its value on every bootstrap resample."""
    if task == "classification":
        y = np.asarray(y).astype(str)
        order = sorted(set(y.tolist()))
        rows = _per_row(y, pred, order)
        return {k: np.concatenate([[v.mean()], v[idx].mean(axis=1)]) for k, v in rows.items()}
    assert pred.values is not None
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(pred.values, dtype=np.float64).reshape(-1)
    r2 = np.concatenate([_r2(y, p)[None], _r2(y[idx], p[idx])])
    rmse = np.concatenate([[np.sqrt(((y - p) ** 2).mean())], np.sqrt(((y[idx] - p[idx]) ** 2).mean(axis=1))])
    return {"r2": r2, "rmse": rmse}


def summarize(task: str, y: np.ndarray, preds: dict[str, Prediction]) -> dict[str, dict[str, float]]:
    """{model: {metric: value, metric + "_se": bootstrap SE}} for every model, on shared resamples."""
    idx = bootstrap_indices(len(y))
    out: dict[str, dict[str, float]] = {}
    for model, pred in preds.items():
        s = samples(task, y, pred, idx)
        out[model] = {}
        for k, v in s.items():
            out[model][k] = float(v[0])
            out[model][k + "_se"] = float(np.nanstd(v[1:], ddof=1))
    return out


def paired_difference(
    task: str, y: np.ndarray, a: Prediction, b: Prediction, metric: str
) -> tuple[float, float]:
    """(metric(a) - metric(b), bootstrap SE of that difference) on the shared resamples."""
    idx = bootstrap_indices(len(y))
    sa, sb = samples(task, y, a, idx)[metric], samples(task, y, b, idx)[metric]
    d = sa - sb
    return float(d[0]), float(np.nanstd(d[1:], ddof=1))
