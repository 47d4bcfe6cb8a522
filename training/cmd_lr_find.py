"""`ensemble-train lr-find`: the LR range test; prints `suggested lr: X`."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.args import add_common_args, apply_threads, config_from_args, load_from_args, split_from_args
from training.lr_finder import DEFAULT_SUGGESTION, SUGGESTIONS, lr_find, write_lr_find


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lr-find", help="LR range test: write lr_find.csv/png, print a suggested rate")
    add_common_args(p)
    p.add_argument("--rule", choices=tuple(SUGGESTIONS), default=DEFAULT_SUGGESTION, help="suggestion rule")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", type=Path, required=True, help="folder for lr_find.csv and lr_find.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if not 0 < args.start_lr < args.end_lr or args.steps < 5:
        raise ValueError("need 0 < --start-lr < --end-lr and --steps >= 5")
    ds = load_from_args(args)
    train_idx, val_idx, _ = split_from_args(ds, args)
    result = lr_find(
        ds,
        train_idx,
        val_idx,
        config_from_args(args),
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_steps=args.steps,
        rule=args.rule,
    )
    write_lr_find(result, args.out)
    others = ", ".join(f"{k} {v:.3g}" for k, v in result.suggestions.items())
    print(f"suggested lr: {result.suggestion:.4g}")
    print(
        f"({result.rule}; all rules: {others}; {len(result.lrs)} steps in {result.seconds:.1f} s "
        f"-> {args.out})"
    )
    return 0
