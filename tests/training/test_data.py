from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import DataError, kfold, load_dataset, split, standardization


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "d.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _text(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _table(n: int = 60, classes: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": np.arange(n) % classes})


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.X.shape == (1797, 64) and ds.X.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.task == "classification"
    assert ds.labels == [str(i) for i in range(10)] and ds.feature_shape == (1, 8, 8)
    assert len(ds.feature_names) == 64 and ds.n_outputs == 10


def test_csv_classification_with_string_labels(tmp_path: Path) -> None:
    df = _table()
    df["label"] = df["label"].map({0: "cat", 1: "dog", 2: "eel"})
    ds = load_dataset(_csv(tmp_path, df), target="label")
    assert ds.task == "classification" and ds.labels == ["cat", "dog", "eel"]
    assert ds.feature_names == ["a", "b"] and ds.X.shape == (60, 2)
    assert list(ds.y[:3]) == [0, 1, 2]


def test_integer_target_with_few_values_is_classification_else_regression(tmp_path: Path) -> None:
    df = _table(n=200, classes=4)
    assert load_dataset(_csv(tmp_path, df), target="label").task == "classification"
    df["label"] = np.arange(200)  # 200 distinct integers: a count, not classes
    ds = load_dataset(_csv(tmp_path, df), target="label")
    assert ds.task == "regression" and ds.y.shape == (200, 1) and ds.y.dtype == np.float32
    ds = load_dataset(_csv(tmp_path, _table(n=200, classes=4)), target="label", task="regression")
    assert ds.task == "regression"


def test_parquet_and_multi_target_regression(tmp_path: Path) -> None:
    df = _table()
    df["c"] = df["a"] * 2.5
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    ds = load_dataset(str(path), target="a,c")
    assert ds.task == "regression" and ds.y.shape == (60, 2) and ds.feature_names == ["b", "label"]


def test_npz_images_are_flattened_with_their_shape(tmp_path: Path) -> None:
    path = tmp_path / "img.npz"
    X = np.random.default_rng(0).normal(size=(40, 2, 3, 4))
    np.savez(path, X=X, y=np.arange(40) % 2)
    ds = load_dataset(str(path))
    assert ds.X.shape == (40, 24) and ds.feature_shape == (2, 3, 4)
    np.testing.assert_allclose(ds.X[5], X[5].reshape(-1), rtol=1e-6)
    ds = load_dataset(str(path), input_shape=(4, 6))
    assert ds.feature_shape == (4, 6)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda p: str(p / "nope.csv"), {}, "not found"),
        (lambda p: _text(p, "d.txt", "a,b\n1,2\n"), {}, "unknown data format"),
        (lambda p: _text(p, "e.csv", ""), {"target": "y"}, "empty"),
        (lambda p: _text(p, "h.csv", "a,y\n"), {"target": "y"}, "empty"),
        (lambda p: _csv(p, _table()), {"target": "nope"}, "available columns: a, b, label"),
        (lambda p: _csv(p, _table()), {}, "--target is required"),
        (
            lambda p: _csv(p, _table().assign(s=[f"id-{i}" for i in range(60)])),
            {"target": "label"},
            "column 's' is text with 60 distinct values .*pass --ignore s",
        ),
        (lambda p: _csv(p, _table().assign(label=1)), {"target": "label"}, "single class"),
        (lambda p: _csv(p, _table()), {"target": "label", "input_shape": (5, 5)}, "does not match"),
        (lambda p: _csv(p, _table()), {"target": "label", "task": "weird"}, "unknown task"),
    ],
)
def test_data_errors(tmp_path: Path, make, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(make(tmp_path), **kwargs)


def test_missing_numbers_are_kept_and_inf_names_column_and_row(tmp_path: Path) -> None:
    df = _table()
    df.loc[7, "b"] = np.nan  # a table's missing value: the graph fills it (training.preprocess)
    ds = load_dataset(_csv(tmp_path, df), target="label")
    assert np.isnan(ds.X[7, 1]) and np.isfinite(np.delete(ds.X, 7, axis=0)).all()
    df = _table()
    df.loc[3, "a"] = np.inf
    with pytest.raises(DataError, match="column 'a' has an infinite value at row 3"):
        load_dataset(_csv(tmp_path, df), target="label")


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="needs arrays 'X' and 'y'; it has: features"):
        load_dataset(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="3 rows but y has 4"):
        load_dataset(str(tmp_path / "b.npz"))


def test_split_is_stratified_disjoint_and_seeded() -> None:
    ds = load_dataset("digits")
    train, val, test = split(ds, 0.15, 0.15, seed=3)
    assert len(set(train) | set(val) | set(test)) == len(ds) == len(train) + len(val) + len(test)
    for part in (train, val, test):
        share = np.bincount(ds.y[part], minlength=10) / len(part)
        np.testing.assert_allclose(share, np.bincount(ds.y) / len(ds), atol=0.02)
    again = split(ds, 0.15, 0.15, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(split(ds, seed=4)[0], train)


def test_class_too_small_for_split_or_folds(tmp_path: Path) -> None:
    df = _table(n=60)
    df.loc[0, "label"] = 9  # class "9" has one row
    ds = load_dataset(_csv(tmp_path, df), target="label", task="classification")
    with pytest.raises(DataError, match="class '9' has 1 rows"):
        split(ds)
    ds = load_dataset(_csv(tmp_path, _table(n=60)), target="label", task="classification")  # 20 per class
    with pytest.raises(DataError, match="25-fold cross-validation needs at least 25 rows of each class"):
        kfold(ds, np.arange(60), 25)


def test_kfold_covers_the_rows_once_each_and_is_stratified() -> None:
    ds = load_dataset("digits")
    idx = np.arange(0, 1797, 2)
    folds = kfold(ds, idx, 5, seed=0)
    assert len(folds) == 5
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals) == sorted(idx)
    for tr, va in folds:
        assert not set(tr) & set(va) and set(tr) | set(va) == set(idx)
        assert np.bincount(ds.y[va], minlength=10).min() >= 15


def test_standardization_uses_only_the_rows_given_and_floors_constant_features() -> None:
    X = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0], [100.0, 5.0, 1e6]], dtype=np.float32)
    mean, std = standardization(X[:2])
    np.testing.assert_allclose(mean, [2.0, 5.0, 0.0])
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0])  # constant columns get std 1
    assert mean.dtype == std.dtype == np.float32


def test_values_finite_in_float64_but_not_float32_are_refused(tmp_path: Path) -> None:
    df = _table()
    df.loc[5, "a"] = 1e39
    with pytest.raises(DataError, match=r"column 'a' has a value \(1e\+39\) too large for float32 at row 5"):
        load_dataset(_csv(tmp_path, df), target="label")
    df = _table()
    df["t"] = np.linspace(0.0, 1.0, len(df))
    df.loc[9, "t"] = -1e39
    with pytest.raises(DataError, match=r"column 't' has a value \(-1e\+39\) too large for float32 at row 9"):
        load_dataset(_csv(tmp_path, df, "r.csv"), target="t", task="regression")
    with pytest.raises(DataError, match=r"column 't' has a value .* too large for float32 at row 9"):
        load_dataset(_csv(tmp_path, df, "m.csv"), target="t,label")


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((4, 2)), np.array(3.0), r"y must be 1-D .* got shape \(\)"),
        (np.zeros((4, 2)), np.zeros((4, 0)), r"y must be 1-D .* got shape \(4, 0\)"),
        (np.zeros((4, 2)), np.zeros((4, 2, 2)), r"y must be 1-D .* got shape \(4, 2, 2\)"),
        (np.zeros((4, 0)), np.arange(4.0), r"X has no features: shape \(4, 0\)"),
        (np.zeros((4, 1, 0)), np.arange(4.0), r"X has no features: shape \(4, 1, 0\)"),
        (np.array(1.0), np.arange(4.0), "got a 0-d array"),
    ],
)
def test_npz_degenerate_shapes_are_data_errors(
    tmp_path: Path, X: np.ndarray, y: np.ndarray, message: str
) -> None:
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "d.npz"))
