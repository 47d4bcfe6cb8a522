"""server.protocol.columns: a value sent for a column is read the way training read the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from server.protocol.columns import category_text, category_texts, column_numbers
from server.protocol.tensors import ProtocolError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("Biscoe", "Biscoe"),
        (" Dream ", "Dream"),
        (3, "3"),
        (3.0, "3"),
        (2.5, "2.5"),
        (np.float64(4.0), "4"),
        (np.int64(7), "7"),
        (True, "True"),
        (False, "False"),
        (b"Torgersen", "Torgersen"),
        (None, None),
        (float("nan"), None),
    ],
)
def test_category_text_is_what_training_writes(value: object, text: str | None) -> None:
    assert category_text(value) == text


def test_training_reads_a_column_with_the_same_function() -> None:
    from training.columns import _as_text  # the training side of the contract

    values = ["Biscoe", " Dream ", 3, 3.0, 2.5, True, None, float("nan"), "NA", ""]
    read = _as_text(pd.Series(values, dtype=object)).tolist()
    served = [category_text(v) for v in values]
    for r, s in zip(read, served, strict=True):
        if isinstance(r, float):  # training's missing (NaN): the server's None, or a missing word
            assert s in (None, "NA", "")
        else:
            assert r == s


def test_category_texts_mark_missing_as_empty_and_refuse_objects() -> None:
    assert category_texts([None, "a", 1], "Column 'c'").tolist() == ["", "a", "1"]
    with pytest.raises(ProtocolError, match="Column 'c', row 1: a category must be"):
        category_texts(["a", {"x": 1}], "Column 'c'")
    with pytest.raises(ProtocolError, match="row 0: the text is not valid UTF-8"):
        category_texts([b"\xff"], "Column 'c'")


def test_column_numbers_take_numbers_null_and_missing_words_only() -> None:
    x = column_numbers([1, 2.5, None, "NA", " "], "Column 'n'", {"", "NA"})
    assert x[:2].tolist() == [1.0, 2.5] and np.isnan(x[2:]).all()
    for bad, shown in [("3.1", "'3.1'"), (True, "True"), ([1], "\\[1\\]")]:
        with pytest.raises(ProtocolError, match=f"Column 'n' is numeric, but row 1 holds {shown}"):
            column_numbers([1.0, bad], "Column 'n'", {""})
