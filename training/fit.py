"""One training run: config, the loop (schedule per step, early stopping, best checkpoint), evaluation."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from training.data import Dataset, standardization
from training.ensemble_predict import regression_metrics
from training.models import ARCHS, BN_POSITIONS, CAT_ENCODINGS, build_model, build_table_model
from training.schedules import SCHEDULE_NAMES, LRSchedule, validate_params

OPTIMIZERS = ("adam", "adamw", "sgd")
EVAL_BATCH = 4096


@dataclass
class FitConfig:
    arch: str = "mlp"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3  # the peak rate for onecycle/cyclic, the starting rate otherwise
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay) | sgd (momentum 0.9)
    weight_decay: float = 0.0  # L2 penalty (adam, sgd) or decoupled decay (adamw)
    dropout: float = 0.5
    width: int | None = None  # None: the arch's default (models.DEFAULT_WIDTH)
    depth: int | None = None
    bn_position: str = "before"
    schedule: str = "onecycle"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    patience: int = 15  # early stopping: epochs without a better validation loss
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    min_count: int = 1  # tables: a category seen fewer times in a member's training rows is pooled as rare
    cat_encoding: str = "embedding"  # tables: embedding (fastai's emb_sz_rule) | onehot

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("epochs >= 1, batch_size >= 2, lr > 0 and weight_decay >= 0 are required")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if (
            self.arch not in ARCHS
            or self.bn_position not in BN_POSITIONS
            or self.schedule not in SCHEDULE_NAMES
        ):
            raise ValueError(
                f"arch must be one of {ARCHS}, bn_position one of {BN_POSITIONS}, "
                f"schedule one of {SCHEDULE_NAMES}"
            )
        if self.cat_encoding not in CAT_ENCODINGS:
            raise ValueError(f"cat_encoding must be one of {', '.join(CAT_ENCODINGS)}")
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        validate_params(self.schedule, self.schedule_params)


class TrainingDiverged(ValueError):
    """No usable model: the validation loss was never finite, or the weights became NaN/inf."""


def check_converged(model: nn.Module, best_val_loss: float) -> None:
    """Raise TrainingDiverged (exit 2 on the CLI: the user's settings, not a bug) for a diverged run."""
    if not math.isfinite(best_val_loss):
        reason = "no epoch had a finite validation loss"
    elif not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()):
        reason = "the weights became NaN or infinite"
    else:
        return
    raise TrainingDiverged(f"training diverged ({reason}): lower the learning rate (--lr) and try again")


@dataclass
class FitResult:
    model: nn.Module  # best weights restored, in eval mode, on the CPU
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    seconds: float
    config: FitConfig

    def checkpoint(self) -> dict[str, Any]:
        """A plain dict, as nanoGPT saves: weights, config, best epoch and loss, history."""
        return {
            "model": self.model.state_dict(),
            "config": asdict(self.config),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "history": self.history,
        }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_model(ds: Dataset, train_idx: np.ndarray, config: FitConfig) -> nn.Module:
    """The untrained network with its preprocessing fitted on the training rows only."""
    target_mean = target_std = None
    if ds.task == "regression":
        target_mean, target_std = standardization(ds.y[train_idx])
    if ds.is_table:
        if config.arch != "mlp":
            raise ValueError("tables train with --arch mlp (the CNN needs image-shaped rows from an NPZ)")
        return build_table_model(
            ds.feature_columns,
            ds.X[train_idx],
            ds.n_outputs,
            width=config.width,
            depth=config.depth,
            dropout=config.dropout,
            bn_position=config.bn_position,
            target_mean=target_mean,
            target_std=target_std,
            min_count=config.min_count,
            cat_encoding=config.cat_encoding,
        )
    mean, std = standardization(ds.X[train_idx])
    return build_model(
        config.arch,
        ds.X.shape[1],
        ds.n_outputs,
        ds.feature_shape,
        mean,
        std,
        width=config.width,
        depth=config.depth,
        dropout=config.dropout,
        bn_position=config.bn_position,
        target_mean=target_mean,
        target_std=target_std,
    )


def make_optimizer(model: nn.Module, config: FitConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def training_loss(model: nn.Module, ds: Dataset) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on logits; for regression the MSE of *standardized* targets, which keeps
    gradients well scaled whatever the target's units (the model's last layer de-standardizes)."""
    if ds.task == "classification":
        return nn.functional.cross_entropy
    dest = model.destandardize  # type: ignore[union-attr]

    def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss((pred - dest.mean) / dest.std, (y - dest.mean) / dest.std)

    return mse


class TrainingSetup(NamedTuple):
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    X: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator  # the shuffling order depends on the seed only


def setup_training(ds: Dataset, train_idx: np.ndarray, config: FitConfig) -> TrainingSetup:
    """Seeded model, optimizer, loss and training rows on the device: how fit and the range test start."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model = make_model(ds, train_idx, config).to(device)
    return TrainingSetup(
        model,
        make_optimizer(model, config),
        training_loss(model, ds),
        torch.from_numpy(ds.X[train_idx]).to(device),
        torch.from_numpy(ds.y[train_idx]).to(device),
        torch.Generator().manual_seed(config.seed),
    )


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches. A last batch of one row would break BatchNorm, so it joins the one before."""
    perm = torch.randperm(n, generator=generator)
    parts = list(perm.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < 2:
        tail = parts.pop()
        parts[-1] = torch.cat([parts[-1], tail])
    yield from parts


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Model outputs (logits or target-unit predictions) in eval mode, in bounded batches."""
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics and dropout is off when measuring
    device = next(model.parameters()).device
    outs = [
        model(torch.from_numpy(X[i : i + EVAL_BATCH]).to(device)).cpu() for i in range(0, len(X), EVAL_BATCH)
    ]
    model.train(was_training)
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, ds: Dataset, idx: np.ndarray) -> dict[str, float]:
    """Classification: accuracy, log_loss (= loss). Regression: rmse, r2, loss (MSE in target units)."""
    idx = np.asarray(idx)
    out = predict(model, ds.X[idx])
    if ds.task == "classification":
        logits = torch.from_numpy(out)
        y = torch.from_numpy(ds.y[idx])
        log_loss = float(nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(1) == y).float().mean())
        return {"accuracy": accuracy, "log_loss": log_loss, "loss": log_loss}
    # The same rmse and R2 (mean of per-target R2, as scikit-learn) as the ensemble's held-out metrics.
    scores = regression_metrics(ds.y[idx], out)
    return {"rmse": scores["rmse"], "r2": scores["r2"], "loss": scores["rmse"] ** 2}


def baseline_loss(ds: Dataset, train_idx: np.ndarray) -> float:
    """The loss of a model that knows only the training distribution of the target."""
    if ds.task == "classification":
        p = np.bincount(ds.y[train_idx], minlength=ds.n_outputs) / len(train_idx)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())  # entropy: log(C) when balanced
    return float(ds.y[train_idx].var(axis=0).mean())


def metric_name(ds: Dataset) -> str:
    return "accuracy" if ds.task == "classification" else "rmse"


def fit(
    ds: Dataset,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: FitConfig,
    *,
    progress: bool = True,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train on `train_idx`, early-stop on `val_idx`; return the best epoch's model in eval mode.

    `epoch_callback(epoch, row)` runs after each epoch (a search may raise from it to prune the run).
    """
    config.validate()
    start = time.perf_counter()
    model, optimizer, loss_fn, X, y, generator = setup_training(ds, train_idx, config)
    schedule = LRSchedule(optimizer, config.schedule, config.lr, config.epochs, config.schedule_params)
    metric = metric_name(ds)

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_val, since_best = 0, math.inf, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs, unit="epoch", desc="fit", leave=False)
    for epoch in range(1, config.epochs + 1):
        model.train()  # BatchNorm uses batch statistics, dropout is on
        lr = config.lr
        parts = list(batches(len(train_idx), config.batch_size, generator))
        for i, batch in enumerate(parts):
            lr = schedule.at_step(epoch - 1 + i / len(parts))  # fractional epoch: schedules move per step
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
        train = evaluate(model, ds, train_idx)
        val = evaluate(model, ds, val_idx)
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train["loss"],
            "val_loss": val["loss"],
            "train_metric": train[metric],
            "val_metric": val[metric],
        }
        history.append(row)
        schedule.end_epoch(val["loss"])
        if val["loss"] < best_val:
            best_epoch, best_val, since_best = epoch, val["loss"], 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if bar is not None:
            bar.set_postfix(
                loss=f"{train['loss']:.4f}",
                val_loss=f"{val['loss']:.4f}",
                **{metric: f"{val[metric]:.4f}"},
                lr=f"{lr:.2e}",
            )
            bar.update(1)
        if epoch_callback is not None:
            epoch_callback(epoch, row)
        if not math.isfinite(train["loss"]):
            break  # diverged: the best checkpoint so far is still returned
        if since_best >= config.patience:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    check_converged(model, best_val)
    return FitResult(model, history, best_epoch, best_val, time.perf_counter() - start, config)
