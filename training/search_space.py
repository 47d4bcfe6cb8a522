"""The hyperparameter search space, how stage 2 narrows it (pure), and how a point becomes a FitConfig.

Every trial of a study records its parameters against the same *wide* Optuna distributions (Optuna refuses
a categorical whose choices change between trials, and importances need one space). Stage 2 narrows the
space by sampling only inside a smaller box (`NarrowedSampler`), never by changing the distributions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from training.fit import FitConfig

# Schedules whose end rate the annealing factor sets (plateau depends on the validation curve, so it is
# left to `fit` rather than searched).
SEARCH_SCHEDULES = ("constant", "step", "cosine", "restarts", "cyclic", "onecycle")


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: numeric (low..high, optionally log) or categorical (choices)."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    def distribution(self) -> BaseDistribution:
        if self.categorical:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)


Space = dict[str, Param]


def wide_space(arch: str) -> Space:
    """Stage 1's ranges: wide, log-uniform where the scale matters (rates, decay, sizes)."""
    # CNN width is first-stage channels (doubled per stage); MLP width is hidden units.
    width, depth = ((8, 64), (1, 3)) if arch == "cnn" else ((32, 1024), (1, 4))
    params = [
        Param("lr", 1e-4, 3e-2, log=True),
        Param("anneal", 1e-4, 0.5, log=True),  # final rate / peak rate of the schedule
        Param("weight_decay", 1e-6, 1e-1, log=True),
        Param("batch_size", 16, 512, log=True, integer=True),
        Param("width", *width, log=True, integer=True),
        Param("depth", *depth, integer=True),
        Param("dropout", 0.0, 0.6),
        Param("schedule", choices=SEARCH_SCHEDULES),
        Param("bn_position", choices=("before", "after")),
        Param("optimizer", choices=("adam", "adamw", "sgd")),
    ]
    return {p.name: p for p in params}


def distributions(space: Space) -> dict[str, BaseDistribution]:
    return {name: p.distribution() for name, p in space.items()}


def narrow_space(
    space: Space, top_params: Sequence[Mapping[str, Any]], widen: float = 2.0, min_fraction: float = 0.05
) -> Space:
    """The box around the best trials' parameters, inside `space`.

    Numeric: min..max over `top_params`, then widened: log params divided/multiplied by `widen`; linear
    params padded by (widen - 1)/2 of their span on each side, at least `min_fraction` of the wide range.
    Always clipped to the wide range. Categorical: the choices seen in `top_params` (in the wide order).
    A parameter no top trial has keeps its wide range.
    """
    if widen < 1:
        raise ValueError("widen must be >= 1")
    narrowed: Space = {}
    for name, p in space.items():
        seen = [t[name] for t in top_params if name in t]
        if not seen:
            narrowed[name] = p
        elif p.categorical:
            narrowed[name] = replace(p, choices=tuple(c for c in p.choices if c in seen))
        else:
            lo, hi = float(min(seen)), float(max(seen))
            if p.log:
                lo, hi = lo / widen, hi * widen
            else:
                pad = max((hi - lo) * (widen - 1) / 2, (p.high - p.low) * min_fraction)
                lo, hi = lo - pad, hi + pad
            lo, hi = max(lo, p.low), min(hi, p.high)
            if p.integer:
                lo, hi = math.floor(lo), math.ceil(hi)
            narrowed[name] = replace(p, low=lo, high=hi)
    return narrowed


def space_to_json(space: Space) -> dict[str, Any]:
    return {
        n: {"low": p.low, "high": p.high, "log": p.log, "integer": p.integer, "choices": list(p.choices)}
        for n, p in space.items()
    }


def space_from_json(data: Mapping[str, Any]) -> Space:
    return {
        n: Param(n, d["low"], d["high"], d["log"], d["integer"], tuple(d["choices"])) for n, d in data.items()
    }


def sample_in(p: Param, rng: np.random.Generator) -> Any:
    """A uniform draw (log-uniform for log params) inside `p`'s range or choices."""
    if p.categorical:
        return p.choices[int(rng.integers(len(p.choices)))]
    lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
    value = rng.uniform(lo, hi)
    value = math.exp(value) if p.log else value
    if p.integer:
        return int(min(max(round(value), p.low), p.high))
    return float(min(max(value, p.low), p.high))


class NarrowedSampler(optuna.samplers.BaseSampler):
    """Random sampling: over the wide distributions, or (when `box` is set) only inside the narrowed box."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._rng = np.random.default_rng(seed)
        self.box: Space | None = None

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: Any, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if self.box is None or param_name not in self.box:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return sample_in(self.box[param_name], self._rng)


def to_config(params: Mapping[str, Any], base: FitConfig) -> FitConfig:
    """`base` with a searched point applied; the annealing factor becomes the schedule's end-rate ratio."""
    schedule = params.get("schedule", base.schedule)
    anneal = float(params.get("anneal", 0.01))
    lr = float(params.get("lr", base.lr))
    epochs = base.epochs
    sp: dict[str, float] = {}
    if schedule == "step":
        step_size = max(1, epochs // 3)
        sp = {"step_size": step_size, "gamma": anneal ** (step_size / epochs)}  # ends near lr * anneal
    elif schedule in ("cosine", "restarts"):
        sp = {"min_lr": lr * anneal}
        if schedule == "restarts":
            sp["t0"] = max(1, epochs // 3)
            sp["t_mult"] = 1
    elif schedule == "cyclic":
        sp = {"min_lr": lr * max(anneal, 1e-3), "step_size": max(1, epochs // 6)}
    elif schedule == "onecycle":
        sp = {"final_div": 1 / anneal}
    return replace(
        base,
        lr=lr,
        weight_decay=float(params.get("weight_decay", base.weight_decay)),
        batch_size=int(params.get("batch_size", base.batch_size)),
        width=int(params["width"]) if "width" in params else base.width,
        depth=int(params["depth"]) if "depth" in params else base.depth,
        dropout=float(params.get("dropout", base.dropout)),
        schedule=schedule,
        schedule_params=sp if "schedule" in params or "anneal" in params else dict(base.schedule_params),
        bn_position=str(params.get("bn_position", base.bn_position)),
        optimizer=str(params.get("optimizer", base.optimizer)),
    )
