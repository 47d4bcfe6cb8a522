"""One table column's values, as a client sends them, in the form the model's graph takes.

A table model (``manifest.is_table``) takes one ``[N, 1]`` input per column: text for a categorical column,
float32 for a numeric one (NaN = missing). Clients send JSON values (V1 records and columns, V2 JSON data)
or V2 tensors (BYTES as bytes, numbers as numbers), so these functions read any of them the way training
read the table (``training.columns`` imports :func:`category_text`, so the two cannot drift apart):

- a category is its text, stripped (the graph does not trim); a number is written as the user would
  (``3`` and ``3.0`` -> ``"3"``, ``2.5`` -> ``"2.5"``), a boolean as ``"True"`` / ``"False"``;
- missing is ``null`` (or NaN): ``""`` for a category, which the graph maps to its "missing" index like
  the words in ``TablePreprocessing.missing_text``; NaN for a number.

Text in a numeric column is a 400 naming the column and the row, except the missing words ("NA", ...),
which training read as missing too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from server.protocol.tensors import ProtocolError


def category_text(value: Any) -> str | None:
    """A value of a categorical column as training wrote it; None for a missing value (null, NaN)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")  # UnicodeDecodeError: the caller names the column and row
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


def category_texts(values: Sequence[Any], who: str) -> np.ndarray:
    """Values -> an object array of text ("" = missing); `who` names the column in messages."""
    out = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
        try:
            text = category_text(value)
        except UnicodeDecodeError:
            raise ProtocolError(f"{who}, row {row}: the text is not valid UTF-8.") from None
        if isinstance(value, dict | list):
            raise ProtocolError(f"{who}, row {row}: a category must be text, a number or null.")
        out[row] = "" if text is None else text
    return out


def column_numbers(values: Sequence[Any], who: str, missing_text: Collection[str]) -> np.ndarray:
    """JSON values of a numeric column -> float64 (NaN for null, NaN and the missing words); text,
    booleans and anything else are a 400 naming `who` and the row."""
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        kind = type(value)
        if kind is float or kind is int:
            out[row] = value
        elif value is None:
            out[row] = np.nan
        else:
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(f"{who}, row {row}: the text is not valid UTF-8.") from None
            if isinstance(value, str) and value.strip() in missing_text:
                out[row] = np.nan
                continue
            if isinstance(value, np.floating | np.integer) and not isinstance(value, bool):
                out[row] = value
                continue
            shown = repr(value)[:40]
            raise ProtocolError(f"{who} is numeric, but row {row} holds {shown}; send a number or null.")
    return out
