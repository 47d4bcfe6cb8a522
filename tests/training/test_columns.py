"""Column kinds of a table: detection, the user's overrides, ID-like text refused, targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.training.tables import penguin_like, write_csv
from training.data import ColumnOverrides, DataError, load_dataset


def _kinds(ds) -> dict[str, str]:
    return {c.name: c.kind for c in ds.columns}


def test_kinds_are_detected_and_missing_targets_dropped_with_a_count(tmp_path: Path) -> None:
    ds = load_dataset(write_csv(tmp_path, penguin_like()), "species", kinds=ColumnOverrides(ignore=("id",)))
    assert _kinds(ds) == {
        "id": "ignored",
        "island": "categorical",
        "bill length (mm)": "numeric",
        "sex": "categorical",
        "clutch": "numeric",  # integers stay numbers unless the user says --categorical
    }
    assert ds.dropped_rows == 4 and len(ds) == 236
    assert ds.labels == ["Adelie penguin", "Gentoo"]  # as written
    sex = ds.columns[3]
    assert sex.categories == ("female", "male") and sex.n_missing > 0
    assert 0 < np.isnan(ds.X[:, 1]).sum() <= ds.columns[2].n_missing  # missing numbers kept as NaN
    assert set(np.unique(ds.X[:, 0])) == {0.0, 1.0, 2.0}  # codes into the island's categories


def test_overrides_beat_detection(tmp_path: Path) -> None:
    kinds = ColumnOverrides(categorical=("clutch",), ignore=("id", "sex"))
    ds = load_dataset(write_csv(tmp_path, penguin_like()), "species", kinds=kinds)
    assert _kinds(ds)["clutch"] == "categorical" and ds.columns[4].categories == ("1", "2", "3")
    assert ds.feature_names == ["island", "bill length (mm)", "clutch"]
    df = penguin_like().assign(code=lambda d: ["7", "8"] * (len(d) // 2))
    ds = load_dataset(
        write_csv(tmp_path, df), "species", kinds=ColumnOverrides(numeric=("code",), ignore=("id",))
    )
    assert _kinds(ds)["code"] == "numeric"


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (ColumnOverrides(), "column 'id' is text with 240 distinct values .*pass --ignore id"),
        (ColumnOverrides(ignore=("id", "nope")), "--ignore names unknown column 'nope'"),
        (ColumnOverrides(numeric=("island",), ignore=("id",)), "--numeric column 'island' holds text"),
        (ColumnOverrides(numeric=("clutch",), ignore=("id", "clutch")), "more than one kind"),
    ],
)
def test_bad_columns_are_one_sentence(tmp_path: Path, kinds: ColumnOverrides, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(write_csv(tmp_path, penguin_like()), "species", kinds=kinds)


def test_an_id_column_may_be_forced_categorical(tmp_path: Path) -> None:
    ds = load_dataset(
        write_csv(tmp_path, penguin_like()), "species", kinds=ColumnOverrides(categorical=("id",))
    )
    assert _kinds(ds)["id"] == "categorical" and len(ds.columns[0].categories) == 240


def test_missing_words_in_csv_and_parquet_alike(tmp_path: Path) -> None:
    text = "a,b,y\n1,x,p\nNA,null,q\nNaN,,p\n4,NA,q\n5,y,p\n6,x,q\n"
    (tmp_path / "m.csv").write_text(text)
    csv = load_dataset(str(tmp_path / "m.csv"), "y")
    df = pd.DataFrame(
        {
            "a": ["1", "NA", "NaN", "4", "5", "6"],
            "b": ["x", "null", None, "NA", "y", "x"],
            "y": list("pqpqpq"),
        }
    )
    df.to_parquet(tmp_path / "m.parquet")
    pq = load_dataset(str(tmp_path / "m.parquet"), "y", kinds=ColumnOverrides(numeric=("a",)))
    for ds in (csv, pq):
        assert [c.n_missing for c in ds.columns] == [2, 3]
        assert ds.columns[1].categories == ("x", "y")
        np.testing.assert_array_equal(np.isnan(ds.X), [[0, 0], [1, 1], [1, 1], [0, 1], [0, 0], [0, 0]])


def test_integer_codes_with_missing_rows_stay_classes(tmp_path: Path) -> None:
    df = penguin_like().drop(columns=["id"])
    df["species"] = np.where(df["species"].isna(), np.nan, (df["species"] == "Gentoo").astype(float))
    ds = load_dataset(write_csv(tmp_path, df), "species")  # pandas reads 0/1 with blanks as float
    assert ds.task == "classification" and ds.labels == ["0", "1"] and ds.dropped_rows == 4


def test_numeric_target_is_regression(tmp_path: Path) -> None:
    df = penguin_like().drop(columns=["id", "species"]).dropna(subset=["bill length (mm)"])
    ds = load_dataset(write_csv(tmp_path, df), "bill length (mm)")
    assert ds.task == "regression" and ds.y.shape == (len(df), 1)
