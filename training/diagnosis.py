"""Read the learning curves: underfitting, overfitting or a good fit, with advice. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# Overfitting: the final validation loss sits this far (relative) above its minimum...
OVERFIT_MARGIN = 0.10
# ...while the training loss kept falling after that minimum by at least this fraction.
TRAIN_STILL_FALLING = 0.05
# Underfitting: the training loss ends above this fraction of its start (it barely moved)...
SLOW_FALL = 0.5
# ...or above this fraction of the chance-level baseline (log(C) for C classes).
HIGH_VS_BASELINE = 0.25
# Underfitting too: both losses still fell by this fraction over the last quarter of training.
STILL_IMPROVING = 0.10

ADVICE = {
    "underfitting": [
        "train longer (--epochs) or with a higher learning rate (try --lr auto: the LR range test)",
        "give the network more capacity (--width, --depth) "
        "and less regularization (--dropout, --weight-decay)",
        "use a schedule that anneals, e.g. --schedule onecycle or cosine",
    ],
    "overfitting": [
        "regularize more: raise --dropout or --weight-decay (with --optimizer adamw for decoupled decay)",
        "use a smaller network (--width, --depth) or more training data",
        "rely on early stopping (--patience): the best epoch's weights are the ones kept",
    ],
    "good fit": [
        "nothing pressing; an ensemble of a few such members (different seeds) usually adds a little more",
    ],
}


@dataclass
class Diagnosis:
    verdict: str  # "underfitting" | "overfitting" | "good fit"
    reasons: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def diagnose(history: Sequence[dict[str, float]], baseline_loss: float | None = None) -> Diagnosis:
    """Judge a run from its history rows (`train_loss`, `val_loss` per epoch).

    `baseline_loss` is the loss of a model that knows nothing (log(C) for C balanced classes; the
    target's variance for regression); without it only the relative rules apply.
    """
    train = [float(r["train_loss"]) for r in history]
    val = [float(r["val_loss"]) for r in history]
    if len(train) < 3:
        return Diagnosis(
            "underfitting",
            ["fewer than 3 epochs: too short to judge, and too short to learn"],
            ADVICE["underfitting"],
        )
    best = min(range(len(val)), key=val.__getitem__)
    reasons: list[str] = []

    # Overfitting first: a rising validation loss matters even if the training loss is still high.
    if best < len(val) - 1:
        rise = (val[-1] - val[best]) / max(abs(val[best]), 1e-12)
        train_fall = (train[best] - train[-1]) / max(abs(train[best]), 1e-12)
        if rise > OVERFIT_MARGIN and train_fall > TRAIN_STILL_FALLING:
            reasons.append(
                f"validation loss rose {rise:.0%} after its minimum at epoch {best + 1} "
                f"while training loss kept falling ({train_fall:.0%} lower)"
            )
            return Diagnosis("overfitting", reasons, ADVICE["overfitting"])

    if train[-1] > SLOW_FALL * train[0]:
        reasons.append(f"training loss only fell from {train[0]:.3g} to {train[-1]:.3g}")
    if baseline_loss is not None and train[-1] > HIGH_VS_BASELINE * baseline_loss:
        reasons.append(
            f"training loss {train[-1]:.3g} is still high against the chance-level loss {baseline_loss:.3g}"
        )
    quarter = max(len(train) // 4, 1)
    t_gain = (train[-quarter - 1] - train[-1]) / max(abs(train[-quarter - 1]), 1e-12)
    v_gain = (val[-quarter - 1] - val[-1]) / max(abs(val[-quarter - 1]), 1e-12)
    if t_gain > STILL_IMPROVING and v_gain > STILL_IMPROVING:
        reasons.append(
            f"both losses were still falling over the last {quarter} epochs "
            f"(train {t_gain:.0%}, validation {v_gain:.0%}): training stopped too early"
        )
    if reasons:
        return Diagnosis("underfitting", reasons, ADVICE["underfitting"])
    return Diagnosis(
        "good fit",
        [f"validation loss reached its minimum {val[best]:.3g} at epoch {best + 1} and stayed near it"],
        ADVICE["good fit"],
    )
