"""Default hyperparameters scaled to the data: FitConfig field overrides for a table of a given size.

The pipeline applies `recipe(...)` to every field the user did not set with a flag. The figures behind
the rules live in docs/quality.md (measured by benchmarks/quality).
"""

from __future__ import annotations

from typing import Any


def recipe(n_rows: int, n_features: int, task: str, n_classes: int | None) -> dict[str, Any]:
    """FitConfig field overrides for `n_rows` training rows of `n_features` features (none yet: today's
    defaults stand until the quality benchmark measures better ones)."""
    return {}
