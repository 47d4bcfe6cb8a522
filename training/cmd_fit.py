"""`ensemble-train fit`: one network, its curves, diagnosis and test metrics."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from training.args import add_common_args, apply_threads, config_from_args, load_from_args, split_from_args
from training.diagnosis import diagnose
from training.fit import baseline_loss, evaluate, fit, metric_name
from training.pipeline import apply_defaults, note_table, resolve_lr
from training.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="train one network and write its report")
    add_common_args(p)
    p.add_argument(
        "--out", type=Path, required=True, help="folder for metrics.json, history.csv, curves, report"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    ds = load_from_args(args)
    train_idx, val_idx, test_idx = split_from_args(ds, args)
    args.out.mkdir(parents=True, exist_ok=True)
    note_table(ds, args.out, args.quiet)
    config = apply_defaults(config_from_args(args), ds, len(train_idx), args.explicit)
    if args.lr == "auto":
        config = resolve_lr(ds, train_idx, val_idx, config, args.out, args.quiet)
    result = fit(ds, train_idx, val_idx, config, progress=not args.quiet)
    test = evaluate(result.model, ds, test_idx)
    # A plain dict (weights, config, best epoch and loss, history), as nanoGPT saves it.
    torch.save(
        {
            **result.checkpoint(),
            "labels": ds.labels,
            "feature_names": ds.feature_names,
            "columns": [asdict(c) for c in ds.columns] if ds.columns is not None else None,
            "feature_shape": ds.feature_shape,
            "task": ds.task,
        },
        args.out / "checkpoint.pt",
    )
    verdict = diagnose(result.history, baseline_loss(ds, train_idx))
    metric = metric_name(ds)
    metrics = write_report(
        args.out,
        history=result.history,
        metric=metric,
        test=test,
        best_epoch=result.best_epoch,
        seconds=result.seconds,
        diagnosis=verdict,
        config=config,
        dataset_name=ds.name,
    )
    print(
        f"test {metric}: {metrics[f'test_{metric}']:.4f}  test loss: {metrics['test_loss']:.4f}  "
        f"best epoch: {result.best_epoch}  {result.seconds:.1f} s  diagnosis: {verdict.verdict}  "
        f"-> {args.out}"
    )
    return 0
