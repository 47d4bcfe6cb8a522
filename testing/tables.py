"""A tiny table model repository trained through `ensemble-train ensemble`, built once per test session and
shared by the HTTP and gRPC table tests (training takes seconds; serving is what those tests check).

`penguin_like` is a small generated table with what real ones have: text categories, missing numbers and
text, an integer column, an ID column, string labels and a few rows without a target. Training (torch) is
imported only when a repository is built, so importing this module stays torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "penguins_like.csv"
TABLE_MODEL = "generated"  # from penguin_like: a column name ("bill length (mm)") that is not a tensor name
# Tiny on purpose (2 members, 3 epochs): what the serving tests check is the serving, not the fit.
TINY = [
    "--target",
    "species",
    "--ignore",
    "id",
    "--members",
    "2",
    "--epochs",
    "3",
    "--width",
    "16",
    "--quiet",
]


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


def table_repository(root: Path) -> Path:
    """`generated` (penguin_like, 200 rows) and `penguins` (the README's examples/penguins_like.csv),
    trained by the CLI into `root/repo`; returns the repository."""
    from training.cli import main as train  # torch: only where a table repository is built

    repo = root / "repo"
    for name, csv in [(TABLE_MODEL, write_csv(root, penguin_like(n=200))), ("penguins", str(EXAMPLE))]:
        argv = ["ensemble", "--data", csv, *TINY, "--repository", str(repo), "--name", name]
        if train(argv) != 0:
            raise RuntimeError(f"training the table model {name!r} failed")
    return repo
