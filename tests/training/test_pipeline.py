"""The recipe's one home: the range test's rate reaches the search, the data-size defaults yield to the
user's flags, and a table goes in raw and comes out of the repository answering raw columns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from server.manifest import read_manifest
from tests.training.tables import penguin_like, write_csv
from training import pipeline
from training.cli import main
from training.data import ColumnOverrides, load_dataset
from training.ensemble import holdout
from training.ensemble_predict import average_predictions, classification_metrics


class _Stop(Exception):
    pass


def test_lr_auto_with_trials_hands_the_suggestion_to_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}
    monkeypatch.setattr(
        pipeline, "resolve_lr", lambda ds, tr, va, config, out, quiet: replace(config, lr=0.0123)
    )

    def search(ds, tr, va, settings):
        seen["lr"] = settings.base.lr
        raise _Stop

    monkeypatch.setattr(pipeline, "run_search", search)
    argv = ["ensemble", "--data", "digits", "--members", "2", "--lr", "auto", "--trials", "2", "--quiet"]
    with pytest.raises(_Stop):
        main([*argv, "--repository", str(tmp_path / "r"), "--name", "d"])
    assert seen["lr"] == 0.0123


def test_defaults_recipe_applies_unless_the_flag_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        pipeline.defaults, "recipe", lambda n, f, task, c: {"epochs": 1, "dropout": 0.0, "width": 8}
    )
    seen = {}

    def train(ds, rest, test_idx, settings, work):
        seen["base"] = settings.base
        raise _Stop

    monkeypatch.setattr(pipeline, "train_ensemble", train)
    argv = ["ensemble", "--data", "digits", "--members", "2", "--dropout", "0.3", "--quiet", "--arch", "mlp"]
    with pytest.raises(_Stop):
        main([*argv, "--repository", str(tmp_path / "r"), "--name", "d"])
    assert (seen["base"].epochs, seen["base"].dropout, seen["base"].width) == (1, 0.3, 8)


def test_setting_errors_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ensemble", "--data", "digits", "--members", "1", "--repository", str(tmp_path), "--name", "d"]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: --members must be >= 2 (each member validates on its own fold)"
    )


def test_inspect_prints_every_column_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_csv(tmp_path, penguin_like())
    assert main(["inspect", "--data", csv, "--target", "species", "--ignore", "id"]) == 0
    out = capsys.readouterr().out
    assert "| island | categorical | 0 | 3 |" in out and "| id | ignored |" in out
    assert "| bill length (mm) | numeric |" in out and "median fill + missing indicator" in out
    assert "rows dropped for a missing target: 4" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "species"], "error: column 'id' is almost all distinct text: pass --ignore id"),
        (["--target", "nope"], "error: target column 'nope' not found"),
        ([], "error: --target is required"),
    ],
)
def test_inspect_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["inspect", "--data", write_csv(tmp_path, penguin_like()), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(message)


def test_a_raw_table_trains_into_a_version_whose_members_answer_raw_columns(tmp_path: Path) -> None:
    df = penguin_like(n=200)
    csv = write_csv(tmp_path, df)
    repo = tmp_path / "repo"
    argv = [
        "ensemble",
        "--data",
        csv,
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
        "--repository",
        str(repo),
        "--name",
        "penguins",
    ]
    assert main(argv) == 0
    version = repo / "penguins" / "1"
    manifest = read_manifest(version)
    assert (
        manifest.schema_version == 2 and manifest.is_table and manifest.labels == ["Adelie penguin", "Gentoo"]
    )
    assert [(c.column, c.datatype) for c in manifest.columns] == [
        ("island", "BYTES"),
        ("bill length (mm)", "FP32"),
        ("sex", "BYTES"),
        ("clutch", "FP32"),
    ]
    assert (version / "report" / "columns.md").is_file()
    # The held-out rows exactly as the file has them (text, blanks), as a client would send them.
    ds = load_dataset(csv, "species", kinds=ColumnOverrides(ignore=("id",)))
    _, test_idx = holdout(ds, 0.15, 0)
    rows = pd.read_csv(csv).dropna(subset=["species"]).reset_index(drop=True).iloc[test_idx]
    feed = {}
    for c in manifest.columns:
        values = rows[c.column]
        if c.kind == "categorical":
            feed[c.name] = values.fillna("").astype(str).to_numpy(dtype=object).reshape(-1, 1)
        else:
            feed[c.name] = values.to_numpy(dtype=np.float32).reshape(-1, 1)
    assert any(np.isnan(v).any() for v in feed.values() if v.dtype == np.float32)
    outputs = []
    for m in manifest.members:
        session = ort.InferenceSession(str(version / m.file), providers=["CPUExecutionProvider"])
        outputs.append(session.run(["probabilities"], feed)[0])
    averaged = average_predictions(outputs, "classification")
    y = np.array([manifest.labels.index(v) for v in rows["species"]])
    got = classification_metrics(y, averaged["probabilities"])
    # Equal to the training side's check (computed from the codes through the same graphs).
    assert got == pytest.approx(manifest.metrics["ensemble"], rel=1e-6)
