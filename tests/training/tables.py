"""A small generated table with what real ones have: text categories, missing numbers and text, an
integer column, an ID column, string labels and a few rows without a target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def penguin_like(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], n)
    bill = rng.normal(40, 5, n)
    sex = rng.choice(["male", "female"], n).astype(object)
    sex[rng.random(n) < 0.1] = None
    signal = (island == "Biscoe") ^ (bill > 40)
    bill[rng.random(n) < 0.1] = np.nan
    species = np.where(signal, "Adelie penguin", "Gentoo").astype(object)
    species[:4] = None
    return pd.DataFrame(
        {
            "id": [f"P-{i:04d}" for i in range(n)],
            "island": island,
            "bill length (mm)": bill,
            "sex": sex,
            "clutch": rng.integers(1, 4, n),
            "species": species,
        }
    )


def write_csv(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)
