"""A fit's report folder: curves.png, report.md (with `Diagnosis: ...`), metrics.json, history.csv."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.diagnosis import Diagnosis

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "train_metric", "val_metric")


def write_history(history: Sequence[dict[str, float]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_curves(
    history: Sequence[dict[str, float]], metric: str, path: Path, best_epoch: int | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "metric", metric)):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    axes[2].plot(epochs, [r["lr"] for r in history], color="purple")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate (last step of each epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: Path,
    *,
    history: Sequence[dict[str, float]],
    metric: str,
    test: dict[str, float],
    best_epoch: int,
    seconds: float,
    diagnosis: Diagnosis,
    config: Any,
    dataset_name: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the four files; return the metrics.json content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        f"test_{metric}": test[metric],
        "test_loss": test["loss"],
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seconds": round(seconds, 3),
    }
    metrics.update({f"test_{k}": v for k, v in test.items() if f"test_{k}" not in metrics})
    metrics["diagnosis"] = diagnosis.verdict
    if extra:
        metrics.update(extra)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_history(history, out_dir / "history.csv")
    plot_curves(history, metric, out_dir / "curves.png", best_epoch)
    cfg = asdict(config) if hasattr(config, "__dataclass_fields__") else dict(config)
    lines = [
        f"# Training report: {dataset_name}",
        "",
        f"Diagnosis: {diagnosis.verdict}",
        "",
        "## Why",
        *[f"- {r}" for r in diagnosis.reasons],
        "",
        "## Advice",
        *[f"- {a}" for a in diagnosis.advice],
        "",
        "## Test metrics",
        *[f"- {k}: {v:.4f}" for k, v in test.items()],
        f"- best epoch: {best_epoch} of {len(history)} run; {seconds:.1f} s",
        "",
        "## Configuration",
        *[f"- {k}: {v}" for k, v in cfg.items()],
        "",
        "![curves](curves.png)",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    return metrics
