import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fit_on_digits_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _run("fit", "--data", "digits", "--epochs", "6", "--width", "64", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy:" in proc.stdout
    for name in ("metrics.json", "history.csv", "curves.png", "report.md", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "test_loss", "best_epoch", "seconds"} <= set(metrics)
    assert metrics["test_accuracy"] > 0.8  # chance is 0.1
    assert 1 <= metrics["best_epoch"] <= 6
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "lr", "train_loss", "val_loss", "train_metric", "val_metric"]
    assert len(history) == 6
    lines = (out / "report.md").read_text().splitlines()
    verdicts = [line for line in lines if line.startswith("Diagnosis: ")]
    assert len(verdicts) == 1 and verdicts[0].split(": ", 1)[1] in ("underfitting", "overfitting", "good fit")


def test_lr_find_prints_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["lr-find", "--data", "digits", "--steps", "40", "--width", "32", "--quiet", "--out", str(tmp_path)]
    )
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("suggested lr: ")
    assert 1e-7 <= float(first.split(": ")[1]) <= 10
    assert (tmp_path / "lr_find.csv").exists() and (tmp_path / "lr_find.png").exists()


def test_fit_with_lr_auto_and_a_csv_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"]).assign(price=100 + 10 * X[:, 0] + rng.normal(size=300))
    df.to_csv(tmp_path / "h.csv", index=False)
    argv = ["fit", "--data", str(tmp_path / "h.csv"), "--target", "price", "--epochs", "5", "--lr", "auto"]
    code = main([*argv, "--width", "16", "--quiet", "--out", str(tmp_path / "o")])
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {"test_rmse", "test_loss", "best_epoch", "seconds"} <= set(metrics)
    assert (tmp_path / "o" / "lr_find.csv").exists()


def _bad_files(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "text.csv").write_text("a,s,y\n1,x,0\n2,y,1\n")
    (tmp_path / "nan.csv").write_text("a,y\n1,0\n,1\n3,0\n")
    (tmp_path / "one.csv").write_text("a,y\n1,0\n2,0\n3,0\n")
    (tmp_path / "tiny.csv").write_text("a,y\n1,0\n2,0\n3,0\n4,1\n")
    (tmp_path / "data.json").write_text("{}")
    return {
        "missing file": ["--data", str(tmp_path / "nope.csv")],
        "unknown format": ["--data", str(tmp_path / "data.json")],
        "empty file": ["--data", str(tmp_path / "empty.csv"), "--target", "y"],
        "missing target": ["--data", str(tmp_path / "text.csv"), "--target", "z"],
        "text feature": ["--data", str(tmp_path / "text.csv"), "--target", "y"],
        "nan": ["--data", str(tmp_path / "nan.csv"), "--target", "y"],
        "single class": ["--data", str(tmp_path / "one.csv"), "--target", "y"],
        "tiny class": ["--data", str(tmp_path / "tiny.csv"), "--target", "y", "--task", "classification"],
        "cnn without shape": ["--data", str(tmp_path / "nan.csv"), "--target", "a", "--arch", "cnn"],
        "bad flag value": ["--epochs", "many"],
        "bad lr": ["--lr", "fast"],
        "unknown schedule": ["--schedule", "sawtooth"],
        "bad schedule param": ["--schedule", "cosine", "--schedule-param", "gamma=2"],
        "malformed schedule param": ["--schedule-param", "t0"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "unknown format",
        "empty file",
        "missing target",
        "text feature",
        "nan",
        "single class",
        "tiny class",
        "cnn without shape",
        "bad flag value",
        "bad lr",
        "unknown schedule",
        "bad schedule param",
        "malformed schedule param",
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", *_bad_files(tmp_path)[case], "--quiet", "--out", str(tmp_path / "o")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_bad_data_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = _run("fit", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data file not found") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["fit", "--epochs", "1", "--quiet", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_commands_register_from_one_list() -> None:
    assert all(callable(getattr(m, "register", None)) for m in COMMANDS)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
