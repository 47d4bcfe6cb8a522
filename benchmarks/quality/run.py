"""`python -m benchmarks.quality` (`make quality`): every table -> one held-out split -> our default
ensemble (CLI + server) and the baselines -> scores with SEs -> docs/quality.json, .md and .png.

Options are for development: `--tables a,b` runs a subset; `--extra "--epochs 40"` passes flags to
`ensemble-train` (experiments only: the published figures use default flags); `--no-report` keeps docs/
untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.quality import baselines, ours, report, scoring
from benchmarks.quality.tables import (
    BY_NAME,
    TABLES,
    Table,
    feature_columns,
    holdout_split,
    load,
    needs_table_support,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def column_kinds(table: Table, df: Any) -> dict[str, int]:
    import pandas as pd

    X = df[feature_columns(table, df)]
    numeric, categorical = baselines.split_kinds(X)
    return {
        "numeric": len(numeric),
        "categorical": len(categorical),
        "with_missing": int(X.isna().any().sum()),
        "ignored": len(table.ignore),
        "rows": len(df),
        "classes": int(df[table.target].nunique()) if table.task == "classification" else 0,
        "minority_share": float(df[table.target].value_counts(normalize=True).min())
        if table.task == "classification"
        else float("nan"),
        "numeric_dtypes": bool(all(pd.api.types.is_numeric_dtype(X[c]) for c in X.columns)),
    }


def run_table(
    table: Table, work: Path, extra: list[str], supports_ignore: bool, supports_tables: bool
) -> dict[str, Any]:
    df = load(table)
    train_df, test_df = holdout_split(table, df)
    features = feature_columns(table, df)
    result: dict[str, Any] = {
        "table": table.name,
        "source": table.source,
        "task": table.task,
        "target": table.target,
        "note": table.note,
        "tags": list(table.tags),
        "train_rows": len(train_df),
        "test_rows": len(test_df),
        **column_kinds(table, df),
    }
    y_test = test_df[table.target].to_numpy()
    preds: dict[str, scoring.Prediction] = {}
    seconds: dict[str, float] = {}
    for kind in baselines.BASELINES:
        preds[kind], seconds[kind] = baselines.fit_predict(
            kind, table.task, train_df[features], train_df[table.target], test_df[features]
        )
    if needs_table_support(table, df) and not supports_tables:
        result["ours_skipped"] = "needs text categories or missing values, which the CLI does not take yet"
    else:
        csv = work / f"{table.name}-train.csv"
        ignore = list(table.ignore)
        written = train_df if supports_ignore else train_df.drop(columns=ignore)
        written.to_csv(csv, index=False)
        repository = work / "repository"
        result["load_average_before"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
        trained = ours.train(
            csv, table.target, ignore if supports_ignore else [], repository, table.name, extra
        )
        seconds["ours"] = trained.seconds
        result["load_average_after"] = os.getloadavg()[0]
        preds["ours"] = ours.serve_and_predict(
            repository, table.name, trained.manifest, test_df[features], work / f"{table.name}-server.log"
        )
        result["ours_internal"] = trained.manifest.get("metrics", {}).get("ensemble", {})
    result["scores"] = scoring.summarize(table.task, y_test, preds)
    result["seconds"] = seconds
    if "ours" in preds:
        metric = scoring.METRICS[table.task][0]
        best = max(baselines.BASELINES, key=lambda k: result["scores"][k][metric])
        diff, se = scoring.paired_difference(table.task, y_test, preds["ours"], preds[best], metric)
        result["vs_best"] = {"baseline": best, "metric": metric, "difference": diff, "se": se}
        ll_diff, ll_se = (None, None)
        if table.task == "classification":
            ll_diff, ll_se = scoring.paired_difference(
                table.task, y_test, preds["ours"], preds["linear"], "log_loss"
            )
        result["log_loss_vs_linear"] = {"difference": ll_diff, "se": ll_se}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    p.add_argument("--tables", help="comma-separated table names (default: all)")
    p.add_argument("--extra", default="", help="extra ensemble-train flags (experiments only)")
    p.add_argument("--out", type=Path, default=DOCS, help="folder for quality.json/.md/.png")
    p.add_argument("--json", type=Path, help="write the results here instead of OUT/quality.json")
    p.add_argument("--no-report", action="store_true", help="write only the JSON")
    p.add_argument("--work", type=Path, help="keep the CSVs, repository and logs here")
    args = p.parse_args(argv)
    names = args.tables.split(",") if args.tables else [t.name for t in TABLES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    extra = shlex.split(args.extra)
    supports_ignore = ours.cli_has_flag("--ignore")
    supports_tables = ours.cli_has_flag("--categorical")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    out_json = args.json or args.out / "quality.json"
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            table = BY_NAME[name]
            t0 = time.perf_counter()
            try:
                results.append(run_table(table, work, extra, supports_ignore, supports_tables))
            except ours.ToolFailed as exc:
                results.append({"table": name, "task": table.task, "error": str(exc)})
            print(report.one_line(results[-1]) + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
            # Written after every table, so that an interrupted run still leaves what it measured.
            meta = {"extra_flags": extra, "total_seconds": time.perf_counter() - started}
            meta |= {"resamples": scoring.RESAMPLES, "tables_planned": names}
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(
                json.dumps({"meta": meta, "results": results}, indent=1, default=float) + "\n"
            )
            if not args.no_report:
                report.write(results, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
