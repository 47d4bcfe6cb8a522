"""Torch stand-ins for the training core's models, exported with training.export: the members of the
benchmark's model repository and of the export and repository tests.

Same contract as a trained member (raw features in, standardization as the first layer, BatchNorm and
dropout inside), with non-trivial BatchNorm running statistics, so an export that used batch statistics
or left dropout on would be caught. torch is imported inside the functions: the rest of `testing` (and
every suite that does not train) runs without it.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from training.repository import MemberArtifact

N_FEATURES = 64
FEATURE_SHAPE = (1, 8, 8)
N_CLASSES = 3
N_TARGETS = 2
BENCH_MODEL = "bench"
BENCH_HIDDEN, BENCH_CLASSES, BENCH_MEMBERS = (256, 256), 10, 5


def batchnorm_mlp(
    mean: np.ndarray, std: np.ndarray, hidden: Sequence[int], out: int, dropout: float, squeeze: bool = False
) -> nn.Module:
    """Standardize, then a body of (Linear, BatchNorm, ReLU, Dropout) per hidden layer and a Linear to `out`.
    `squeeze`: a single-target regressor returning [N] rather than [N, 1]."""
    from torch import nn

    from training.models import Standardize

    body: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise([len(mean), *hidden]):
        body += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout)]
    body.append(nn.Linear(hidden[-1], out))
    parts: dict[str, nn.Module] = {"standardize": Standardize(mean, std), "body": nn.Sequential(*body)}
    if squeeze:
        parts["squeeze"] = nn.Flatten(0)
    return nn.Sequential(OrderedDict(parts))


def batchnorm_cnn(mean: np.ndarray, std: np.ndarray, out: int) -> nn.Module:
    """Standardize, reshape to an 8x8 image, one BatchNorm conv block, then Linear to `out`."""
    from torch import nn

    from training.models import Standardize

    features = nn.Sequential(
        nn.Unflatten(1, FEATURE_SHAPE),
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(),
    )  # fmt: skip
    parts = {"standardize": Standardize(mean, std), "features": features, "head": nn.Linear(4 * 64, out)}
    return nn.Sequential(OrderedDict(parts))


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
    import torch
    from torch import nn

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
    """kind: mlp | cnn (classification), reg (regression, 2 targets), reg1 (one target, output [N]);
    trained a few steps so BatchNorm's running statistics are far from their initial 0/1."""
    import torch

    task = "classification" if kind in ("mlp", "cnn") else "regression"
    x, _ = dataset(task, seed=seed)
    mean, std = x.mean(axis=0), x.std(axis=0)
    torch.manual_seed(seed)
    if kind == "cnn":
        model = batchnorm_cnn(mean, std, N_CLASSES)
    else:
        out = {"mlp": N_CLASSES, "reg": N_TARGETS}.get(kind, 1)
        model = batchnorm_mlp(mean, std, [32], out, dropout=0.3, squeeze=kind == "reg1")
    _train(model, task, seed)
    return model.eval()


def torch_output(model: nn.Module, x: np.ndarray, task: str) -> np.ndarray:
    """What a member should serve, computed by torch in eval mode."""
    import torch

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
    from training.export import export_member
    from training.repository import MemberArtifact

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


def bench_version(repository: Path, n_members: int = BENCH_MEMBERS, seed: int = 0) -> Path:
    """The benchmark's model: `n_members` BatchNorm MLPs 64 -> 256 -> 256 -> 10 written as the next version
    of model ``bench``; returns the version folder.

    Random weights, so benchmarks run on a fresh clone without training; a few forward passes in train
    mode on random data give BatchNorm non-trivial running statistics, so the exported graphs compute what
    a trained member would (same ops, same shapes)."""
    import torch

    from training.export import export_member
    from training.repository import MemberArtifact, write_version

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Digits-like raw features (pixel intensities 0..16) so the baked-in standardization is not a no-op.
    mean = rng.uniform(0, 8, N_FEATURES).astype(np.float32)
    std = rng.uniform(1, 6, N_FEATURES).astype(np.float32)
    members = []
    for _ in range(n_members):
        model = batchnorm_mlp(mean, std, BENCH_HIDDEN, BENCH_CLASSES, dropout=0.1)
        model.train()  # train mode: these forward passes update BatchNorm's running mean and variance
        with torch.no_grad():
            for _ in range(8):
                model(torch.from_numpy(mean + std * rng.normal(size=(128, N_FEATURES)).astype(np.float32)))
        members.append(model)
    staging = Path(repository) / ".staging"
    artifacts = []
    for i, model in enumerate(members):
        path = staging / f"member-{i}.onnx"
        export_member(model, N_FEATURES, path, "classification", sample=mean + std)
        artifacts.append(MemberArtifact(onnx_path=path, seed=seed + i))
    version = write_version(
        repository,
        BENCH_MODEL,
        artifacts,
        task="classification",
        labels=[str(c) for c in range(BENCH_CLASSES)],
        mean=mean.tolist(),
        std=std.tolist(),
        description="random-weight BatchNorm MLPs for benchmarks (not trained)",
    )
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    return version
