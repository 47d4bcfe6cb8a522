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
AXIS_FLOOR = -0.1  # the accuracy / R² difference plot's left edge


def _fmt(scores: dict[str, float] | None, metric: str) -> str:
    if not scores or metric not in scores:
        return "—"
    if metric == "rmse":  # in the target's units, which range from 0.09 to 360 here
        return f"{scores[metric]:.4g} ± {scores[metric + '_se']:.2g}"
    return f"{scores[metric]:.3f} ± {scores[metric + '_se']:.3f}"


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


def _columns(r: dict[str, Any]) -> str:
    cols = f"{r['numeric']} num, {r['categorical']} cat"
    if r["with_missing"]:
        cols += f" ({r['with_missing']} with missing)"
    return cols


def _seconds(r: dict[str, Any]) -> str:
    sec = r["seconds"]
    ours = f"{sec['ours']:.0f}" if "ours" in sec else "not run"
    return f"{ours} / {sec.get('linear', math.nan):.1f} / {sec.get('hgb', math.nan):.1f}"


def _diff(v: dict[str, Any] | None, digits: int = 3) -> str:
    if not v or v.get("difference") is None:
        return "—"
    return f"{v['difference']:+.{digits}f} ({v['se']:.{digits}f})"


def _vs(r: dict[str, Any]) -> str:
    v = r.get("vs_best")
    return f"{_diff(v)} vs {v['baseline']} | {verdict(r)}" if v else "— | not run"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One table per task; the verdict column compares ours with the better baseline on the main metric."""
    out = []
    failed = [r for r in results if "error" in r]
    cls = [r for r in results if "error" not in r and r["task"] == "classification"]
    reg = [r for r in results if "error" not in r and r["task"] == "regression"]
    if cls:
        out.append(
            "| table | rows train/test | columns | classes | accuracy: ours | linear | HGB | "
            "ours − best (SE) | verdict | log-loss: ours | linear | HGB | ours − linear (SE) | "
            "train s: ours / linear / HGB |\n" + "|---" * 14 + "|"
        )
        for r in cls:
            s = r["scores"]
            classes = f"{r['classes']}"
            if r["minority_share"] < 0.15:
                classes += f" ({100 * r['minority_share']:.0f}% minority)"
            out.append(
                f"| {r['table']} | {r['train_rows']}/{r['test_rows']} | {_columns(r)} | {classes} | "
                + " | ".join(_fmt(s.get(m), "accuracy") for m in MODELS)
                + f" | {_vs(r)} | "
                + " | ".join(_fmt(s.get(m), "log_loss") for m in MODELS)
                + f" | {_diff(r.get('log_loss_vs_linear'))} | {_seconds(r)} |"
            )
        out.append("")
    if reg:
        out.append(
            "| table | rows train/test | columns | R²: ours | linear | HGB | ours − best (SE) | verdict | "
            "RMSE: ours | linear | HGB | train s: ours / linear / HGB |\n" + "|---" * 12 + "|"
        )
        for r in reg:
            s = r["scores"]
            out.append(
                f"| {r['table']} | {r['train_rows']}/{r['test_rows']} | {_columns(r)} | "
                + " | ".join(_fmt(s.get(m), "r2") for m in MODELS)
                + f" | {_vs(r)} | "
                + " | ".join(_fmt(s.get(m), "rmse") for m in MODELS)
                + f" | {_seconds(r)} |"
            )
        out.append("")
    for r in failed:
        out.append(f"- {r['table']}: failed: {r['error'][:300]}")
    return "\n".join(out) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Left: ours − best baseline on accuracy / R², ±1 paired SE. Right: log-loss, ours − linear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.get("vs_best")]
    cls = [r for r in done if r["task"] == "classification"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(done), 4) + 1.5), squeeze=False)
    ax = axes[0][0]
    ys = list(range(len(done)))[::-1]
    for y, r in zip(ys, done, strict=True):
        v = r["vs_best"]
        color = {"at or above": "tab:green", "within 1 SE": "tab:orange", "below": "tab:red"}[verdict(r)]
        if v["difference"] < AXIS_FLOOR:  # far off the scale: an arrow at the edge with the value beside it
            ax.plot(AXIS_FLOOR, y, marker="<", color=color, ms=9)
            ax.annotate(
                f"{v['difference']:+.2f}", (AXIS_FLOOR, y), xytext=(8, -4), textcoords="offset points"
            )
        else:
            ax.errorbar(v["difference"], y, xerr=v["se"], fmt="o", color=color, capsize=3)
    ax.set_xlim(left=AXIS_FLOOR * 1.05)
    ax.set_yticks(
        ys,
        [
            f"{r['table']} ({'acc' if r['task'] == 'classification' else 'R²'} vs {r['vs_best']['baseline']})"
            for r in done
        ],
    )
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel("ours − best baseline (± 1 paired SE); right is better")
    ax.set_title("accuracy / R²")
    ax = axes[0][1]
    ys = list(range(len(cls)))[::-1]
    for y, r in zip(ys, cls, strict=True):
        v = r["log_loss_vs_linear"]
        color = (
            "tab:green"
            if v["difference"] <= 0
            else ("tab:orange" if v["difference"] <= v["se"] else "tab:red")
        )
        ax.errorbar(v["difference"], y, xerr=v["se"], fmt="o", color=color, capsize=3)
    ax.set_yticks(ys, [r["table"] for r in cls])
    ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel("ours − linear (± 1 paired SE); left is better")
    ax.set_title("log-loss (classification)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(results: list[dict[str, Any]]) -> str:
    """The 1-minute load average around our trainings: the machine is shared, and times depend on it."""
    loads = [r[k] for r in results for k in ("load_average_before", "load_average_after") if k in r]
    if not loads:
        return ""
    return f" Load average (2 cores) around the trainings: {min(loads):.1f} to {max(loads):.1f}."


def write(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "quality.png")
    block = (
        f"{BEGIN}\n{markdown_table(results)}\n![held-out scores](quality.png)\n\n"
        f"Flags given to ensemble-train beyond data/target/repository/name/ignore: "
        f"{' '.join(meta['extra_flags']) or 'none'}. Whole run: {meta['total_seconds'] / 60:.1f} min."
        f"{_load(results)}\n{END}"
    )
    md = out / "quality.md"
    text = md.read_text() if md.exists() else "# Quality: the default ensemble against simple baselines\n\n"
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + block + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md.write_text(text)
