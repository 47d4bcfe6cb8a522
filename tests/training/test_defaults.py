"""The data-size recipe (training.defaults): what it returns is FitConfig's, and it follows the rules
that docs/quality.md records (batch sizes from the member's row count, per task)."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from training.defaults import MAX_BATCH, MIN_BATCH, batch_size, recipe
from training.fit import FitConfig


@pytest.mark.parametrize(
    "task, n_classes", [("classification", 2), ("classification", 10), ("regression", None)]
)
@pytest.mark.parametrize("n_rows", [1, 10, 150, 1000, 5000, 100_000])
def test_the_recipe_names_only_fitconfig_fields_and_gives_a_valid_config(
    task: str, n_classes: int | None, n_rows: int
) -> None:
    overrides = recipe(n_rows, 7, task, n_classes)
    assert set(overrides) <= {f.name for f in fields(FitConfig)}
    replace(FitConfig(), **overrides).validate()


def test_batch_sizes_are_powers_of_two_within_bounds_and_grow_with_the_rows() -> None:
    sizes = [batch_size(n) for n in (1, 100, 640, 1300, 2600, 5000, 10**6)]
    assert sizes == sorted(sizes)
    assert sizes[0] == MIN_BATCH and sizes[-1] == MAX_BATCH
    assert all(s & (s - 1) == 0 for s in sizes)


def test_small_regression_gets_small_batches_and_classification_keeps_128_until_large() -> None:
    assert recipe(160, 10, "regression", None)["batch_size"] == 32
    assert recipe(160, 10, "classification", 2)["batch_size"] == 128
    assert recipe(6000, 10, "classification", 2)["batch_size"] == 256
    assert recipe(6000, 10, "regression", None)["batch_size"] == 128
