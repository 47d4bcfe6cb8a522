import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

from server.averaging import average
from training.ensemble_predict import (
    average_predictions,
    classification_metrics,
    ensemble_metrics,
    regression_metrics,
)


def test_classification_mean_spread_and_label() -> None:
    a = np.array([[0.6, 0.4], [0.1, 0.9]], dtype=np.float32)
    b = np.array([[0.2, 0.8], [0.3, 0.7]], dtype=np.float32)
    out = average_predictions([a, b], "classification")
    assert set(out) == {"probabilities", "label", "spread"}
    np.testing.assert_allclose(out["probabilities"], [[0.4, 0.6], [0.2, 0.8]], atol=1e-7)
    np.testing.assert_allclose(out["spread"], [[0.2, 0.2], [0.1, 0.1]], atol=1e-7)  # ddof=0
    assert out["label"].tolist() == [1, 1] and out["label"].dtype == np.int64
    assert out["probabilities"].dtype == np.float32 and out["spread"].dtype == np.float32


def test_the_server_rule_is_reproduced_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    outs = [rng.random((50, 4)).astype(np.float32) for _ in range(5)]
    stacked = np.stack(outs)
    out = average_predictions(outs, "regression")
    served = average(stacked, "regression")  # what server.ensemble answers
    assert np.array_equal(out["prediction"], served["prediction"])
    assert np.array_equal(out["spread"], served["spread"])
    # float64 accumulation, rounded to float32 once (server.averaging)
    assert np.array_equal(out["prediction"], stacked.mean(axis=0, dtype=np.float64).astype(np.float32))
    assert np.array_equal(
        average_predictions(outs[:1], "regression")["spread"], np.zeros((50, 4), np.float32)
    )


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        average_predictions([], "classification")
    with pytest.raises(ValueError, match="2-D"):
        average_predictions([np.zeros(3)], "regression")
    with pytest.raises(ValueError, match="unknown task"):
        average_predictions([np.zeros((2, 3))], "ranking")  # type: ignore[arg-type]


def test_classification_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 3, size=40)
    got = classification_metrics(y, p)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert got["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-6)


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=(30, 2)) * [1.0, 100.0]
    pred = y + rng.normal(size=(30, 2))
    got = regression_metrics(y, pred)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert got["r2"] == pytest.approx(r2_score(y, pred))
    one = regression_metrics(y[:, 0], pred[:, :1])  # a 1-D target against a [N, 1] prediction
    assert one["r2"] == pytest.approx(r2_score(y[:, 0], pred[:, 0]))


def test_ensemble_metrics_score_the_average_not_the_members() -> None:
    y = np.array([0, 1])
    # Each member gets one row wrong; their average gets both right.
    a = np.array([[0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    b = np.array([[0.4, 0.6], [0.1, 0.9]], dtype=np.float32)
    assert classification_metrics(y, a)["accuracy"] == 0.5
    assert ensemble_metrics([a, b], y, "classification")["accuracy"] == 1.0
    reg = ensemble_metrics(
        [np.array([[1.0], [3.0]]), np.array([[3.0], [5.0]])], np.array([2.0, 4.0]), "regression"
    )
    assert reg == {"rmse": 0.0, "r2": 1.0}
