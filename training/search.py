"""Two-stage random search with Optuna: wide random sampling, then random sampling in a box narrowed
around the best stage-1 trials; bad trials pruned early on the validation loss.

The study (an Optuna RDB storage: SQLite by default, any SQLAlchemy URL) is the only shared state, so the
same code serves one process, several worker processes on one machine and several machines:
- the trial budget counts the study's finished trials (a re-run with the same study resumes);
- a trial's stage is its user attr ``stage``; the first worker to find stage 1's share of the budget spent
  (or its share of the wall time) computes the narrowed box and stores it in the study's user attr
  ``stage2_box``; every worker reads it from there.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from training.data import Dataset
from training.fit import FitConfig, TrainingDiverged, fit
from training.search_space import (
    NarrowedSampler,
    Param,
    Space,
    narrow_space,
    space_from_json,
    space_to_json,
    to_config,
    wide_space,
)

DB_FILE = "search.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
BOX_ATTR = "stage2_box"


@dataclass
class SearchSettings:
    trials: int
    out: Path
    base: FitConfig = field(default_factory=FitConfig)
    timeout: float | None = None  # seconds of wall time for this invocation, both stages together
    storage: str | None = None  # None: SQLite file in `out`
    study: str = "search"
    workers: int = 1
    seed: int = 0
    stage1_fraction: float = 0.6  # of the trials and of the wall time
    top_fraction: float = 0.25  # stage 2 narrows around this share of the completed stage-1 trials
    min_top: int = 3
    widen: float = 2.0
    prune_startup: int = 4  # MedianPruner: trials that finish before any is pruned
    prune_warmup: int = 2  # and epochs each trial runs before it can be pruned
    quiet: bool = True

    def validate(self) -> None:
        if self.trials < 1:
            raise ValueError("--trials must be >= 1")
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError("--timeout must be > 0 seconds")
        if not optuna_name_ok(self.study):
            raise ValueError(f"invalid study name {self.study!r}: use 1 to 100 printable characters")
        self.base.validate()

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / DB_FILE).resolve()}"


@dataclass
class SearchResult:
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    config: FitConfig
    finished: int  # finished trials in the study (all invocations)
    ran: int  # trials this invocation finished
    stage_counts: dict[int, int]


def optuna_name_ok(name: str) -> bool:
    return 0 < len(name) <= 100 and name.isprintable()


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage; SQLite waits for its lock (several local workers write to one file)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # SQLAlchemy/driver errors of many types; the CLI needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot open the study storage {url}: {first}") from None


def open_study(settings: SearchSettings, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=settings.prune_startup, n_warmup_steps=settings.prune_warmup
    )
    return optuna.create_study(
        storage=open_storage(settings.storage_url()),
        study_name=settings.study,
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def _live(t: FrozenTrial, since: datetime) -> bool:
    """Finished, or running and started by this invocation (a crashed run's RUNNING trials don't count)."""
    if t.state in FINISHED:
        return True
    return t.state == TrialState.RUNNING and t.datetime_start is not None and t.datetime_start >= since


def top_params(trials: list[FrozenTrial], fraction: float, minimum: int) -> list[dict[str, Any]]:
    """Parameters of the best completed trials (lowest value): max(minimum, fraction of them)."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: float(t.value))  # type: ignore[arg-type]
    k = max(minimum, math.ceil(fraction * len(done)))
    return [t.params for t in done[:k]]


def choose_stage(
    study: optuna.Study, trials: list[FrozenTrial], settings: SearchSettings, since: datetime, elapsed: float
) -> tuple[int, Space | None]:
    """Stage 1 until its share of trials (or time) is spent and one stage-1 trial completed; then 2."""
    stored = study.user_attrs.get(BOX_ATTR)
    if stored is not None:
        return 2, space_from_json(stored)
    n1 = max(1, math.ceil(settings.stage1_fraction * settings.trials))
    stage1 = [t for t in trials if t.user_attrs.get("stage") == 1 and _live(t, since)]
    completed = [t for t in stage1 if t.state == TrialState.COMPLETE]
    time_up = settings.timeout is not None and elapsed >= settings.stage1_fraction * settings.timeout
    if completed and (len(stage1) >= n1 or time_up):
        box = narrow_space(
            wide_space(settings.base.arch),
            top_params(completed, settings.top_fraction, settings.min_top),
            settings.widen,
        )
        study.set_user_attr(BOX_ATTR, space_to_json(box))
        return 2, box
    return 1, None


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Ask for every parameter against its *wide* distribution (the sampler may draw inside a box)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.categorical:
            out[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.integer:
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return out


def run_trial(
    trial: optuna.Trial, ds: Dataset, train_idx: np.ndarray, val_idx: np.ndarray, config: FitConfig
) -> float:
    """Train one configuration; report the validation loss per epoch and prune when the pruner says so."""

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        if not math.isfinite(row["val_loss"]):
            raise optuna.TrialPruned(f"validation loss not finite at epoch {epoch}")
        trial.report(row["val_loss"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    try:
        result = fit(ds, train_idx, val_idx, config, progress=False, epoch_callback=on_epoch)
    except TrainingDiverged as exc:  # a diverging configuration is a bad trial, not a broken search
        raise optuna.TrialPruned(str(exc)) from None
    if not math.isfinite(result.best_val_loss):
        raise optuna.TrialPruned("no finite validation loss")
    best = result.history[result.best_epoch - 1]
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("val_metric", float(best["val_metric"]))
    trial.set_user_attr("seconds", round(result.seconds, 3))
    return float(result.best_val_loss)


def worker_loop(
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    settings: SearchSettings,
    worker: int,
    since: datetime,
    started: float,
) -> int:
    """Ask, train, tell until the study holds `settings.trials` trials or time is up; returns trials run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings)
    # Distinct, reproducible draws per worker and per resumption (a resumed run must not repeat trials).
    seed = settings.seed * 1009 + worker * 7919 + len(study.get_trials(deepcopy=False))
    sampler = NarrowedSampler(seed=seed)
    study.sampler = sampler
    space = wide_space(settings.base.arch)
    ran = 0
    while True:
        elapsed = time.monotonic() - started
        if settings.timeout is not None and elapsed >= settings.timeout:
            break
        trials = study.get_trials(deepcopy=False)
        if sum(_live(t, since) for t in trials) >= settings.trials:
            break
        stage, box = choose_stage(study, trials, settings, since, elapsed)
        sampler.box = box
        trial = study.ask()
        trial.set_user_attr("stage", stage)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, space)
        config = to_config(params, settings.base)
        t0 = time.perf_counter()
        try:
            value = run_trial(trial, ds, train_idx, val_idx, config)
            study.tell(trial, value)
            outcome = f"val loss {value:.4f}"
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            outcome = str(exc) or "pruned"
        except ValueError as exc:  # a configuration fit refuses: recorded, the search goes on
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            outcome = f"failed: {exc}"
        ran += 1
        if not settings.quiet:
            print(
                f"trial {trial.number} (stage {stage}, worker {worker}): {outcome} "
                f"[{time.perf_counter() - t0:.1f} s]",
                file=sys.stderr,
            )
    return ran


def _worker_entry(payload: dict[str, Any], barrier: Any) -> None:
    import torch

    torch.set_num_threads(1)  # N workers on N cores: one thread each
    # Start together: a worker still importing torch would otherwise find the budget spent by the others.
    barrier.wait(timeout=300)
    worker_loop(**payload)


def run_search(
    ds: Dataset, train_idx: np.ndarray, val_idx: np.ndarray, settings: SearchSettings
) -> SearchResult:
    """Run (or resume) the study with `settings.workers` processes; write the outputs to `settings.out`."""
    settings.validate()
    settings.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings)  # creates it once, before any worker races to
    study.set_user_attr("space", space_to_json(wide_space(settings.base.arch)))
    since = datetime.now()  # Optuna stores naive local datetimes
    started = time.monotonic()
    before = len([t for t in study.get_trials(deepcopy=False) if t.state in FINISHED])
    payload = dict(
        ds=ds, train_idx=train_idx, val_idx=val_idx, settings=settings, since=since, started=started
    )
    if settings.workers == 1:
        worker_loop(worker=0, **payload)  # type: ignore[arg-type]
    else:
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
        barrier = ctx.Barrier(settings.workers)
        procs = [
            ctx.Process(target=_worker_entry, args=({**payload, "worker": w}, barrier))
            for w in range(settings.workers)
        ]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
        failed = [w for w, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"search worker(s) {failed} exited with an error (see above)")
    return write_outputs(study, settings, before)


def write_outputs(study: optuna.Study, settings: SearchSettings, before: int) -> SearchResult:
    """`trials.csv`, `best_params.json` and the plots; the result of the study so far."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if not completed:
        raise ValueError("no trial completed (all were pruned or failed); try more trials or epochs")
    best = study.best_trial
    config = to_config(best.params, settings.base)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    frame.to_csv(settings.out / "trials.csv", index=False)
    stage_counts = {s: sum(1 for t in finished if t.user_attrs.get("stage") == s) for s in (1, 2)}
    best_json = {
        "trial": best.number,
        "value": best.value,
        "objective": "best validation loss",
        "params": best.params,
        "stage": best.user_attrs.get("stage"),
        "config": asdict(config),
        "finished_trials": len(finished),
        "states": {s.name: sum(1 for t in trials if t.state == s) for s in TrialState},
        "stage_counts": stage_counts,
        "stage2_box": study.user_attrs.get(BOX_ATTR),
        "study": settings.study,
    }
    (settings.out / "best_params.json").write_text(json.dumps(best_json, indent=2, default=str) + "\n")
    plot_study(study, settings.out)
    return SearchResult(
        best.params,
        float(best.value),
        best.number,
        config,
        len(finished),
        len(finished) - before,
        stage_counts,
    )


def plot_study(study: optuna.Study, out: Path) -> list[Path]:
    """optimization_history.png, and param_importances.png (parallel_coordinate.png if importances fail)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna's words
        for name, plot in (("optimization_history", ovm.plot_optimization_history),):
            ax = plot(study)
            ax.figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(out / f"{name}.png")
        try:
            ax = ovm.plot_param_importances(study)
            name = "param_importances"
        except Exception:  # fANOVA needs a few completed trials with varied parameters
            ax = ovm.plot_parallel_coordinate(study)
            name = "parallel_coordinate"
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


__all__ = [
    "Param",
    "SearchResult",
    "SearchSettings",
    "choose_stage",
    "open_study",
    "plot_study",
    "run_search",
    "run_trial",
    "top_params",
    "worker_loop",
]
