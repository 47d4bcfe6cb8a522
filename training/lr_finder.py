"""LR range test (Smith 2015; fastai's `lr_find`): raise the rate exponentially, watch the loss.

Suggestion rules are standalone pure functions with one signature ``rule(lrs, losses) -> float`` (fastai
style). The default is `valley`: the rate two thirds down the longest steadily falling stretch of the
smoothed loss curve; it is robust to the noisy start and to the late minimum that `minimum_div10`
chases, and less aggressive than `steepest`.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.data import Dataset
from training.fit import (
    FitConfig,
    batches,
    evaluate,
    setup_training,
)


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """Two thirds of the way down the longest run of decreasing loss (fastai's `valley`)."""
    n = len(losses)
    if n < 2:
        return float(lrs[0])
    # Longest decreasing subsequence ending at each point, O(n^2) exactly as fastai does (n ~ 100).
    lds = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[end] < lds[i]:
                end = i
                start = end - lds[end]
    sections = (end - start) / 3
    return float(lrs[start + int(sections) + int(sections / 2)])


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """Where the loss falls fastest against log10(lr)."""
    if len(losses) < 3:
        return float(lrs[0])
    grads = np.gradient(np.asarray(losses, dtype=float), np.log10(np.asarray(lrs, dtype=float)))
    return float(lrs[int(np.argmin(grads))])


def minimum_div10(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the rate at the loss minimum (the classic rule of thumb)."""
    return float(lrs[int(np.argmin(losses))]) / 10


SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": valley,
    "steepest": steepest,
    "minimum_div10": minimum_div10,
}
DEFAULT_SUGGESTION = "valley"


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # EMA-smoothed, bias-corrected
    raw_losses: list[float]
    val_steps: list[int] = field(default_factory=list)  # step indices where validation was measured
    val_metric: list[float] = field(default_factory=list)  # accuracy (classification) or rmse
    metric: str = "accuracy"
    suggestion: float = float("nan")
    rule: str = DEFAULT_SUGGESTION
    suggestions: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def range_test(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    validate: Callable[[], float] | None = None,
    val_every: int = 10,
) -> tuple[list[float], list[float], list[float], list[int], list[float]]:
    """Run the test on `model`/`optimizer`, then put both back exactly as they were."""
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    lrs: list[float] = []
    smooth: list[float] = []
    raw: list[float] = []
    val_steps: list[int] = []
    val_metric: list[float] = []
    avg, best = 0.0, math.inf
    try:
        model.train()
        for i in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (i / max(num_steps - 1, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = next_batch()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))  # bias correction: the EMA starts at 0
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            if validate is not None and (i % val_every == 0 or i == num_steps - 1):
                val_steps.append(i)
                val_metric.append(validate())
                model.train()
            if not math.isfinite(smoothed) or smoothed > diverge * best:
                break  # diverged: the rest of the curve says nothing
            best = min(best, smoothed)
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        model.train(was_training)  # train/eval mode restored too (eval: BatchNorm running stats, no dropout)
    return lrs, smooth, raw, val_steps, val_metric


def lr_find(
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: FitConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    rule: str = DEFAULT_SUGGESTION,
) -> LRFindResult:
    """The range test on a fresh model built from `config`; suggests a rate with `rule`."""
    if rule not in SUGGESTIONS:
        raise ValueError(f"unknown suggestion rule {rule!r}: use one of {', '.join(SUGGESTIONS)}")
    config.validate()
    t0 = time.perf_counter()
    model, optimizer, loss_fn, X, y, generator = setup_training(ds, train_idx, config)
    stream: list[torch.Tensor] = []

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        if not stream:
            stream.extend(batches(len(train_idx), config.batch_size, generator))
        b = stream.pop(0)
        return X[b], y[b]

    metric = "accuracy" if ds.task == "classification" else "rmse"
    lrs, smooth, raw, val_steps, val_metric = range_test(
        model,
        optimizer,
        next_batch,
        loss_fn,
        start_lr=start_lr,
        end_lr=end_lr,
        num_steps=num_steps,
        validate=lambda: evaluate(model, ds, val_idx)[metric],
    )
    # As fastai: judge without the first 10% (noise while the EMA warms up) and the last few points.
    lo, hi = (num_steps // 10, len(lrs) - 5) if len(lrs) - 5 - num_steps // 10 >= 10 else (0, len(lrs))
    suggestions = {name: f(lrs[lo:hi], smooth[lo:hi]) for name, f in SUGGESTIONS.items()}
    return LRFindResult(
        lrs,
        smooth,
        raw,
        val_steps,
        val_metric,
        metric,
        suggestions[rule],
        rule,
        suggestions,
        time.perf_counter() - t0,
    )


def write_lr_find(result: LRFindResult, out_dir: Path) -> None:
    """`lr_find.csv` (step, lr, loss, smoothed loss, validation metric) and `lr_find.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    val = dict(zip(result.val_steps, result.val_metric, strict=True))
    with open(out_dir / "lr_find.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss", f"val_{result.metric}"])
        for i, (lr, raw, sm) in enumerate(zip(result.lrs, result.raw_losses, result.losses, strict=True)):
            w.writerow([i, f"{lr:.6g}", f"{raw:.6g}", f"{sm:.6g}", f"{val[i]:.6g}" if i in val else ""])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, label="smoothed training loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.axvline(
        result.suggestion, color="red", linestyle="--", label=f"{result.rule}: {result.suggestion:.2e}"
    )
    if result.val_steps:
        ax2 = ax.twinx()
        ax2.plot([result.lrs[i] for i in result.val_steps], result.val_metric, "o-", color="green", ms=3)
        ax2.set_ylabel(f"validation {result.metric}", color="green")
    ax.legend(loc="upper left")
    ax.set_title("LR range test")
    fig.tight_layout()
    fig.savefig(out_dir / "lr_find.png", dpi=100)
    plt.close(fig)
