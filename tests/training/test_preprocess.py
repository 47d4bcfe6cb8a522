"""Each proc alone: fitted on the rows given, replayed on new ones; torch modules compute the same."""

from __future__ import annotations

import numpy as np
import torch

from training.preprocess import MISSING_INDEX, OTHER_INDEX, Categorify, FillMissing, Normalize

nan = np.nan


def test_fill_missing_uses_training_medians_and_indicates_only_columns_that_had_missing() -> None:
    train = np.array([[1.0, 10.0], [nan, 20.0], [3.0, 30.0], [5.0, 40.0]], dtype=np.float32)
    proc = FillMissing().setups(train)
    np.testing.assert_allclose(proc.medians, [3.0, 25.0])
    assert proc.indicators.tolist() == [0] and proc.n_out == 3
    # Column 1 had no missing training value: at serving time it is filled the same way, no indicator.
    new = np.array([[nan, nan], [7.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(proc.encodes(new), [[3.0, 25.0, 1.0], [7.0, 1.0, 0.0]])
    filled, indicators = proc.module()(torch.from_numpy(new))
    np.testing.assert_allclose(torch.cat([filled, indicators], 1).numpy(), proc.encodes(new))


def test_fill_missing_of_an_all_missing_column_is_zero() -> None:
    proc = FillMissing().setups(np.array([[nan], [nan]], dtype=np.float32))
    assert proc.medians.tolist() == [0.0]


def test_normalize_uses_training_statistics_and_floors_constant_columns() -> None:
    proc = Normalize().setups(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(proc.encodes(np.array([[2.0, 6.0]])), [[0.0, 1.0]])
    np.testing.assert_allclose(proc.module()(torch.tensor([[2.0, 6.0]])).numpy(), [[0.0, 1.0]])


def test_categorify_reserves_missing_and_pools_rare_and_unseen() -> None:
    categories = [["a", "b", "c", "d"]]
    train = np.array([[0], [0], [1], [1], [2], [nan]], dtype=np.float64)  # "d" never in the training rows
    proc = Categorify(categories, min_count=2).setups(train)
    assert proc.vocab == [["a", "b"]] and proc.cardinalities == [4]
    new = np.array([[0], [1], [2], [3], [nan], [99]], dtype=np.float64)  # c rare, d and 99 unseen
    expected = [[2], [3], [OTHER_INDEX], [OTHER_INDEX], [MISSING_INDEX], [OTHER_INDEX]]
    np.testing.assert_array_equal(proc.encodes(new), expected)
    np.testing.assert_array_equal(proc.module()(torch.from_numpy(new).float()).numpy(), expected)
    assert proc.text_index(0) == {"a": 2, "b": 3}
