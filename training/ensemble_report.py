"""The ensemble's report folder: `report.md` (members, ensemble vs mean of members, diagnoses) and
`curves.png` (every member's training/validation loss and validation metric per epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.ensemble import EnsembleOutcome


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def summary_rows(outcome: EnsembleOutcome) -> list[list[str]]:
    """Header and rows: each member, the mean of the members, and the ensemble, on the test rows."""
    keys = list(outcome.ensemble_metrics)
    rows = [["member", "arch", "seed", "best epoch", "train s", *(f"test {k}" for k in keys)]]
    for m in outcome.members:
        rows.append(
            [
                str(m.index),
                m.config.arch,
                str(m.config.seed),
                f"{m.best_epoch}/{len(m.history)}",
                f"{m.seconds:.1f}",
                *(_fmt(m.test_metrics[k]) for k in keys),
            ]
        )
    rows.append(["mean of members", "", "", "", "", *(_fmt(outcome.mean_member_metrics[k]) for k in keys)])
    rows.append(["ensemble", "", "", "", "", *(_fmt(outcome.ensemble_metrics[k]) for k in keys)])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def plot_members(outcome: EnsembleOutcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in outcome.members:
        epochs = [row["epoch"] for row in m.history]
        line = ax_loss.plot(epochs, [row["val_loss"] for row in m.history], label=f"member {m.index} val")[0]
        ax_loss.plot(
            epochs, [row["train_loss"] for row in m.history], "--", color=line.get_color(), alpha=0.6
        )
        ax_metric.plot(epochs, [row["val_metric"] for row in m.history], label=f"member {m.index}")
    ax_loss.set(xlabel="epoch", ylabel="loss (dashed: train)", yscale="log", title="loss per member")
    ax_metric.set(xlabel="epoch", ylabel=f"validation {outcome.metric}", title="validation metric")
    ax_loss.legend(fontsize=8)
    ax_metric.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_ensemble_report(
    outcome: EnsembleOutcome, out_dir: Path, dataset_name: str, extra: dict[str, Any] | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_members(outcome, out_dir / "curves.png")
    ens, mean = outcome.ensemble_metrics, outcome.mean_member_metrics
    better = {
        k: (ens[k] > mean[k]) if k in ("accuracy", "r2") else (ens[k] < mean[k]) for k in ens
    }  # higher is better for accuracy/R2, lower for log-loss/RMSE
    lines = [
        f"# Ensemble on {dataset_name}",
        "",
        f"{len(outcome.members)} members, one per cross-validation fold of the non-test rows; "
        f"test rows: {outcome.test_rows}; total {outcome.seconds:.1f} s.",
        "Test metrics: the exported ONNX members run by onnxruntime, averaged as the server does.",
        "",
        markdown_table(summary_rows(outcome)),
        "",
        "Ensemble vs mean of members: "
        + ", ".join(f"{k} {'better' if b else 'not better'}" for k, b in better.items()),
        "",
        "## Diagnosis per member",
        "",
    ]
    for m in outcome.members:
        d = m.diagnosis
        lines += [
            f"### member {m.index} ({m.config.arch}, seed {m.config.seed})",
            "",
            f"Diagnosis: {d.verdict}",
        ]
        lines += [f"- {r}" for r in d.reasons] + [f"- advice: {a}" for a in d.advice] + [""]
    if extra:
        lines += ["## Search", "", "```", json.dumps(extra, indent=2, default=str), "```", ""]
    lines += ["## Member configs", ""]
    for m in outcome.members:
        lines.append(f"- member {m.index}: `{json.dumps(m.config.__dict__, default=str)}`")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
