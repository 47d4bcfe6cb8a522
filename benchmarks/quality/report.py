"""The results as text: one line per table while running, the table and plot of docs/quality.md.

docs/quality.md has hand-written sections (what was decided and why); only the part between the
``<!-- results -->`` markers is rewritten by a run, so the prose survives `make quality`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.quality.scoring import METRICS

BEGIN, END = "<!-- results: begin (written by make quality) -->", "<!-- results: end -->"
MODELS = ("ours", "linear", "hgb")


def _fmt(scores: dict[str, float] | None, metric: str) -> str:
    if not scores or metric not in scores:
        return "—"
    digits = 3 if metric != "rmse" else 4
    return f"{scores[metric]:.{digits}f} ± {scores[metric + '_se']:.{digits}f}"


def verdict(r: dict[str, Any]) -> str:
    """`beats` / `ties` (within one paired SE) / `below` against the best baseline, on the main metric."""
    v = r.get("vs_best")
    if not v:
        return "not run"
    if v["difference"] >= 0:
        return "at or above"
    if v["difference"] >= -v["se"]:
        return "within 1 SE"
    return "below"


def one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['table']:>16}: FAILED {r['error'][:300]}"
    metric = METRICS[r["task"]][0]
    parts = [f"{m} {_fmt(r['scores'].get(m), metric)}" for m in MODELS if m in r["scores"]]
    secs = r["seconds"].get("ours")
    tail = f"train {secs:.0f} s" if secs is not None else r.get("ours_skipped", "")
    if r["task"] == "classification":
        ll = [f"{m} {_fmt(r['scores'].get(m), 'log_loss')}" for m in MODELS if m in r["scores"]]
        parts.append("log-loss " + ", ".join(ll))
    return f"{r['table']:>16} {metric}: " + "; ".join(parts) + f"  -> {verdict(r)}; {tail}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    head = (
        "| table | task | rows (train/test) | columns | ours | linear | HGB | ours − best (paired SE) | "
        "ours log-loss | linear log-loss | HGB log-loss | train s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"| {r['table']} | {r['task']} | failed: {r['error'][:120]} |" + " |" * 9)
            continue
        metric = METRICS[r["task"]][0]
        s = r["scores"]
        cols = f"{r['numeric']} num, {r['categorical']} cat"
        if r["with_missing"]:
            cols += f", {r['with_missing']} with missing"
        task = r["task"] if r["task"] == "regression" else f"{r['classes']} classes"
        if r["task"] == "classification" and r["minority_share"] < 0.15:
            task += f" ({100 * r['minority_share']:.0f}% minority)"
        v = r.get("vs_best")
        diff = f"{v['difference']:+.3f} ({v['se']:.3f}) vs {v['baseline']}: {verdict(r)}" if v else "—"
        ll = [_fmt(s.get(m), "log_loss") if r["task"] == "classification" else "—" for m in MODELS]
        secs = r["seconds"].get("ours")
        lines.append(
            f"| {r['table']} | {task} | {r['train_rows']}/{r['test_rows']} | {cols} | "
            f"{metric} {_fmt(s.get('ours'), metric)} | {_fmt(s.get('linear'), metric)} | "
            f"{_fmt(s.get('hgb'), metric)} | {diff} | {' | '.join(ll)} | "
            f"{f'{secs:.0f}' if secs is not None else r.get('ours_skipped', '—')} |"
        )
    return head + "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per task: the main metric of each model with its SE as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if "scores" in r]
    tasks = [t for t in ("classification", "regression") if any(r["task"] == t for r in done)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    colors = {"ours": "tab:red", "linear": "tab:blue", "hgb": "tab:green"}
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in done if r["task"] == task]
        metric = METRICS[task][0]
        width = 0.27
        for j, m in enumerate(MODELS):
            xs, ys, es = [], [], []
            for i, r in enumerate(rows):
                s = r["scores"].get(m)
                if s:
                    xs.append(i + (j - 1) * width)
                    ys.append(s[metric])
                    es.append(s[metric + "_se"])
            ax.bar(xs, ys, width, yerr=es, capsize=2, color=colors[m], label=m)
        ax.set_xticks(range(len(rows)), [r["table"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel(f"held-out {'accuracy' if metric == 'accuracy' else 'R²'} (± 1 SE)")
        lows = [r["scores"][m][metric] for r in rows for m in MODELS if m in r["scores"]]
        finite = [v for v in lows if math.isfinite(v)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
        ax.set_title(task)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "quality.png")
    block = (
        f"{BEGIN}\n{markdown_table(results)}\n![held-out scores](quality.png)\n\n"
        f"Flags given to ensemble-train beyond data/target/repository/name/ignore: "
        f"{' '.join(meta['extra_flags']) or 'none'}. Whole run: {meta['total_seconds'] / 60:.1f} min.\n{END}"
    )
    md = out / "quality.md"
    text = md.read_text() if md.exists() else "# Quality: the default ensemble against simple baselines\n\n"
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md.write_text(text)
