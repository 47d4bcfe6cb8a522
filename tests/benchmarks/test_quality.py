"""The quality benchmark's plumbing: scoring and its SEs, the baselines' pipelines, the split, the request
bodies, the report, and one tiny real run (CLI training, the real server, scoring). No quality assertion:
the figures belong in docs/quality.md, not in a unit test."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from benchmarks.quality import baselines, ours, report, run, scoring
from benchmarks.quality.tables import TABLES, Table, holdout_split, load, needs_table_support


def _tiny(task: str, n: int = 120, text: bool = False, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.integers(0, 5, n)})
    signal = df["a"] + 0.5 * df["b"]
    if text:
        df["colour"] = rng.choice(["red", "green", "blue"], n)
        df.loc[rng.random(n) < 0.1, "a"] = np.nan
        df.loc[rng.random(n) < 0.1, "colour"] = None
    df["y"] = (
        np.where(signal > 0, "yes", "no") if task == "classification" else signal + rng.normal(0, 0.1, n)
    )
    return df


def test_accuracy_se_matches_the_binomial_formula() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b"], 400)
    proba = np.where((y == "a")[:, None] ^ (rng.random(400) < 0.2)[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    s = scoring.summarize("classification", y, {"m": scoring.Prediction(proba=proba, classes=["a", "b"])})[
        "m"
    ]
    p = s["accuracy"]
    assert s["accuracy_se"] == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.1)
    assert s["log_loss"] == pytest.approx(-np.mean(np.log(np.where(proba.argmax(1) == (y == "b"), 0.9, 0.1))))


def test_probabilities_are_aligned_by_label_name() -> None:
    y = np.array(["no", "yes", "yes"])
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3]])  # columns: yes, no
    s = scoring.summarize("classification", y, {"m": scoring.Prediction(proba=proba, classes=["yes", "no"])})
    assert s["m"]["accuracy"] == pytest.approx(1.0)


def test_a_model_against_itself_differs_by_zero_and_r2_matches_sklearn() -> None:
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    y = rng.normal(size=200)
    pred = scoring.Prediction(values=y + rng.normal(0, 0.5, 200))
    assert scoring.paired_difference("regression", y, pred, pred, "r2") == (0.0, 0.0)
    s = scoring.summarize("regression", y, {"m": pred})["m"]
    assert s["r2"] == pytest.approx(r2_score(y, pred.values))
    assert 0 < s["r2_se"] < 0.2


@pytest.mark.parametrize("kind", baselines.BASELINES)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_baselines_take_text_and_missing_values_and_unseen_categories(kind: str, task: str) -> None:
    df = _tiny(task, text=True)
    test = df.iloc[:20].copy()
    test.loc[0, "colour"] = "violet"  # never seen in training
    X = ["a", "b", "c", "colour"]
    pred, seconds = baselines.fit_predict(kind, task, df.iloc[20:][X], df.iloc[20:]["y"], test[X])
    assert seconds >= 0
    if task == "classification":
        assert pred.proba is not None and pred.proba.shape == (20, 2)
        np.testing.assert_allclose(pred.proba.sum(1), 1.0, rtol=1e-6)
        assert sorted(pred.classes or []) == ["no", "yes"]
    else:
        assert pred.values is not None and pred.values.shape == (20,) and np.isfinite(pred.values).all()


def test_the_split_is_fixed_and_stratified() -> None:
    table = Table("tiny", "generated", "y", "classification", lambda: _tiny("classification", n=200))
    a_train, a_test = holdout_split(table, load(table))
    _b_train, b_test = holdout_split(table, load(table))
    pd.testing.assert_frame_equal(a_test, b_test)
    share = load(table)["y"].eq("yes").mean()
    assert a_test["y"].eq("yes").mean() == pytest.approx(share, abs=0.02)
    assert len(a_test) == 50 and len(a_train) == 150


def test_request_bodies_for_a_numeric_model_and_for_a_per_column_model() -> None:
    X = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, np.nan], "s": ["x", None]})
    numeric = {"inputs": [{"name": "input", "shape": [-1, 2], "feature_names": ["a", "b"]}]}
    assert ours.request_bodies(numeric, X[["a", "b"]].fillna(0)) == [{"instances": [[3.0, 1.0], [0.0, 2.0]]}]
    columns = {"inputs": [{"name": "a", "kind": "numeric"}, {"name": "s", "kind": "categorical"}]}
    assert ours.request_bodies(columns, X) == [{"instances": [{"a": 3.0, "s": "x"}, {"a": None, "s": None}]}]


def test_the_table_list_covers_what_the_benchmark_promises() -> None:
    tags = {t for table in TABLES for t in table.tags}
    assert len(TABLES) >= 8
    assert {"imbalanced", "regression", "text", "missing", "small", "larger", "binary"} <= tags


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("statsmodels", "vega_datasets", "ISLP")),
    reason="the table packages are not installed (pip install -e '.[quality]', ISLP with --no-deps)",
)
def test_every_table_loads_with_a_known_target() -> None:
    for table in TABLES:
        df = load(table)
        assert table.target in df.columns and df[table.target].notna().all()
        assert all(c in df.columns for c in table.ignore)
        assert len(df) >= 100
    assert any(needs_table_support(t, load(t)) for t in TABLES)


@pytest.mark.slow
def test_one_tiny_table_end_to_end_through_the_cli_and_the_server(tmp_path, monkeypatch) -> None:
    table = Table("tiny", "generated", "y", "classification", lambda: _tiny("classification", n=160))
    monkeypatch.setitem(run.BY_NAME, "tiny", table)
    result = run.run_table(
        table, tmp_path, ["--epochs", "2", "--members", "2"], ours.cli_has_flag("--ignore"), True
    )
    assert set(result["scores"]) == {"ours", "linear", "hgb"}
    assert 0 <= result["scores"]["ours"]["accuracy"] <= 1
    assert result["vs_best"]["baseline"] in baselines.BASELINES
    line = report.one_line(result)
    assert line.strip().startswith("tiny accuracy:")
    md = report.markdown_table([result])
    assert md.splitlines()[2].startswith("| tiny | 120/40 | 3 num, 0 cat | 2 |")
    report.plot([result], tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 0
