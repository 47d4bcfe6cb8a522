"""Which defaults should `ensemble-train ensemble` use on small tables? Bounded runs, decided by measurement.

Protocol (the benchmark's test rows are never touched): for each table, only the *training* part of the
benchmark split is used; it is cut again into inner-train (75%) and inner-validation (25%, seed 1). The
ensemble is trained on inner-train exactly as `training.ensemble.train_ensemble` does (an internal hold-out
of `test_fraction`, K folds of the rest, one member per fold early-stopping on its fold) but in process and
without ONNX export, and scored on inner-validation by averaging the members' probabilities / values.

    PYTHONPATH=. python -m benchmarks.experiments.quality_defaults --variants base,steps --tables anes96,auto
Each line of output is one (variant, table) with the score, log-loss for classification, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.quality import baselines, scoring
from benchmarks.quality.tables import BY_NAME, Table, feature_columns, holdout_split, load
from training.data import ColumnOverrides, Dataset, kfold, load_dataset, split
from training.defaults import recipe
from training.fit import FitConfig, fit, predict

INNER_SEED = 1
ENSEMBLE_EPOCHS = 25  # today's `ensemble` default (training.ensemble.ENSEMBLE_EPOCHS)


def steps_epochs(n_train: int, batch: int, min_steps: int, lo: int = 25, hi: int = 400) -> int:
    """Epochs that give each member at least `min_steps` optimizer steps."""
    per_epoch = max(1, -(-n_train // batch))
    return int(np.clip(-(-min_steps // per_epoch), lo, hi))


def variant(name: str, n: int, task: str, custom: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """(FitConfig overrides, internal test fraction) of a named variant for `n` training rows; a custom
    variant is a JSON object of overrides (``test_fraction`` among them, default 0.15)."""
    if name in custom:
        spec = {"epochs": ENSEMBLE_EPOCHS, **custom[name]}
        return {k: v for k, v in spec.items() if k != "test_fraction"}, float(spec.get("test_fraction", 0.15))
    member_rows = int(0.8 * 0.85 * n)
    base: dict[str, Any] = {"epochs": ENSEMBLE_EPOCHS}
    table = {
        "base": (base, 0.15),
        "recipe": ({"recipe": True}, 0.15),
        "notest": (base, 0.0),
        "steps": ({"epochs": steps_epochs(member_rows, 128, 1500)}, 0.15),
        "steps-notest": ({"epochs": steps_epochs(int(0.8 * n), 128, 1500)}, 0.0),
        "batch32": ({"epochs": ENSEMBLE_EPOCHS, "batch_size": 32}, 0.15),
        "wd": ({"epochs": ENSEMBLE_EPOCHS, "optimizer": "adamw", "weight_decay": 1e-2}, 0.15),
        "w128": ({"epochs": ENSEMBLE_EPOCHS, "width": 128}, 0.15),
        "drop01": ({"epochs": ENSEMBLE_EPOCHS, "dropout": 0.1}, 0.15),
        "drop03": ({"epochs": ENSEMBLE_EPOCHS, "dropout": 0.3}, 0.15),
        "cosine": ({"epochs": ENSEMBLE_EPOCHS, "schedule": "cosine"}, 0.15),
        "lr1e-3": ({"epochs": ENSEMBLE_EPOCHS, "lr": 1e-3}, 0.15),
    }
    if name not in table:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(table)}")
    return table[name]


def table_dataset(table: Table, df: Any) -> Dataset:
    """The rows as the CLI reads them: written to a CSV and loaded with the table's `--ignore`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{table.name}.csv"
        df.to_csv(path, index=False)
        ds = load_dataset(str(path), table.target, kinds=ColumnOverrides(ignore=tuple(table.ignore)))
    if len(ds) != len(df):
        raise ValueError(f"{table.name}: the loader dropped rows, so inner indices would not line up")
    return ds


def ensemble_predict(
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    overrides: dict[str, Any],
    test_fraction: float,
    members: int,
) -> scoring.Prediction:
    sub = replace(ds, X=ds.X[train_idx], y=ds.y[train_idx])
    idx = np.arange(len(sub))
    if test_fraction > 0:
        a, b, _test = split(sub, 0.5 * (1 - test_fraction), test_fraction, seed=0)
        idx = np.sort(np.concatenate([a, b]))
    use_recipe = bool(overrides.pop("recipe", False))
    outs = []
    for i, (tr, va) in enumerate(kfold(sub, idx, members, seed=0)):
        config = FitConfig(epochs=ENSEMBLE_EPOCHS, seed=i)
        if use_recipe:  # what the pipeline does: the data-size recipe for fields the user did not set
            n_classes = len(ds.labels) if ds.labels is not None else None
            config = replace(config, **recipe(len(tr), int(ds.X.shape[1]), ds.task, n_classes))
        config = replace(config, **overrides)
        result = fit(sub, tr, va, config, progress=False)
        out = predict(result.model, ds.X[val_idx])
        outs.append(torch.softmax(torch.from_numpy(out), 1).numpy() if ds.task == "classification" else out)
    mean = np.mean(outs, axis=0)
    if ds.task == "classification":
        return scoring.Prediction(proba=mean, classes=list(ds.labels or []))
    return scoring.Prediction(values=mean[:, 0])


def run_split(table: Table, seed: int, args: argparse.Namespace, custom: dict[str, dict[str, Any]]) -> None:
    from sklearn.model_selection import train_test_split

    df, _test_rows_never_used = holdout_split(table, load(table))
    strat = df[table.target].astype(str) if table.task == "classification" else None
    inner_train, inner_val = (
        np.sort(part)
        for part in train_test_split(np.arange(len(df)), test_size=0.25, random_state=seed, stratify=strat)
    )
    ds = table_dataset(table, df)
    y_val = df[table.target].to_numpy()[inner_val]
    metric = scoring.METRICS[table.task][0]
    runs: dict[str, tuple[scoring.Prediction, float]] = {}
    if args.baselines:
        feats = feature_columns(table, df)
        t = df.iloc[inner_train]
        for kind in baselines.BASELINES:
            runs[kind] = baselines.fit_predict(
                kind, table.task, t[feats], t[table.target], df.iloc[inner_val][feats]
            )
    for v in args.variants.split(","):
        overrides, tf = variant(v, len(inner_train), table.task, custom)
        started = time.perf_counter()
        pred = ensemble_predict(ds, inner_train, inner_val, overrides, tf, args.members)
        runs[v] = (pred, time.perf_counter() - started)
    preds = {k: v[0] for k, v in runs.items()}
    scores = scoring.summarize(table.task, y_val, preds)
    first = args.variants.split(",")[0]
    for k, (_pred, secs) in runs.items():
        s = scores[k]
        ll = f"  log_loss {s['log_loss']:.4f}" if table.task == "classification" else ""
        d, se = scoring.paired_difference(table.task, y_val, preds[k], preds[first], metric)
        print(
            f"{table.name:>16} s{seed} {k:>14}: {metric} {s[metric]:.4f} ± {s[metric + '_se']:.4f}{ll}"
            f"  vs {first} {d:+.4f} ({se:.4f})  {secs:.0f} s",
            flush=True,
        )
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(
                    json.dumps({"table": table.name, "seed": seed, "variant": k, "seconds": secs, **s}) + "\n"
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tables", required=True)
    p.add_argument("--variants", default="base")
    p.add_argument("--members", type=int, default=5)
    p.add_argument(
        "--custom", action="append", default=[], metavar="NAME=JSON", help="a variant of overrides"
    )
    p.add_argument("--repeats", type=int, default=1, help="inner splits (seeds 1..R)")
    p.add_argument("--baselines", action="store_true", help="also score the baselines on the inner split")
    p.add_argument("--jsonl", type=Path, help="append one JSON line per result here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    custom = {k: json.loads(v) for k, _, v in (c.partition("=") for c in args.custom)}
    for name in args.tables.split(","):
        for repeat in range(args.repeats):
            run_split(BY_NAME[name], INNER_SEED + repeat, args, custom)
    return 0


if __name__ == "__main__":
    sys.exit(main())
