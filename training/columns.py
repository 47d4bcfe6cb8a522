"""Column kinds of a table: numeric, categorical or ignored, detected from the values or set by the user.

Rules (the user's `--categorical` / `--numeric` / `--ignore` always win):
- numbers are numeric, integers included: an integer column with few values may be a code or a count,
  and only the user knows which, so it becomes categorical only with `--categorical`;
- text and booleans are categorical;
- text that is almost all distinct (names, IDs, free text) is refused rather than turned into a
  vocabulary as large as the table: the message suggests `--ignore` (or `--categorical` to insist);
- a column with no value at all is ignored.
Missing values are whatever pandas reads as missing (empty cells, NA, NaN, null, None, ...), in CSV and
Parquet alike: text cells holding those words count as missing too (`MISSING_TEXT`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from server.protocol.columns import category_text
from training.data import Column, ColumnOverrides, DataError

# What pandas' CSV reader takes as missing by default; Parquet text cells are held to the same words.
MISSING_TEXT: tuple[str, ...] = tuple(
    sorted(
        {
            "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
            "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
        }
    )
)  # fmt: skip
# Text with more distinct values than this share of its present rows (and more than ID_MIN_DISTINCT) is
# ID-like: a category seen once teaches nothing and makes the vocabulary as large as the table.
ID_DISTINCT_FRACTION = 0.5
ID_MIN_DISTINCT = 20
TOP_CATEGORIES = 5


def _as_text(series: pd.Series) -> pd.Series:
    """Values as the user wrote them (3.0 -> "3", True -> "True"), missing words -> NaN."""

    def text(v: object) -> object:
        # The server reads a category sent to it with the same function (server.protocol.columns).
        s = None if v is pd.NA else category_text(v)
        return np.nan if s is None or s in MISSING_TEXT else s

    return series.map(text).astype(object)


def _numbers(series: pd.Series, name: str, forced: bool) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float64)
    if pd.api.types.is_numeric_dtype(series):
        return series.astype(np.float64)
    text = _as_text(series)
    values = pd.to_numeric(text, errors="coerce")
    bad = text.notna() & values.isna()
    if bad.any() and forced:
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"--numeric column {name!r} holds text ({text.iloc[row]!r} at row {row})")
    return values.astype(np.float64)


def _unknown(names: Sequence[str], columns: Sequence[str], flag: str) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError(f"{flag} names unknown column {missing[0]!r}; columns: {', '.join(columns)}")


def detect_columns(df: pd.DataFrame, targets: Sequence[str], kinds: ColumnOverrides) -> list[Column]:
    """How every non-target column is understood (kind 'refused' for ID-like text; see raise_refused)."""
    features = [c for c in df.columns if c not in targets]
    for names, flag in (
        (kinds.categorical, "--categorical"),
        (kinds.numeric, "--numeric"),
        (kinds.ignore, "--ignore"),
    ):
        _unknown(names, features, flag)
    flagged = [*kinds.categorical, *kinds.numeric, *kinds.ignore]
    twice = sorted({n for n in flagged if flagged.count(n) > 1})
    if twice:
        raise DataError(f"column {twice[0]!r} is given more than one kind (--categorical/--numeric/--ignore)")
    return [_column(df[c], c, kinds) for c in features]


def _column(series: pd.Series, name: str, kinds: ColumnOverrides) -> Column:
    text = _as_text(series)
    n_missing = int(text.isna().sum())
    present = text.dropna()
    counts = present.value_counts()
    n_distinct = len(counts)
    top = tuple((str(k), int(v)) for k, v in counts.head(TOP_CATEGORIES).items())
    if name in kinds.ignore:
        return Column(name, "ignored", n_missing, n_distinct, "--ignore", top=top)
    if n_distinct == 0:
        return Column(name, "ignored", n_missing, 0, "every value is missing")
    numeric_dtype = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if name in kinds.numeric or (numeric_dtype and name not in kinds.categorical):
        values = _numbers(series, name, forced=name in kinds.numeric)
        n_missing = int(values.isna().sum())
        v = values.dropna()
        extra = {"min": float(v.min()), "median": float(v.median()), "max": float(v.max())} if len(v) else {}
        reason = "--numeric" if name in kinds.numeric else "numbers"
        return Column(name, "numeric", n_missing, n_distinct, reason, extra=extra)
    categories = tuple(sorted(str(k) for k in counts.index))
    if name in kinds.categorical:
        return Column(name, "categorical", n_missing, n_distinct, "--categorical", categories, top)
    if pd.api.types.is_bool_dtype(series) or set(categories) <= {"True", "False"}:
        return Column(name, "categorical", n_missing, n_distinct, "booleans", categories, top)
    if n_distinct > max(ID_MIN_DISTINCT, ID_DISTINCT_FRACTION * len(present)):
        return Column(
            name, "refused", n_missing, n_distinct, "almost all distinct text (an ID or a name?)", top=top
        )
    return Column(name, "categorical", n_missing, n_distinct, "text", categories, top)


def raise_refused(columns: Sequence[Column]) -> None:
    for c in columns:
        if c.kind == "refused":
            raise DataError(
                f"column {c.name!r} is text with {c.n_distinct} distinct values (an ID or a name?): "
                f"pass --ignore {c.name} (or --categorical {c.name} to use it anyway)"
            )


def encode_features(df: pd.DataFrame, used: Sequence[Column]) -> np.ndarray:
    """[N, F] float64: numbers (NaN = missing); categories as their index in `Column.categories`."""
    out = np.empty((len(df), len(used)), dtype=np.float64)
    for j, c in enumerate(used):
        if c.kind == "numeric":
            out[:, j] = _numbers(df[c.name], c.name, forced=True).to_numpy()
        else:
            index = {v: i for i, v in enumerate(c.categories)}
            out[:, j] = [index.get(v, np.nan) for v in _as_text(df[c.name])]
    return out


def target_values(df: pd.DataFrame, targets: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The target columns with missing words as NaN, and which rows have every target present."""
    frame = pd.DataFrame(index=df.index)
    for t in targets:
        col = df[t]
        frame[t] = col if pd.api.types.is_numeric_dtype(col) else _as_text(col)
    keep = frame.notna().all(axis=1).to_numpy()
    return frame, keep


def categories_as_text(codes: np.ndarray, column: Column) -> np.ndarray:
    """Codes (float, NaN = missing) back to the text; missing -> "" (the graph reads it as missing)."""
    names = np.asarray([*column.categories, ""], dtype=object)
    idx = np.where(np.isnan(codes), len(column.categories), np.nan_to_num(codes, nan=0)).astype(np.int64)
    return names[idx]


def columns_table(columns: Sequence[Column], dropped_rows: int = 0, target: str = "") -> str:
    """Markdown table of how every column was understood (printed by `inspect`, kept in the report)."""
    rows = [
        "| column | kind | missing | distinct | top values / range | what is done | why |",
        "|" + "---|" * 7,
    ]
    for c in columns:
        if c.kind == "numeric":
            seen = ", ".join(f"{k} {v:g}" for k, v in c.extra.items())
            done = "median fill + missing indicator, standardized" if c.n_missing else "standardized"
        else:
            seen = ", ".join(f"{k} ({n})" for k, n in c.top)
            done = {
                "categorical": "vocabulary (rare values pooled) + embedding",
                "ignored": "ignored",
                "refused": "refused: pass --ignore or --categorical",
            }[c.kind]
        rows.append(
            f"| {c.name} | {c.kind} | {c.n_missing} | {c.n_distinct} | {seen} | {done} | {c.reason} |"
        )
    if target:
        rows.append(f"\nTarget: {target}; rows dropped for a missing target: {dropped_rows}")
    return "\n".join(rows) + "\n"
