"""`ensemble-train inspect`: how every column of a table is understood; trains nothing."""

from __future__ import annotations

import argparse
import sys

from training.args import add_data_args, data_from_args
from training.columns import columns_table, detect_columns, target_values
from training.data import DataError, read_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show how every column of a table is understood, then exit")
    add_data_args(p, default_data=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = data_from_args(args)
    df = read_table(data.source)
    df.columns = [str(c) for c in df.columns]
    if not data.target:
        raise DataError(f"--target is required; columns: {', '.join(df.columns)}")
    targets = [t.strip() for t in data.target.split(",")]
    for t in targets:
        if t not in df.columns:
            raise DataError(f"target column {t!r} not found; available columns: {', '.join(df.columns)}")
    columns = detect_columns(df, targets, data.kinds)
    _, keep = target_values(df, targets)
    print(f"{data.source}: {len(df)} rows, {len(columns)} feature columns")
    print(columns_table(columns, int((~keep).sum()), ", ".join(targets)), end="")
    refused = [c.name for c in columns if c.kind == "refused"]
    if refused:
        print(
            f"error: column {refused[0]!r} is almost all distinct text: pass --ignore {refused[0]} "
            f"(or --categorical {refused[0]} to use it anyway)",
            file=sys.stderr,
        )
        return 2
    return 0
