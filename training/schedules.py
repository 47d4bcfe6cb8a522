"""Learning-rate schedules as pure functions of training progress (timm/fastai style).

Every schedule has one signature ``f(t, lr, total, **params) -> float`` where ``t`` is the progress in
epochs (fractional: ``epoch + batch / batches_per_epoch``), ``lr`` the base (peak) rate and ``total`` the
planned number of epochs. `plateau` depends on validation losses, so it is a small stateful class.

`LRSchedule` applies a schedule per optimizer step by writing ``param_group["lr"]`` itself. We do not use
torch's CyclicLR/OneCycleLR: by default they also cycle momentum, which with Adam means cycling beta1.
Here only the learning rate moves; momentum / betas stay as the optimizer set them (no momentum cycling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def constant(t: float, lr: float, total: float) -> float:
    return lr


def step(t: float, lr: float, total: float, step_size: float = 10, gamma: float = 0.5) -> float:
    """Multiply by `gamma` every `step_size` epochs."""
    return lr * gamma ** math.floor(t / step_size)


def _cos(frac: float, hi: float, lo: float) -> float:
    """Half-cosine from `hi` (frac 0) to `lo` (frac 1)."""
    frac = min(max(frac, 0.0), 1.0)
    return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * frac))


def cosine(t: float, lr: float, total: float, min_lr: float = 0.0) -> float:
    """Cosine anneal from `lr` to `min_lr` over `total` epochs."""
    return _cos(t / total, lr, min_lr)


def restarts(
    t: float, lr: float, total: float, t0: float = 10, t_mult: float = 2, min_lr: float = 0.0
) -> float:
    """SGDR: cosine anneals of length t0, t0*t_mult, t0*t_mult^2 ..., each starting again at `lr`."""
    length, start = t0, 0.0
    # validate_params requires t0 > 0 and t_mult >= 1, so each cycle is at least t0 long; the bound
    # guards a direct caller that skipped validation (it would otherwise loop forever).
    for _ in range(MAX_RESTART_CYCLES):
        if t < start + length:
            break
        start += length
        length *= t_mult
    return _cos((t - start) / max(length, 1e-12), lr, min_lr)


def cyclic(t: float, lr: float, total: float, min_lr: float | None = None, step_size: float = 4) -> float:
    """Triangular cycle between `min_lr` (default lr/10) and `lr`; `step_size` epochs per half cycle."""
    lo = lr / 10 if min_lr is None else min_lr
    phase = (t / step_size) % 2.0  # 0 -> 1 rising, 1 -> 2 falling
    frac = phase if phase <= 1 else 2 - phase
    return lo + (lr - lo) * frac


def onecycle(
    t: float, lr: float, total: float, pct_start: float = 0.25, div: float = 25, final_div: float = 1e4
) -> float:
    """Linear warm-up from lr/div to lr over `pct_start` of training, then cosine down to lr/final_div."""
    warm = pct_start * total
    if t < warm:
        return lr / div + (lr - lr / div) * t / warm
    return _cos((t - warm) / max(total - warm, 1e-12), lr, lr / final_div)


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "step": step,
    "cosine": cosine,
    "restarts": restarts,
    "cyclic": cyclic,
    "onecycle": onecycle,
}
SCHEDULE_NAMES = (*SCHEDULES, "plateau")


MAX_RESTART_CYCLES = 10_000

# Allowed parameters per schedule: name -> (low, low inclusive, high, high inclusive, must be an integer).
_Range = tuple[float, bool, float, bool, bool]
_POSITIVE: _Range = (0.0, False, math.inf, False, False)
_NON_NEGATIVE: _Range = (0.0, True, math.inf, False, False)
PARAM_RANGES: dict[str, dict[str, _Range]] = {
    "constant": {},
    "step": {"step_size": _POSITIVE, "gamma": _POSITIVE},
    "cosine": {"min_lr": _NON_NEGATIVE},
    "restarts": {"t0": _POSITIVE, "t_mult": (1.0, True, math.inf, False, False), "min_lr": _NON_NEGATIVE},
    "cyclic": {"min_lr": _NON_NEGATIVE, "step_size": _POSITIVE},
    "onecycle": {"pct_start": (0.0, True, 1.0, True, False), "div": _POSITIVE, "final_div": _POSITIVE},
    "plateau": {
        "factor": (0.0, False, 1.0, True, False),
        "patience": (0.0, True, math.inf, False, True),
        "min_lr": _NON_NEGATIVE,
        "threshold": _NON_NEGATIVE,
    },
}


def _describe(r: _Range) -> str:
    lo, lo_in, hi, hi_in, integer = r
    low = f"{'>=' if lo_in else '>'} {lo:g}"
    text = low if math.isinf(hi) else f"{low} and {'<=' if hi_in else '<'} {hi:g}"
    return f"an integer {text}" if integer else f"a finite number {text}"


def validate_params(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError (one line) for an unknown name or an out-of-range/non-finite value for `name`."""
    if name not in PARAM_RANGES:
        raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULE_NAMES)}")
    allowed = PARAM_RANGES[name]
    for key, value in params.items():
        if key not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise ValueError(f"bad parameter for schedule {name!r}: {key!r} is unknown (it takes {takes})")
        r = allowed[key]
        lo, lo_in, hi, hi_in, integer = r
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        ok = (
            math.isfinite(v)
            and (v >= lo if lo_in else v > lo)
            and (v <= hi if hi_in else v < hi)
            and (not integer or v.is_integer())
        )
        if not ok:
            must = _describe(r)
            raise ValueError(f"schedule {name!r} parameter {key}={value} is invalid: it must be {must}")


class Plateau:
    """Reduce the rate by `factor` when the validation loss has not improved for `patience` epochs."""

    def __init__(
        self, lr: float, factor: float = 0.1, patience: int = 5, min_lr: float = 1e-6, threshold: float = 1e-4
    ) -> None:
        self.lr, self.factor, self.patience, self.min_lr, self.threshold = (
            lr,
            factor,
            patience,
            min_lr,
            threshold,
        )
        self.best = math.inf
        self.bad_epochs = 0

    def update(self, val_loss: float) -> float:
        """Record one epoch's validation loss; return the rate for the next epoch."""
        if val_loss < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.lr = max(self.lr * self.factor, self.min_lr)
                self.bad_epochs = 0
        return self.lr


class LRSchedule:
    """Drives one optimizer: `at_step(t)` before each batch, `end_epoch(val_loss)` after each epoch."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, name: str, lr: float, total: float, params: dict[str, Any]
    ) -> None:
        if name not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULE_NAMES)}")
        validate_params(name, params)
        self.optimizer, self.name, self.lr, self.total, self.params = optimizer, name, lr, total, params
        try:  # fail early, with a clear message, on a parameter the schedule does not take
            self.plateau = Plateau(lr, **params) if name == "plateau" else None
            if name != "plateau":
                SCHEDULES[name](0.0, lr, total, **params)
        except TypeError as e:
            raise ValueError(f"bad parameter for schedule {name!r}: {e}") from None

    def rate(self, t: float) -> float:
        if self.plateau is not None:
            return self.plateau.lr
        return SCHEDULES[self.name](t, self.lr, self.total, **self.params)

    def at_step(self, t: float) -> float:
        lr = self.rate(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def end_epoch(self, val_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.update(val_loss)
