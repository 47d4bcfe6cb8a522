"""Small stand-ins for the training core's models (same contract: raw features in, standardization as the
first layer, BatchNorm and dropout inside), trained a few steps so BatchNorm's running statistics are far
from their initial 0/1 and an export that used batch statistics would be caught."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.export import export_member
from training.models import Standardize
from training.repository import MemberArtifact

N_FEATURES = 64
FEATURE_SHAPE = (1, 8, 8)
N_CLASSES = 3
N_TARGETS = 2


class BatchNormMLP(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, out: int, squeeze: bool = False) -> None:
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.body = nn.Sequential(
            nn.Linear(N_FEATURES, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, out)
        )
        self.squeeze = squeeze  # a single-target regressor returning [N] rather than [N, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.standardize(x))
        return out.squeeze(-1) if self.squeeze else out


class BatchNormCNN(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, out: int) -> None:
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2), nn.Flatten()
        )
        self.head = nn.Linear(4 * 64, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x).reshape(-1, *FEATURE_SHAPE)
        return self.head(self.features(x))


def dataset(task: str, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw features far from 0/1 (so the standardization and BatchNorm statistics matter)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 3.0, size=(n, N_FEATURES)).astype(np.float32)
    score = x[:, :8].sum(axis=1) - x[:, 8:16].sum(axis=1)
    if task == "classification":
        return x, np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.int64)
    y = np.stack([score, 0.5 * x[:, 20] + 100.0], axis=1).astype(np.float32)
    return x, y


def _train(model: nn.Module, task: str, seed: int, steps: int = 30) -> nn.Module:
    torch.manual_seed(seed)
    x, y = dataset(task, seed=seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (32,), generator=torch.Generator().manual_seed(seed * 1000 + step))
        out = model(xt[idx])
        if task == "classification":
            loss = nn.functional.cross_entropy(out, yt[idx])
        else:
            pred = out.reshape(len(idx), -1)
            loss = nn.functional.mse_loss(pred, yt[idx][:, : pred.shape[1]])  # reg1 learns the first target
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@functools.cache
def trained(kind: str, seed: int = 0) -> nn.Module:
    """kind: mlp | cnn (classification), reg (regression, 2 targets), reg1 (one target, output [N])."""
    task = "classification" if kind in ("mlp", "cnn") else "regression"
    x, _ = dataset(task, seed=seed)
    mean, std = x.mean(axis=0), x.std(axis=0)
    torch.manual_seed(seed)
    if kind == "mlp":
        model: nn.Module = BatchNormMLP(mean, std, N_CLASSES)
    elif kind == "cnn":
        model = BatchNormCNN(mean, std, N_CLASSES)
    elif kind == "reg":
        model = BatchNormMLP(mean, std, N_TARGETS)
    else:
        model = BatchNormMLP(mean, std, 1, squeeze=True)
    _train(model, task, seed)
    return model.eval()


def torch_output(model: nn.Module, x: np.ndarray, task: str) -> np.ndarray:
    """What a member should serve, computed by torch in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    model.train(was_training)
    if task == "classification":
        return torch.softmax(out, dim=-1).numpy()
    return out.reshape(len(x), -1).numpy()


def export_all(kinds: list[str], task: str, folder: Path) -> list[MemberArtifact]:
    """Export one trained stand-in per kind (seeds 0, 1, ...) into `folder`, as write_version takes them."""
    members = []
    for seed, kind in enumerate(kinds):
        path = folder / f"{kind}-{seed}.onnx"
        export_member(trained(kind, seed), N_FEATURES, path, task)  # type: ignore[arg-type]
        members.append(
            MemberArtifact(
                onnx_path=path,
                arch="cnn" if kind == "cnn" else "mlp",
                seed=seed,
                fold=seed,
                hyperparameters={"lr": 0.01, "dropout": 0.3},
                val_metrics={"loss": 0.5 + seed},
                test_metrics={"loss": 0.6 + seed},
            )
        )
    return members
