import numpy as np
import pytest

from server.averaging import average


@pytest.mark.parametrize("shape", [(5, 1, 10), (5, 256, 10), (3, 7, 1), (1, 4, 3), (7, 999, 2)])
def test_average_is_numpys_float64_mean_and_std_bit_for_bit(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    stacked = (rng.standard_normal(shape) * rng.uniform(0.01, 1e4)).astype(np.float32)
    mean = stacked.mean(axis=0, dtype=np.float64)
    out = average(stacked, "classification")
    np.testing.assert_array_equal(out["probabilities"], mean.astype(np.float32))
    std = stacked.std(axis=0, ddof=0, dtype=np.float64)
    np.testing.assert_array_equal(out["spread"], std.astype(np.float32))
    np.testing.assert_array_equal(out["label"], mean.argmax(axis=1))
    assert out["label"].dtype == np.int64 and out["spread"].dtype == np.float32
    reg = average(stacked, "regression")
    np.testing.assert_array_equal(reg["prediction"], mean.astype(np.float32))
