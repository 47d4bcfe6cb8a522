"""The scikit-learn baselines, fitted the way a careful user would in a few lines.

- `linear`: one-hot (unknown categories ignored) + median imputation with missing indicators + scaling,
  then LogisticRegressionCV (strength chosen by 5-fold log-loss) or RidgeCV (leave-one-out over a grid).
- `hgb`: HistGradientBoosting with native categorical support (ordinal codes, unknown -> missing) and its
  own handling of missing numbers; library defaults otherwise.

Column kinds follow the data as read: a numeric dtype is numeric, anything else categorical — the same
reading the CLI makes with default flags, so both sides see the same columns.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from benchmarks.quality.scoring import Prediction

BASELINES = ("linear", "hgb")
RIDGE_ALPHAS = np.logspace(-3, 4, 15)


def split_kinds(X: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric = [
        c for c in X.columns if pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])
    ]
    return numeric, [c for c in X.columns if c not in numeric]


def _as_text(X: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Categorical columns as object strings with NaN kept (encoders need one type per column)."""
    X = X.copy()
    for c in categorical:
        X[c] = X[c].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    return X


def linear_pipeline(task: str, numeric: list[str], categorical: list[str]) -> Pipeline:
    pre = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                numeric,
            ),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    if task == "classification":
        model = LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=5000)
    else:
        model = RidgeCV(alphas=RIDGE_ALPHAS)
    return Pipeline([("pre", pre), ("model", model)])


def hgb_pipeline(task: str, numeric: list[str], categorical: list[str]) -> Pipeline:
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
    )
    pre = ColumnTransformer([("cat", encoder, categorical), ("num", "passthrough", numeric)])
    mask = [True] * len(categorical) + [False] * len(numeric)
    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    return Pipeline([("pre", pre), ("model", cls(categorical_features=mask, random_state=0))])


def fit_predict(
    kind: str, task: str, X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame
) -> tuple[Prediction, float]:
    """(test predictions, training seconds) of baseline `kind`."""
    numeric, categorical = split_kinds(X_train)
    build = linear_pipeline if kind == "linear" else hgb_pipeline
    pipe = build(task, numeric, categorical)
    X_train, X_test = _as_text(X_train, categorical), _as_text(X_test, categorical)
    started = time.perf_counter()
    # One thread, like `ensemble-train` (--threads 1): OpenMP spinning on a busy 2-core machine made
    # HistGradientBoosting 10x slower, and the training times are compared side by side.
    with warnings.catch_warnings(), threadpool_limits(1):
        # A category seen only in the test rows is expected here: it is what "unknown" handling is for.
        warnings.filterwarnings("ignore", message=".*unknown categories.*")
        # scikit-learn 1.8+ announces LogisticRegressionCV's API changes; the fitted model is the same.
        warnings.filterwarnings("ignore", category=FutureWarning)
        if task == "classification":
            pipe.fit(X_train, y_train.astype(str))
            seconds = time.perf_counter() - started
            proba = pipe.predict_proba(X_test)
            return Prediction(proba=proba, classes=[str(c) for c in pipe.classes_]), seconds
        pipe.fit(X_train, y_train.astype(float))
        seconds = time.perf_counter() - started
        return Prediction(values=np.asarray(pipe.predict(X_test), dtype=np.float64)), seconds
