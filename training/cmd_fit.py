"""`ensemble-train fit`: one network, its curves, diagnosis and test metrics."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from training.args import add_common_args, apply_threads, config_from_args, load_from_args, split_from_args
from training.data import Dataset
from training.diagnosis import diagnose
from training.fit import FitConfig, evaluate, fit, metric_name
from training.lr_finder import lr_find, write_lr_find
from training.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fit", help="train one network and write its report")
    add_common_args(p)
    p.add_argument(
        "--out", type=Path, required=True, help="folder for metrics.json, history.csv, curves, report"
    )
    p.set_defaults(func=run)


def baseline_loss(ds: Dataset, train_idx: np.ndarray) -> float:
    """The loss of a model that knows only the training distribution of the target."""
    if ds.task == "classification":
        p = np.bincount(ds.y[train_idx], minlength=ds.n_outputs) / len(train_idx)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())  # entropy: log(C) when balanced
    return float(ds.y[train_idx].var(axis=0).mean())


def resolve_lr(
    ds: Dataset, args: argparse.Namespace, train_idx: np.ndarray, val_idx: np.ndarray
) -> FitConfig:
    """The config, running the LR range test first when `--lr auto` (its files go to --out)."""
    config = config_from_args(args)
    if args.lr != "auto":
        return config
    found = lr_find(ds, train_idx, val_idx, config)
    write_lr_find(found, args.out)
    if not math.isfinite(found.suggestion):
        raise ValueError("the LR range test gave no usable suggestion; pass --lr explicitly")
    if not args.quiet:
        print(f"lr range test: suggested lr {found.suggestion:.3g} ({found.rule})", file=sys.stderr)
    config.lr = found.suggestion
    return config


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    ds = load_from_args(args)
    train_idx, val_idx, test_idx = split_from_args(ds, args)
    args.out.mkdir(parents=True, exist_ok=True)
    config = resolve_lr(ds, args, train_idx, val_idx)
    result = fit(ds, train_idx, val_idx, config, progress=not args.quiet)
    test = evaluate(result.model, ds, test_idx)
    # A plain dict (weights, config, best epoch and loss, history), as nanoGPT saves it.
    torch.save(
        {
            **result.checkpoint(),
            "labels": ds.labels,
            "feature_names": ds.feature_names,
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
