"""The training recipe in one place: data -> columns -> preprocessing -> members -> export -> repository.

The CLI parses flags into plain settings (`DataSettings`, `EnsembleJob`) and calls `run_ensemble`; the
library raises `SettingError` naming the field, and the CLI turns the field into its flag. The pieces the
`fit` command shares (`--lr auto`, the data-size defaults) live here once.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from training import defaults
from training.columns import columns_table
from training.data import ColumnOverrides, Dataset, kfold, load_dataset
from training.ensemble import (
    EnsembleOutcome,
    EnsembleSettings,
    check_name,
    holdout,
    resolve_arch,
    train_ensemble,
    write_ensemble_version,
)
from training.ensemble_report import write_ensemble_report
from training.fit import FitConfig
from training.lr_finder import lr_find, write_lr_find
from training.search import SearchSettings, run_search

COLUMNS_FILE = "columns.md"


class SettingError(ValueError):
    """A setting cannot be used; `field` names it (the CLI maps it to its flag)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class DataSettings:
    source: str = "digits"
    target: str | None = None
    task: str | None = None
    input_shape: tuple[int, ...] | None = None
    kinds: ColumnOverrides = field(default_factory=ColumnOverrides)


def load(data: DataSettings) -> Dataset:
    return load_dataset(data.source, data.target, data.task, data.input_shape, data.kinds)


def apply_defaults(
    config: FitConfig, ds: Dataset, n_train_rows: int, explicit: Collection[str] = ()
) -> FitConfig:
    """`config` with training.defaults' data-size recipe applied to every field the user did not set."""
    n_classes = len(ds.labels) if ds.labels is not None else None
    recipe = defaults.recipe(n_train_rows, int(ds.X.shape[1]), ds.task, n_classes)
    known = {f.name for f in fields(FitConfig)}
    unknown = set(recipe) - known
    if unknown:
        raise ValueError(f"training.defaults.recipe returned unknown FitConfig fields: {sorted(unknown)}")
    config = replace(config, **{k: v for k, v in recipe.items() if k not in explicit})
    config.validate()
    return config


def resolve_lr(
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: FitConfig,
    out_dir: Path,
    quiet: bool = True,
) -> FitConfig:
    """`--lr auto`: one LR range test on these rows; `config` with its suggestion (files into out_dir)."""
    found = lr_find(ds, train_idx, val_idx, config)
    write_lr_find(found, out_dir)
    if not math.isfinite(found.suggestion):
        raise SettingError("lr", "the LR range test gave no usable suggestion; pass a number")
    if not quiet:
        print(f"lr range test: suggested lr {found.suggestion:.3g} ({found.rule})", file=sys.stderr)
    return replace(config, lr=float(found.suggestion))


def note_table(ds: Dataset, out_dir: Path, quiet: bool) -> None:
    """How the columns were understood, into the report; dropped target rows said out loud."""
    if not ds.is_table:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COLUMNS_FILE).write_text(f"# Columns of {ds.name}\n\n" + columns_table(ds.columns or []))
    if ds.dropped_rows:
        print(f"dropped {ds.dropped_rows} rows with a missing target", file=sys.stderr)
    elif not quiet:
        print("no rows dropped (every target present)", file=sys.stderr)


@dataclass
class EnsembleJob:
    """Everything `ensemble-train ensemble` needs, as plain values."""

    data: DataSettings
    repository: Path
    name: str
    base: FitConfig = field(default_factory=FitConfig)
    explicit: frozenset[str] = frozenset()  # FitConfig fields the user set (the defaults recipe skips them)
    lr_auto: bool = False
    members: int = 5
    arch: str = "auto"
    seeds: Sequence[int] | None = None
    test_fraction: float = 0.15
    search: SearchSettings | None = None  # its base and out are filled in here
    out: Path | None = None  # also keep the report here
    quiet: bool = True

    def validate(self) -> None:
        try:
            check_name(self.name)
        except ValueError as e:
            raise SettingError("name", str(e)) from None
        if self.repository.exists() and not self.repository.is_dir():
            raise SettingError("repository", f"{self.repository} exists and is not a folder")
        if self.members < 2:
            raise SettingError("members", "must be >= 2 (each member validates on its own fold)")
        if self.search is not None and self.search.trials < 1:
            raise SettingError("trials", "must be >= 1")


@dataclass
class EnsembleRun:
    version: Path
    outcome: EnsembleOutcome
    arch: str


def run_ensemble(job: EnsembleJob) -> EnsembleRun:
    """Train, export and publish one version (all or nothing); the report goes into the version."""
    job.validate()  # before any work: a bad name must not cost a training run
    ds = load(job.data)
    arch = resolve_arch(job.arch, ds)
    base = replace(job.base, arch="mlp" if arch == "mixed" else arch)
    settings = EnsembleSettings(
        members=job.members,
        base=base,
        arch=arch,
        seeds=job.seeds,
        test_fraction=job.test_fraction,
        progress=not job.quiet,
    )
    settings.validate(ds)
    rest, test_idx = holdout(ds, job.test_fraction, base.seed)
    settings.base = apply_defaults(base, ds, len(rest) * (job.members - 1) // job.members, job.explicit)
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        work = Path(tmp)
        report_dir = job.out if job.out is not None else work / "report"
        note_table(ds, report_dir, job.quiet)
        search_info = None
        # The range test and the search use fold 0 of the non-test rows: the test rows stay unseen.
        fold0 = kfold(ds, rest, job.members, seed=base.seed)[0]
        if job.lr_auto:
            settings.base = resolve_lr(ds, *fold0, settings.base, report_dir, job.quiet)
        if job.search is not None:
            search = replace(job.search, out=report_dir / "search", base=settings.base)
            found = run_search(ds, *fold0, search)
            settings.base = found.config
            search_info = {
                "best_trial": found.best_trial,
                "best_val_loss": found.best_value,
                **found.best_params,
            }
            if not job.quiet:
                print(
                    f"search: best trial {found.best_trial}, val loss {found.best_value:.4f}", file=sys.stderr
                )
        outcome = train_ensemble(ds, rest, test_idx, settings, work)
        write_ensemble_report(outcome, report_dir, ds.name, search_info)
        description = (
            f"{len(outcome.members)}-member {arch} ensemble on {ds.name}; base config {asdict(settings.base)}"
        )
        version = write_ensemble_version(ds, outcome, job.repository, job.name, report_dir, description)
    return EnsembleRun(version, outcome, arch)
