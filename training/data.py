"""Datasets: load (bundled digits, CSV, Parquet, NPZ), validate, split, fold, standardization statistics.

Every problem with the user's data is a `DataError` with one clear sentence; the CLI prints it and exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Task detection: an integer target with at most this many distinct values (and fewer than
# CLASS_FRACTION of the rows) is a class index; anything else numeric is a regression target.
MAX_CLASSES_AUTO = 20
CLASS_FRACTION = 0.05
STD_FLOOR = 1e-6


class DataError(Exception):
    """The data cannot be used as given (the message says why, in one sentence)."""


@dataclass(frozen=True)
class ColumnOverrides:
    """The user's word on column kinds (`--categorical`, `--numeric`, `--ignore`): it beats detection."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Column:
    """How one table column was understood, and what training does with it."""

    name: str
    kind: str  # numeric | categorical | ignored | refused
    n_missing: int
    n_distinct: int
    reason: str  # why this kind (detected, or the user's flag)
    categories: tuple[str, ...] = ()  # categorical: every distinct value as text, sorted
    top: tuple[tuple[str, int], ...] = ()  # the most frequent values and their counts
    extra: dict[str, float] = field(default_factory=dict)  # numeric: min, median, max


@dataclass
class Dataset:
    X: np.ndarray  # float32 [N, F]
    y: np.ndarray  # int64 [N] class indices, or float32 [N, T] regression targets
    task: str  # "classification" | "regression"
    labels: list[str] | None
    feature_names: list[str]
    feature_shape: tuple[int, ...] | None
    name: str
    # Tables (CSV/Parquet): how every non-target column was understood, ignored ones included. X holds the
    # used ones in order: numbers (NaN = missing) and, for categorical columns, float codes indexing
    # `Column.categories` (NaN = missing). The codes are lossless names for strings, not a learned encoding:
    # every member learns its own vocabulary from its training rows (training.preprocess).
    columns: list[Column] | None = None
    dropped_rows: int = 0  # rows dropped because the target was missing

    @property
    def is_table(self) -> bool:
        return self.columns is not None

    @property
    def feature_columns(self) -> list[Column]:
        return [c for c in self.columns or [] if c.kind != "ignored"]

    @property
    def categorical(self) -> bool:
        return any(c.kind == "categorical" for c in self.feature_columns)

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.labels is not None else int(self.y.shape[1])

    def __len__(self) -> int:
        return int(self.X.shape[0])


def load_dataset(
    source: str,
    target: str | None = None,
    task: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    kinds: ColumnOverrides | None = None,
) -> Dataset:
    """Load `source` (`digits` or a .csv/.parquet/.npz path) as a validated `Dataset`.

    `kinds` overrides the detected kind of named table columns (`--categorical`, `--numeric`, `--ignore`).
    """
    if task not in (None, "classification", "regression"):
        raise DataError(f"unknown task {task!r}: use classification or regression")
    if source == "digits":
        ds = _digits()
        if task == "regression":
            raise DataError("the digits dataset is a classification task")
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"data file not found: {source} (use 'digits' or a .csv, .parquet or .npz file)")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            ds = _table(path, _read_csv(path), target, task, kinds)
        elif suffix in (".parquet", ".pq"):
            ds = _table(path, _read_parquet(path), target, task, kinds)
        elif suffix == ".npz":
            ds = _npz(path, task)
        else:
            raise DataError(
                f"unknown data format {suffix or '(none)'!r} for {source}: use .csv, .parquet or .npz"
            )
    if input_shape is not None:
        if ds.categorical:
            raise DataError("--input-shape needs numeric columns only; this table has categorical columns")
        if int(np.prod(input_shape)) != ds.X.shape[1] or any(d < 1 for d in input_shape):
            raise DataError(
                f"--input-shape {','.join(map(str, input_shape))} does not match the {ds.X.shape[1]} features"
            )
        ds.feature_shape = tuple(int(d) for d in input_shape)
    return ds


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Dataset(
        X=d.data.astype(np.float32),
        y=d.target.astype(np.int64),
        task="classification",
        labels=[str(c) for c in range(10)],
        feature_names=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
        feature_shape=(1, 8, 8),
        name="digits",
    )


def _read_csv(path: Path):  # -> pd.DataFrame
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable CSV file: {str(e).splitlines()[0]}") from None
    return df


def _read_parquet(path: Path):  # -> pd.DataFrame
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable Parquet file: {str(e).splitlines()[0]}") from None


def _table(path: Path, df, target: str | None, task: str | None, kinds: ColumnOverrides | None) -> Dataset:
    """A CSV/Parquet table: column kinds, features (categories as codes into each column's values), target."""
    from training.columns import detect_columns, encode_features, raise_refused, target_values

    targets, df = _targets(path, df, target)
    columns = detect_columns(df, targets, kinds or ColumnOverrides())
    raise_refused(columns)
    y_frame, keep = target_values(df, targets)
    dropped = int((~keep).sum())
    if not keep.any():
        raise DataError(f"every row of {path.name} is missing the target")
    df, y_frame = df[keep].reset_index(drop=True), y_frame[keep].reset_index(drop=True)
    used = [c for c in columns if c.kind != "ignored"]
    if not used:
        raise DataError(f"{path.name} has no feature columns to use (all are ignored)")
    X = encode_features(df, used)
    _check_finite(X, [c.name for c in used], allow_missing=True)
    if len(targets) > 1:
        if task == "classification":
            raise DataError("classification takes one target column")
        for t in targets:
            if not pd_is_numeric(y_frame[t]):
                raise DataError(f"regression target column {t!r} is not numeric")
        y_values = y_frame.to_numpy(dtype=np.float64)
        _check_finite(y_values, targets)
        ds = _finish(X, y_values, "regression", None, [c.name for c in used], None, path.stem)
    else:
        ds = _with_target(
            X, _target_array(y_frame[targets[0]]), task, [c.name for c in used], None, path.stem, targets[0]
        )
    ds.columns = columns
    ds.dropped_rows = dropped
    return ds


def _targets(path: Path, df, target: str | None):  # -> (list[str], pd.DataFrame)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DataError(f"{path} is empty (no data rows)")
    df.columns = [str(c) for c in df.columns]
    columns = list(df.columns)
    if target is None:
        raise DataError(f"--target is required for {path.name}; columns: {', '.join(columns)}")
    targets = [t.strip() for t in target.split(",")]
    for t in targets:
        if t not in columns:
            raise DataError(f"target column {t!r} not found; available columns: {', '.join(columns)}")
    if len(columns) == len(targets):
        raise DataError(f"{path.name} has no feature columns besides the target")
    return targets, df


def pd_is_numeric(series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _target_array(series) -> np.ndarray:
    """Target values as numpy; a float column whose values are all whole numbers (ints with missing rows,
    which pandas reads as float) becomes int64 again, so task detection sees class codes."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy().astype(str)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        if (
            np.all(np.isfinite(values))
            and np.all(values == np.round(values))
            and np.abs(values).max() < 2**53
        ):
            return values.astype(np.int64)
        return values
    return series.astype(str).to_numpy()


def read_table(source: str):  # -> pd.DataFrame
    """A CSV or Parquet file as a DataFrame (raises DataError), for `inspect` and the loader."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file not found: {source} (use a .csv or .parquet file)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise DataError(f"unknown table format {suffix or '(none)'!r} for {source}: use .csv or .parquet")


def _npz(path: Path, task: str | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{path} is not a readable .npz file: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path.name} needs arrays 'X' and 'y'; it has: {', '.join(arrays) or 'none'}")
    X, y = arrays["X"], arrays["y"]
    if X.ndim == 0:
        raise DataError("X must be N x F, N x C x L or N x C x H x W; got a 0-d array (a single value)")
    if y.ndim == 0 or y.ndim > 2 or (y.ndim == 2 and y.shape[1] == 0):
        raise DataError(f"y must be 1-D (N targets) or N x T with T >= 1 (multi-target); got shape {y.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{path} is empty (no rows)")
    if X.ndim < 2 or X.ndim > 4:
        raise DataError(f"X must be N x F, N x C x L or N x C x H x W; got shape {X.shape}")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    if any(d == 0 for d in X.shape[1:]):
        raise DataError(f"X has no features: shape {X.shape} (every row needs at least one value)")
    if not np.issubdtype(X.dtype, np.number) and X.dtype != np.bool_:
        raise DataError(f"X must be numeric; got dtype {X.dtype}")
    feature_shape = tuple(int(d) for d in X.shape[1:]) if X.ndim > 2 else None
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    names = [f"x{i}" for i in range(X.shape[1])]
    _check_finite(X, names)
    if y.ndim == 2 and y.shape[1] > 1:
        if task == "classification" or not np.issubdtype(y.dtype, np.number):
            raise DataError("a 2-D y is a numeric multi-target regression; classification needs a 1-D y")
        _check_finite(y.astype(np.float64), [f"y{i}" for i in range(y.shape[1])])
        return _finish(X, y.astype(np.float64), "regression", None, names, feature_shape, path.stem)
    return _with_target(X, y.reshape(-1), task, names, feature_shape, path.stem, "y")


def _with_target(
    X: np.ndarray,
    y: np.ndarray,
    task: str | None,
    names: list[str],
    feature_shape: tuple[int, ...] | None,
    name: str,
    target_name: str,
) -> Dataset:
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_
    if task is None:
        task = _detect_task(y)
    if task == "regression":
        if not numeric:
            raise DataError(f"target {target_name!r} is not numeric, so it cannot be a regression target")
        yf = y.astype(np.float64).reshape(-1, 1)
        _check_finite(yf, [target_name])
        return _finish(X, yf, "regression", None, names, feature_shape, name)
    if numeric:
        _check_finite(y.astype(np.float64).reshape(-1, 1), [target_name])
    classes, y_idx = np.unique(y.astype(str) if not numeric else y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"target {target_name!r} has a single class ({classes[0]}); classification needs two")
    labels = [_label(c) for c in classes]
    return _finish(X, y_idx.astype(np.int64), "classification", labels, names, feature_shape, name)


def _label(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _detect_task(y: np.ndarray) -> str:
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        return "classification"
    if np.issubdtype(y.dtype, np.integer):
        n_distinct = len(np.unique(y))
        if n_distinct <= MAX_CLASSES_AUTO and n_distinct < CLASS_FRACTION * len(y):
            return "classification"
    return "regression"


def _check_finite(values: np.ndarray, names: list[str], allow_missing: bool = False) -> None:
    """Every value must be finite as it will be used: float32 (1e39 is finite in float64, inf in float32).

    `allow_missing`: NaN marks a missing value in a table (the graph fills it), so only inf is refused.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        as_used = np.asarray(values).astype(np.float32)
    bad = ~np.isfinite(as_used)
    if allow_missing:
        bad &= ~np.isnan(np.asarray(values, dtype=np.float64))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        original = float(np.asarray(values, dtype=np.float64)[row, col])
        if np.isnan(original):
            kind = "a missing (NaN) value"
        elif np.isinf(original):
            kind = "an infinite value"
        else:
            kind = f"a value ({original:g}) too large for float32"
        raise DataError(f"column {names[col]!r} has {kind} at row {row} (0-based data row)")


def _finish(
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    labels: list[str] | None,
    names: list[str],
    feature_shape: tuple[int, ...] | None,
    name: str,
) -> Dataset:
    y = y.astype(np.int64) if task == "classification" else y.astype(np.float32)
    return Dataset(X.astype(np.float32), y, task, labels, names, feature_shape, name)


def _check_class_counts(ds: Dataset, idx: np.ndarray, needed: int, purpose: str) -> None:
    if ds.task != "classification":
        if len(idx) < needed:
            raise DataError(f"{len(idx)} rows are too few for {purpose} (need at least {needed})")
        return
    counts = np.bincount(ds.y[idx], minlength=ds.n_outputs)
    assert ds.labels is not None
    for c, n in enumerate(counts):
        if n < needed:
            raise DataError(
                f"class {ds.labels[c]!r} has {n} rows; {purpose} needs at least {needed} rows of each class"
            )


def split(
    ds: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle the rows into train/val/test index arrays (stratified by class for classification)."""
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    idx = np.arange(len(ds))
    needed = 3 if test_fraction > 0 else 2
    _check_class_counts(ds, idx, needed, "a train/validation/test split")
    strat = ds.y if ds.task == "classification" else None
    try:
        if test_fraction > 0:
            rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
        else:
            rest, test = idx, idx[:0]
        strat_rest = ds.y[rest] if strat is not None else None
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=strat_rest
        )
    except ValueError as e:  # e.g. a test split smaller than the number of classes
        raise DataError(f"cannot split {len(ds)} rows this way: {e}") from None
    return np.sort(train), np.sort(val), np.sort(test)


def kfold(ds: Dataset, idx: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`k` (train, val) index pairs over the rows `idx` (stratified by class for classification)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    idx = np.asarray(idx)
    _check_class_counts(ds, idx, k, f"{k}-fold cross-validation")
    if ds.task == "classification":
        folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, ds.y[idx])
    else:
        folds = KFold(k, shuffle=True, random_state=seed).split(idx)
    return [(np.sort(idx[a]), np.sort(idx[b])) for a, b in folds]


def standardization(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training rows; a constant feature gets std 1 (it is only centred)."""
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)
