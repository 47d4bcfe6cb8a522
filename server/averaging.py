"""Member averaging: THE rule by which an ensemble's answer is made, used by the server and by training.

The served ensemble (``server.ensemble``) and training's reported test metrics
(``training.ensemble_predict``) both call :func:`average`, so a reported accuracy is the accuracy of what
the server answers. Torch-free (numpy only), next to the manifest whose ``aggregation: mean`` it implements.

Float semantics, decided once: members produce float32; the mean and the population standard deviation
(ddof=0) over members accumulate in float64 and are rounded to float32 once at the end (float32
accumulation would lose bits as members are added); for classification ``label`` is the argmax of the
float64 mean.
"""

from __future__ import annotations

import numpy as np

from server.manifest import Task

_SUM = np.add.reduce


def average(stacked: np.ndarray, task: Task) -> dict[str, np.ndarray]:
    """The served outputs from member outputs stacked as ``(members, rows, width)``.

    Classification: ``probabilities`` (FP32), ``label`` (INT64) and ``spread`` (FP32);
    regression: ``prediction`` and ``spread`` (FP32)."""
    if stacked.ndim != 3 or stacked.shape[0] < 1:
        raise ValueError(
            f"member outputs must be stacked as (members >= 1, rows, width), got {stacked.shape}"
        )
    # np.mean / np.std's own steps, called as ufuncs: the same float64 operations in the same order (so the
    # same bits), without their Python wrappers, which cost about a third of a single-row run.
    n = stacked.shape[0]
    mean = _SUM(stacked, axis=0, dtype=np.float64) / n
    deviation = stacked - mean
    spread = np.sqrt(_SUM(np.multiply(deviation, deviation, out=deviation), axis=0) / n).astype(np.float32)
    if task == "classification":
        return {
            "probabilities": mean.astype(np.float32),
            "label": mean.argmax(axis=1).astype(np.int64),
            "spread": spread,
        }
    if task == "regression":
        return {"prediction": mean.astype(np.float32), "spread": spread}
    raise ValueError(f"unknown task {task!r}: use 'classification' or 'regression'")
