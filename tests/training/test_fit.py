from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import Dataset, load_dataset, split
from training.fit import FitConfig, TrainingDiverged, batches, check_converged, evaluate, fit
from training.lr_finder import lr_find, write_lr_find


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, np.ndarray, np.ndarray, np.ndarray]:
    ds = load_dataset("digits")
    return (ds, *split(ds, seed=0))


def _small(**kw: object) -> FitConfig:
    base = {"epochs": 4, "width": 32, "batch_size": 64, "dropout": 0.1, "device": "cpu"}
    base.update(kw)
    return FitConfig(**base)  # type: ignore[arg-type]


def test_fit_learns_digits_and_returns_best_model_in_eval_mode(digits) -> None:
    ds, train, val, test = digits
    rows: list[tuple[int, dict]] = []
    result = fit(ds, train, val, _small(), progress=False, epoch_callback=lambda e, r: rows.append((e, r)))
    assert [e for e, _ in rows] == [1, 2, 3, 4] and len(result.history) == 4
    assert set(result.history[0]) == {"epoch", "lr", "train_loss", "val_loss", "train_metric", "val_metric"}
    assert not result.model.training
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_epoch == best["epoch"] and result.best_val_loss == best["val_loss"]
    assert evaluate(result.model, ds, val)["loss"] == pytest.approx(result.best_val_loss, rel=1e-5)
    metrics = evaluate(result.model, ds, test)
    assert set(metrics) == {"accuracy", "log_loss", "loss"} and metrics["accuracy"] > 0.85
    ckpt = result.checkpoint()
    assert set(ckpt) == {"model", "config", "best_epoch", "best_val_loss", "history"}
    assert ckpt["config"]["epochs"] == 4


def test_same_seed_same_metrics_other_seed_differs(digits) -> None:
    ds, train, val, _ = digits
    a = fit(ds, train, val, _small(seed=7, epochs=2), progress=False).history
    b = fit(ds, train, val, _small(seed=7, epochs=2), progress=False).history
    c = fit(ds, train, val, _small(seed=8, epochs=2), progress=False).history
    assert a == b
    assert a != c


def test_epoch_callback_can_prune_by_raising(digits) -> None:
    ds, train, val, _ = digits

    class Pruned(Exception):
        pass

    def prune(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        fit(ds, train, val, _small(epochs=5), progress=False, epoch_callback=prune)


def test_early_stopping_stops_after_patience(digits) -> None:
    ds, train, val, _ = digits
    # A constant rate this large makes the validation loss jump about, so patience 1 ends the run early.
    result = fit(ds, train, val, _small(epochs=30, patience=1, lr=3.0, schedule="constant"), progress=False)
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["plateau", "restarts", "cyclic", "step"])
def test_optimizers_and_schedules_run(digits, optimizer: str, schedule: str) -> None:
    ds, train, val, _ = digits
    result = fit(
        ds,
        train[:300],
        val,
        _small(epochs=2, optimizer=optimizer, schedule=schedule, weight_decay=1e-4),
        progress=False,
    )
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_batches_never_leave_a_single_row_for_batchnorm() -> None:
    parts = list(batches(129, 64, torch.Generator().manual_seed(0)))
    assert [len(p) for p in parts] == [64, 65]
    assert sorted(torch.cat(parts).tolist()) == list(range(129))


def test_regression_fit_reports_target_units() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (1000 + 50 * X[:, :1] - 20 * X[:, 1:2]).astype(np.float32)
    ds = Dataset(X, y, "regression", None, ["a", "b", "c"], None, "synthetic")
    train, val, test = split(ds, seed=0)
    result = fit(ds, train, val, _small(epochs=30, dropout=0.0, lr=1e-2), progress=False)
    metrics = evaluate(result.model, ds, test)
    assert set(metrics) == {"rmse", "r2", "loss"}
    assert metrics["r2"] > 0.9 and metrics["rmse"] < 0.3 * float(y.std())


def test_standardization_comes_from_training_rows_only(digits) -> None:
    ds, train, val, _ = digits
    result = fit(ds, train, val, _small(epochs=1), progress=False)
    std_layer = result.model.standardize
    np.testing.assert_allclose(std_layer.mean.numpy(), ds.X[train].mean(axis=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(std_layer.mean.numpy(), ds.X.mean(axis=0), atol=1e-4)


def test_lr_find_restores_nothing_leaks_and_writes_files(digits, tmp_path: Path) -> None:
    ds, train, val, _ = digits
    result = lr_find(ds, train, val, _small(), num_steps=60)
    assert 20 < len(result.lrs) <= 60 and result.lrs[0] == pytest.approx(1e-7)
    assert 1e-6 < result.suggestion < 10 and set(result.suggestions) == {
        "valley",
        "steepest",
        "minimum_div10",
    }
    assert result.val_steps and max(result.val_metric) > 0.5  # validation accuracy rises before divergence
    write_lr_find(result, tmp_path)
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    header = (tmp_path / "lr_find.csv").read_text().splitlines()[0]
    assert header == "step,lr,loss,smoothed_loss,val_accuracy"


def test_a_diverged_run_is_a_clear_error_not_nan_metrics(digits) -> None:
    ds, train, val, _ = digits
    config = _small(epochs=2, lr=1e8, schedule="constant", optimizer="sgd")
    with pytest.raises(TrainingDiverged, match=r"training diverged .*lower the learning rate"):
        fit(ds, train, val, config, progress=False)


def test_check_converged_catches_nan_weights_with_a_finite_loss() -> None:
    model = torch.nn.Linear(2, 1)
    check_converged(model, 0.5)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite"):
        check_converged(model, 0.5)


def test_cli_diverged_fit_and_ensemble_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    bad = ["--data", "digits", "--epochs", "1", "--lr", "1e8", "--schedule", "constant", "--optimizer", "sgd"]
    assert main(["fit", *bad, "--quiet", "--out", str(tmp_path / "fit")]) == 2
    assert "training diverged" in capsys.readouterr().err
    repo = tmp_path / "repo"
    argv = ["ensemble", *bad, "--members", "2", "--quiet", "--repository", str(repo), "--name", "d"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training diverged") and "\n" not in err
    assert not (tmp_path / "fit" / "metrics.json").exists() and not (repo / "d").exists()


def test_multi_target_r2_is_the_mean_of_per_target_r2() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    n = 40
    # Two targets with very different variances: a variance-weighted R2 would be dominated by the second.
    y = np.stack([rng.normal(size=n), 100 * rng.normal(size=n)], axis=1).astype(np.float32)
    ds = Dataset(
        rng.normal(size=(n, 3)).astype(np.float32), y, "regression", None, ["a", "b", "c"], None, "t"
    )
    pred = np.stack([np.zeros(n), y[:, 1] + rng.normal(size=n)], axis=1).astype(np.float32)

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(pred[: x.shape[0]]) + 0 * self.p

    metrics = evaluate(Fixed(), ds, np.arange(n))
    assert metrics["r2"] == pytest.approx(r2_score(y, pred), rel=1e-5)
    assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))), rel=1e-5)
