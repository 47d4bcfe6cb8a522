"""Default hyperparameters scaled to the data: FitConfig field overrides for a table of a given size.

The pipeline applies `recipe(...)` to every field the user did not set with a flag. The figures behind
the rules live in docs/quality.md (measured by benchmarks/quality and benchmarks/experiments).

What the measurements said (inner validation splits of the benchmark's training rows only):
- Small tables were under-trained: a member of a 300-row table saw 2 batches of 128 per epoch, about 50
  optimizer steps in 25 epochs. Smaller batches (more steps at the same epochs) raised R² on every small
  regression table tried; width 512, dropout 0.5 and the one-cycle schedule held up against the
  alternatives tried (narrower, less dropout, lower rate, weight decay).
- Large tables lost nothing with batches of 256 and trained faster.
So the batch size follows the member's row count, keeping roughly ROWS_PER_BATCH_DIVISOR batches an epoch.
"""

from __future__ import annotations

import math
from typing import Any

ROWS_PER_BATCH_DIVISOR = 20  # about this many batches per epoch
MIN_BATCH, MAX_BATCH = 32, 256  # BatchNorm wants >= 32 rows a batch; above 256 the steps get too few


def batch_size(n_rows: int) -> int:
    """A power of two near n_rows / ROWS_PER_BATCH_DIVISOR, within [MIN_BATCH, MAX_BATCH]."""
    target = max(n_rows, 1) / ROWS_PER_BATCH_DIVISOR
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(max(target, 1.0))))))


def recipe(n_rows: int, n_features: int, task: str, n_classes: int | None) -> dict[str, Any]:
    """FitConfig field overrides for a member trained on `n_rows` rows of `n_features` features."""
    return {"batch_size": batch_size(n_rows)}
