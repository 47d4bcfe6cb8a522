"""Default hyperparameters scaled to the data: FitConfig field overrides for a table of a given size.

The pipeline applies `recipe(...)` to every field the user did not set with a flag. The figures behind
the rules are in docs/quality.md ("What was decided"), measured with benchmarks/experiments/
quality_defaults.py on inner splits of the benchmark's training rows (its test rows were never used).

- Regression on small tables was under-trained: a member of a 300-row table saw two batches of 128 an
  epoch, about 50 optimizer steps in 25 epochs. Batches sized to about 1/20 of the member's rows (32 at
  the least) raised held-out R² on four of five small regression tables. The same change made log-loss
  slightly worse on both small classification tables tried, so classification keeps 128 there.
- Large classification tables (about 3,700 member rows and up) train with batches of 256: accuracy and
  log-loss held on the 10,000-row table (and, with width 256 too, on the two other large ones), in
  less time. Regression stays
  at 128 there: 256 lost R² on the 8,645-row table, which is under-trained as it is.
- Kept, because no alternative tried beat them: width 512 (256 and 128 lost R² and accuracy on small
  tables), dropout 0.5 (0.1 and 0.3 were mixed), the one-cycle schedule at 3e-3 (1e-3 lost, 1e-2 was
  mixed), 25 epochs, weight decay 0, entity embeddings (one-hot was mixed).
"""

from __future__ import annotations

import math
from typing import Any

BATCHES_PER_EPOCH = 20  # regression: the batch size aims at about this many batches an epoch
MIN_BATCH, MAX_BATCH = 32, 256  # BatchNorm statistics get noisy below 32 rows a batch
CLASSIFICATION_MIN_BATCH = 128  # FitConfig's own default, which classification keeps on small tables
REGRESSION_MAX_BATCH = 128  # regression wants the steps: 256 lost R² on the 8,645-row table


def batch_size(n_rows: int) -> int:
    """A power of two near n_rows / BATCHES_PER_EPOCH, within [MIN_BATCH, MAX_BATCH]."""
    target = max(n_rows / BATCHES_PER_EPOCH, 1.0)
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** round(math.log2(target)))))


def recipe(n_rows: int, n_features: int, task: str, n_classes: int | None) -> dict[str, Any]:
    """FitConfig field overrides for a member trained on `n_rows` rows of `n_features` features."""
    size = batch_size(n_rows)
    if task == "classification":
        return {"batch_size": max(size, CLASSIFICATION_MIN_BATCH)}
    return {"batch_size": min(size, REGRESSION_MAX_BATCH)}
