"""`ensemble-train search`: two-stage random search (Optuna) on the training/validation rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.args import add_common_args, apply_threads, config_from_args, load_from_args, split_from_args
from training.fit import FitConfig
from training.search import SearchSettings, run_search


def add_search_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    s = parser.add_argument_group("search")
    s.add_argument(
        "--trials", type=int, required=required, help="trials in the study, finished ones included"
    )
    s.add_argument("--timeout", type=float, help="wall-time limit in seconds (checked between trials)")
    s.add_argument("--storage", help="SQLAlchemy URL of the study (default: SQLite file search.db in --out)")
    s.add_argument("--study", default="search", help="study name; the same name resumes the study")
    s.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the study (1 thread each)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="search hyperparameters (random, then narrowed random)")
    add_common_args(p)
    add_search_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for trials.csv, best_params.json, plots")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace, out: Path, base: FitConfig | None = None) -> SearchSettings:
    """The search options of `args`; `base` (the fixed, unsearched settings) defaults to args' own."""
    return SearchSettings(
        trials=args.trials,
        out=out,
        base=base if base is not None else config_from_args(args),
        timeout=args.timeout,
        storage=args.storage,
        study=args.study,
        workers=args.workers,
        seed=args.seed,
        quiet=args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    settings = settings_from_args(args, args.out)
    settings.validate()  # before loading data: bad options are one line, nothing written
    ds = load_from_args(args)
    train_idx, val_idx, _test = split_from_args(ds, args)  # the test rows stay unseen by the search
    result = run_search(ds, train_idx, val_idx, settings)
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items()
    )
    print(
        f"best trial {result.best_trial}: val loss {result.best_value:.4f}  ({params})\n"
        f"trials finished: {result.finished} (this run: {result.ran}; stage 1: {result.stage_counts[1]}, "
        f"stage 2: {result.stage_counts[2]}) -> {args.out}"
    )
    return 0
