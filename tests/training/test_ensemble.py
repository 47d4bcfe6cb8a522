"""`ensemble-train ensemble`: a valid version the server loads, server-identical predictions, regression,
and bad input that leaves the repository untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.ensemble import Ensemble
from server.manifest import read_manifest, sha256_file
from server.repository import validate_version
from training.cli import main
from training.data import load_dataset
from training.ensemble import holdout, run_onnx
from training.ensemble_predict import average_predictions, ensemble_metrics

TINY = ["--epochs", "2", "--width", "16", "--quiet"]


def _exit_code(argv: list[str]) -> int:
    """The CLI's exit status, whether `main` returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _tree(root: Path) -> list[tuple[str, int]]:
    """Every path under `root` with its size (hidden temporary folders included)."""
    if not root.exists():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
    )


def _server_check(version: Path, X: np.ndarray) -> dict[str, np.ndarray]:
    """Load the version as the server does and predict; compare with the training side's averaging."""
    manifest = validate_version(version, version.parent.name, int(version.name))  # sha256s checked here
    served = Ensemble(manifest, version, device="cpu", member_execution="sequential", warmup_runs=1)
    try:
        got = served.predict(X)
    finally:
        served.close()
    outputs = [run_onnx(version / m.file, X, manifest.task) for m in manifest.members]
    expected = average_predictions(outputs, manifest.task)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    return got


def test_tiny_mixed_ensemble_is_a_valid_version_the_server_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repo, out = tmp_path / "repo", tmp_path / "report"
    argv = ["ensemble", "--data", "digits", "--members", "3", "--arch", "mixed", *TINY]
    argv += ["--repository", str(repo), "--name", "digits", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    version = repo / "digits" / "1"
    assert f"wrote {version}" in stdout and "ensemble" in stdout and "mean of members" in stdout
    manifest = read_manifest(version)
    assert manifest.name == "digits" and manifest.version == 1 and manifest.task == "classification"
    assert [m.arch for m in manifest.members] == ["mlp", "cnn", "mlp"]
    assert [m.fold for m in manifest.members] == [0, 1, 2]
    for m in manifest.members:
        assert sha256_file(version / m.file) == m.sha256
        assert set(m.val_metrics) == {"loss", "accuracy"}
    assert set(manifest.metrics) == {"member-0", "member-1", "member-2", "ensemble"}
    assert set(manifest.metrics["ensemble"]) == {"accuracy", "log_loss"}
    assert manifest.preprocessing is not None and len(manifest.preprocessing.mean) == 64
    assert (version / "report" / "report.md").read_text().count("Diagnosis:") == 3
    assert (version / "report" / "curves.png").stat().st_size > 0
    assert (out / "report.md").exists()
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".")]  # no temporary folder left

    # The recorded ensemble metrics are what the server's predictions score on the held-out rows.
    ds = load_dataset("digits")
    _, test_idx = holdout(ds, 0.15, 0)
    got = _server_check(version, ds.X[test_idx])
    recorded = manifest.metrics["ensemble"]
    assert recorded["accuracy"] == pytest.approx(float(np.mean(got["label"] == ds.y[test_idx])))
    members = [run_onnx(version / m.file, ds.X[test_idx], "classification") for m in manifest.members]
    assert recorded == pytest.approx(ensemble_metrics(members, ds.y[test_idx], "classification"))

    # A second run is the next version; the first is untouched.
    before = _tree(version)
    assert main([*argv[:-2], "--seeds", "7", "8", "9"]) == 0
    assert read_manifest(repo / "digits" / "2").members[0].seed == 7
    assert _tree(version) == before


def test_regression_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 4))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.5 * X[:, 2] * X[:, 3] + 10 + rng.normal(scale=0.1, size=240)
    csv = tmp_path / "reg.csv"
    lines = ["a,b,c,d,target"] + [
        ",".join(f"{v:.6f}" for v in [*row, t]) for row, t in zip(X, y, strict=True)
    ]
    csv.write_text("\n".join(lines) + "\n")
    repo = tmp_path / "repo"
    argv = [
        "ensemble",
        "--data",
        str(csv),
        "--target",
        "target",
        "--members",
        "2",
        "--epochs",
        "3",
        "--quiet",
    ]
    assert main([*argv, "--repository", str(repo), "--name", "reg"]) == 0
    version = repo / "reg" / "1"
    manifest = read_manifest(version)
    assert manifest.task == "regression" and manifest.input.feature_names == ["a", "b", "c", "d"]
    assert set(manifest.metrics["ensemble"]) == {"rmse", "r2"}
    assert manifest.metrics["ensemble"]["rmse"] < float(np.std(y))  # it learned something in 3 epochs
    got = _server_check(version, X[:50].astype(np.float32))
    assert got["prediction"].shape == (50, 1) and got["spread"].shape == (50, 1)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "Bad Name!"], "invalid model name"),
        (["--name", "ok", "--data", "missing.csv"], "not found"),
        (["--name", "ok", "--members", "1"], "--members"),
        (["--name", "ok", "--members", "2", "--seeds", "1"], "seeds"),
        (["--name", "ok", "--trials", "0"], "--trials"),
        (["--name", "ok", "--test-fraction", "2"], "fraction"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_the_repository_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    repo = tmp_path / "repo"
    (repo / "ok" / "1").mkdir(parents=True)
    (repo / "ok" / "1" / "manifest.json").write_text(json.dumps({"placeholder": True}))
    before = _tree(repo)
    assert _exit_code(["ensemble", "--data", "digits", *TINY, "--repository", str(repo), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error") and message in err, err
    assert _tree(repo) == before


def test_cnn_on_flat_data_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "flat.csv"
    csv.write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60)))
    repo = tmp_path / "repo"
    argv = ["ensemble", "--data", str(csv), "--target", "y", "--arch", "cnn", *TINY]
    assert main([*argv, "--repository", str(repo), "--name", "flat"]) == 2
    assert "image-shaped" in capsys.readouterr().err
    assert _tree(repo) == []


def test_search_first_then_members_use_the_best_parameters(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    argv = [
        "ensemble",
        "--data",
        "digits",
        "--members",
        "2",
        "--arch",
        "mlp",
        "--trials",
        "3",
        "--epochs",
        "2",
    ]
    assert main([*argv, "--quiet", "--repository", str(repo), "--name", "searched"]) == 0
    version = repo / "searched" / "1"
    best = json.loads((version / "report" / "search" / "best_params.json").read_text())
    assert best["finished_trials"] == 3
    for member in read_manifest(version).members:
        hp = member.hyperparameters
        assert (hp["lr"], hp["width"], hp["optimizer"]) == (
            best["params"]["lr"],
            best["params"]["width"],
            best["params"]["optimizer"],
        )


def test_lr_auto_runs_the_range_test_and_members_use_its_suggestion(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    argv = ["ensemble", "--data", "digits", "--members", "2", "--arch", "mlp", "--lr", "auto", *TINY]
    assert main([*argv, "--repository", str(repo), "--name", "auto"]) == 0
    version = repo / "auto" / "1"
    assert (version / "report" / "lr_find.png").is_file()
    rows = (version / "report" / "lr_find.csv").read_text().splitlines()
    assert len(rows) > 10 and rows[0].startswith("step,lr,loss")
    lrs = {m.hyperparameters["lr"] for m in read_manifest(version).members}
    assert len(lrs) == 1
    (lr,) = lrs
    assert lr != 3e-3 and 1e-7 <= lr <= 10.0  # the suggestion, not the placeholder default
