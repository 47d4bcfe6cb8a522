"""Two-stage search: outputs, resumption, several workers on one study, narrowing, pruning, PostgreSQL."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from training.cli import main
from training.data import load_dataset, split
from training.fit import FitConfig
from training.search import BOX_ATTR, DB_FILE, open_storage, run_trial
from training.search_space import Param, narrow_space, sample_in, space_from_json, wide_space

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--data", "digits", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 rows of 3 easy classes: trials take a fraction of a second, so worker tests time the workers."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 70)[:200]
    X = rng.normal(size=(200, 8)) + y[:, None] * 1.5
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, X=X.astype(np.float32), y=y)
    return path


def _study(url: str, name: str = "search") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_narrow_space_is_pure_and_boxes_the_top_trials() -> None:
    space = {
        "lr": Param("lr", 1e-4, 1e-1, log=True),
        "dropout": Param("dropout", 0.0, 0.6),
        "width": Param("width", 16, 1024, log=True, integer=True),
        "depth": Param("depth", 1, 4, integer=True),
        "opt": Param("opt", choices=("adam", "adamw", "sgd")),
        "unseen": Param("unseen", 1.0, 2.0),
    }
    top = [
        {"lr": 1e-3, "dropout": 0.2, "width": 64, "depth": 2, "opt": "sgd"},
        {"lr": 4e-3, "dropout": 0.3, "width": 128, "depth": 2, "opt": "adam"},
    ]
    before = {k: v for k, v in space.items()}
    box = narrow_space(space, top, widen=2.0)
    assert space == before  # the input is left alone
    assert box["lr"].low == pytest.approx(5e-4) and box["lr"].high == pytest.approx(8e-3)  # /2 and *2
    # linear: span 0.1, padded by (2-1)/2 of it on each side
    assert box["dropout"].low == pytest.approx(0.15) and box["dropout"].high == pytest.approx(0.35)
    assert (box["width"].low, box["width"].high) == (32, 256)
    # equal values still get the minimum padding (5% of the wide range), rounded outwards for ints
    assert (box["depth"].low, box["depth"].high) == (1, 3)
    assert box["opt"].choices == ("adam", "sgd")  # wide order kept
    assert box["unseen"] == space["unseen"]
    # clipped to the wide range
    edge = narrow_space(space, [{"lr": 0.09, "dropout": 0.59}], widen=3.0)
    assert edge["lr"].high == pytest.approx(0.1) and edge["dropout"].high == pytest.approx(0.6)
    assert edge["lr"].low == pytest.approx(0.03)
    with pytest.raises(ValueError):
        narrow_space(space, top, widen=0.5)


def test_sample_in_stays_inside_the_box() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for p in wide_space("mlp").values():
        for _ in range(50):
            v = sample_in(p, rng)
            assert v in p.choices if p.categorical else p.low <= v <= p.high


def test_search_writes_outputs_resumes_and_narrows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    assert main(["search", *TINY, "--trials", "5", "--out", str(out)]) == 0
    for name in ("trials.csv", "best_params.json", "optimization_history.png", DB_FILE):
        assert (out / name).stat().st_size > 0, name
    assert (out / "param_importances.png").exists() or (out / "parallel_coordinate.png").exists()
    best = json.loads((out / "best_params.json").read_text())
    assert best["finished_trials"] == 5 and best["stage_counts"] == {"1": 3, "2": 2}
    assert set(best["params"]) == set(wide_space("mlp"))
    rows = _rows(out / "trials.csv")
    assert len(rows) == 5
    study = _study(f"sqlite:///{out / DB_FILE}")
    box = space_from_json(study.user_attrs[BOX_ATTR])
    for t in study.trials:
        if t.user_attrs["stage"] == 2:  # stage-2 points lie inside the narrowed box
            for name, value in t.params.items():
                p = box[name]
                assert value in p.choices if p.categorical else p.low <= value <= p.high
    # The same study again: the 5 finished trials count toward --trials 5, so nothing runs.
    capsys.readouterr()
    assert main(["search", *TINY, "--trials", "5", "--out", str(out)]) == 0
    assert "this run: 0" in capsys.readouterr().out
    assert len(_study(f"sqlite:///{out / DB_FILE}").trials) == 5
    # Asking for 7 adds exactly 2 (stage 2 goes on with the stored box).
    assert main(["search", *TINY, "--trials", "7", "--out", str(out)]) == 0
    trials = _study(f"sqlite:///{out / DB_FILE}").trials
    assert [t.number for t in trials] == list(range(7))
    assert [t.user_attrs["stage"] for t in trials[5:]] == [2, 2]


def test_two_workers_share_one_sqlite_study(tmp_path: Path, small_npz: Path) -> None:
    out = tmp_path / "w"
    argv = ["search", *TINY, "--data", str(small_npz), "--epochs", "5", "--trials", "6", "--workers", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    trials = _study(f"sqlite:///{out / DB_FILE}").trials
    seen = [(t.number, t.state.name, t.user_attrs) for t in trials]
    # Two workers may both find 5 trials and ask at the same moment: one trial over, at most (documented).
    assert 6 <= len(trials) <= 7, seen
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), seen
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_timeout_ends_the_search_and_splits_the_time_between_stages(tmp_path: Path, small_npz: Path) -> None:
    out = tmp_path / "t"
    argv = ["search", *TINY, "--data", str(small_npz), "--trials", "100000", "--timeout", "6"]
    assert main([*argv, "--out", str(out)]) == 0
    best = json.loads((out / "best_params.json").read_text())
    assert 2 <= best["finished_trials"] < 100000
    # stage 1 ran out of its 60% of the time, not of its 60000 trials; stage 2 used the rest
    assert best["stage_counts"]["1"] < 60000 and best["stage_counts"]["2"] >= 1


def test_pruning_stops_a_hopeless_trial_early() -> None:
    ds = load_dataset("digits")
    train_idx, val_idx, _ = split(ds, seed=0)
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    good = FitConfig(epochs=4, width=64, lr=3e-3, schedule="constant", dropout=0.1)
    for seed in (0, 1):
        trial = study.ask()
        study.tell(
            trial, run_trial(trial, ds, train_idx, val_idx, FitConfig(**{**good.__dict__, "seed": seed}))
        )
    # A rate 10^4 times too small: after one epoch its validation loss is still near log(10).
    hopeless = FitConfig(**{**good.__dict__, "lr": 1e-7, "optimizer": "sgd"})
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        run_trial(trial, ds, train_idx, val_idx, hopeless)
    study.tell(trial, state=TrialState.PRUNED)
    pruned = study.trials[-1]
    assert pruned.state == TrialState.PRUNED
    assert len(pruned.intermediate_values) < hopeless.epochs


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trials", "0"], "--trials"),
        (["--trials", "2", "--workers", "0"], "--workers"),
        (["--trials", "2", "--storage", "nosuchdb://x"], "storage"),
        (["--trials", "2", "--data", "missing.csv"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert main(["search", *TINY, *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and message in err


# --- PostgreSQL: a real server on 127.0.0.1, two worker processes against it ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip(
            "PostgreSQL binaries absent (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
        )
    bindir = Path(bins[-1]).parent
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot run initdb as the postgres user")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = Path(tempfile.mkdtemp(prefix="pg-"))
    if as_root:
        shutil.chown(tmp, "postgres")
    data, port = tmp / "data", _free_port()
    user = "postgres" if as_root else os.environ.get("USER", "postgres")

    def pg(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    started = False
    try:
        pg(str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", user)
        pg(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "30",
            "-o", f"-k {tmp} -p {port} -h 127.0.0.1", "start",
        )  # fmt: skip
        started = True
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "optuna")
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/optuna"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path: Path, small_npz: Path) -> None:
    with _postgres() as url:
        cmd = [sys.executable, "-m", "training", "search", *TINY, "--data", str(small_npz)]
        cmd += ["--epochs", "5", "--trials", "6"]
        cmd += ["--workers", "2", "--storage", url, "--study", "pg", "--out", str(tmp_path)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        trials = _study(url, "pg").trials
        assert 6 <= len(trials) <= 7, [(t.number, t.state.name, t.user_attrs) for t in trials]
        assert {t.user_attrs["worker"] for t in trials} == {0, 1}
        assert not (tmp_path / DB_FILE).exists()  # the study lives in PostgreSQL, not in a local file
        assert json.loads((tmp_path / "best_params.json").read_text())["finished_trials"] == len(trials)
