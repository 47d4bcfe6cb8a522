"""`ensemble-train ensemble`: K members on K folds (optionally after a search), exported into a new
version of a model in the repository, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.args import add_common_args, apply_threads, config_from_args, data_from_args
from training.cmd_search import add_search_args, settings_from_args
from training.ensemble import ARCH_CHOICES, ENSEMBLE_EPOCHS
from training.ensemble_report import summary_rows, text_table
from training.fit import FitConfig
from training.pipeline import EnsembleJob, run_ensemble

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


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    search = None
    if args.trials is not None:
        search = settings_from_args(args, Path("."), FitConfig())  # out and base are set by the pipeline
    job = EnsembleJob(
        data=data_from_args(args),
        repository=args.repository,
        name=args.name,
        base=config_from_args(
            argparse.Namespace(
                **{**vars(args), "arch": "mlp" if args.arch in ("auto", "mixed") else args.arch}
            )
        ),
        explicit=frozenset(args.explicit),
        lr_auto=args.lr == "auto",
        members=args.members,
        arch=args.arch,
        seeds=args.seeds,
        test_fraction=args.test_fraction,
        search=search,
        out=args.out,
        quiet=args.quiet,
    )
    done = run_ensemble(job)
    print(text_table(summary_rows(done.outcome)))
    print(f"wrote {done.version}  ({done.outcome.seconds:.1f} s)")
    return 0
