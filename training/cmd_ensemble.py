"""`ensemble-train ensemble`: K members on K folds (optionally after a search), exported into a new
version of a model in the repository, with a report."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from training.args import add_common_args, apply_threads, config_from_args, load_from_args
from training.cmd_search import add_search_args, settings_from_args
from training.data import Dataset, kfold
from training.ensemble import (
    ARCH_CHOICES,
    ENSEMBLE_EPOCHS,
    EnsembleSettings,
    check_name,
    holdout,
    resolve_arch,
    train_ensemble,
    write_ensemble_version,
)
from training.ensemble_report import summary_rows, text_table, write_ensemble_report
from training.fit import FitConfig
from training.lr_finder import lr_find, write_lr_find
from training.search import run_search

DEFAULT_MEMBERS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ensemble", help="train K members on K folds and write a repository version")
    add_common_args(p)
    # One more choice than `fit`: mixed alternates MLP and CNN members.
    for action in p._actions:
        if action.dest == "arch":
            action.choices = ARCH_CHOICES
            action.default = "auto"
            action.help = "auto (cnn for image-shaped rows, else mlp), mlp, cnn, or mixed (alternating)"
        if action.dest == "epochs":
            action.default = ENSEMBLE_EPOCHS
    p.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="members = cross-validation folds")
    p.add_argument(
        "--seeds", type=int, nargs="+", help="one seed per member (default: --seed + member index)"
    )
    p.add_argument("--repository", type=Path, required=True, help="model repository folder")
    p.add_argument("--name", required=True, help="model name: lowercase a-z, 0-9, '_' and '-'")
    p.add_argument(
        "--out", type=Path, help="also keep the report here (it is always copied into the version)"
    )
    add_search_args(p, required=False)
    p.set_defaults(func=run)


def _range_test_lr(
    ds: Dataset, rest: np.ndarray, base: FitConfig, args: argparse.Namespace, report_dir: Path
) -> FitConfig:
    """`--lr auto`: one LR range test on the non-test rows (fold 0 trains, its fold validates); every
    member then trains with the suggestion. lr_find.csv/png go into the report (so into the version)."""
    train_idx, val_idx = kfold(ds, rest, args.members, seed=args.seed)[0]
    found = lr_find(ds, train_idx, val_idx, base)
    write_lr_find(found, report_dir)
    if not math.isfinite(found.suggestion):
        raise ValueError("the LR range test gave no usable suggestion; pass --lr explicitly")
    if not args.quiet:
        print(f"lr range test: suggested lr {found.suggestion:.3g} ({found.rule})", file=sys.stderr)
    return replace(base, lr=float(found.suggestion))


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    check_name(args.name)  # before any work: a bad name must not cost a training run
    if args.repository.exists() and not args.repository.is_dir():
        raise ValueError(f"--repository {args.repository} exists and is not a folder")
    if args.trials is not None and args.trials < 1:
        raise ValueError("--trials must be >= 1")
    if args.members < 2:
        raise ValueError("--members must be >= 2 (each member validates on its own fold)")
    ds = load_from_args(args)
    arch = resolve_arch(args.arch, ds)
    base_arch = "mlp" if arch == "mixed" else arch
    base = config_from_args(argparse.Namespace(**{**vars(args), "arch": base_arch}))
    settings = EnsembleSettings(
        members=args.members,
        base=base,
        arch=arch,
        seeds=args.seeds,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
    )
    settings.validate(ds)
    rest, test_idx = holdout(ds, args.test_fraction, args.seed)
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        work = Path(tmp)
        report_dir = args.out if args.out is not None else work / "report"
        search_info = None
        if args.lr == "auto":
            settings.base = _range_test_lr(ds, rest, settings.base, args, report_dir)
        if args.trials is not None:
            # Search on the non-test rows: one fold validates, the others train (test rows stay unseen).
            train_idx, val_idx = kfold(ds, rest, args.members, seed=args.seed)[0]
            found = run_search(ds, train_idx, val_idx, settings_from_args(args, report_dir / "search", base))
            settings.base = found.config
            search_info = {
                "best_trial": found.best_trial,
                "best_val_loss": found.best_value,
                **found.best_params,
            }
            if not args.quiet:
                print(
                    f"search: best trial {found.best_trial}, val loss {found.best_value:.4f}", file=sys.stderr
                )
        outcome = train_ensemble(ds, rest, test_idx, settings, work)
        write_ensemble_report(outcome, report_dir, ds.name, search_info)
        description = (
            f"{len(outcome.members)}-member {arch} ensemble on {ds.name}; base config {asdict(settings.base)}"
        )
        version = write_ensemble_version(ds, outcome, args.repository, args.name, report_dir, description)
    print(text_table(summary_rows(outcome)))
    print(f"wrote {version}  ({outcome.seconds:.1f} s)")
    return 0
