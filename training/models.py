"""BatchNorm networks whose graphs take raw features: standardization is the first layer.

Contract: ``model(x_raw [N, F] float32)`` returns logits (classification) or predictions in the target's
own units (regression). Ops stay simple (static reshapes, no data-dependent shapes) so that
``torch.onnx.export(..., dynamo=False)`` with a dynamic batch axis works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

ARCHS = ("mlp", "cnn")
BN_POSITIONS = ("before", "after")
# Per-architecture defaults (width: MLP hidden units / CNN first-stage channels; depth: layers / stages).
DEFAULT_WIDTH = {"mlp": 512, "cnn": 32}
DEFAULT_DEPTH = {"mlp": 2, "cnn": 2}


class Standardize(nn.Module):
    """(x - mean) / std with the training rows' statistics stored as buffers (exported with the graph)."""

    def __init__(self, mean: np.ndarray | Sequence[float], std: np.ndarray | Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Destandardize(nn.Module):
    """y * std + mean: the network learns standardized targets but answers in the target's units."""

    def __init__(self, mean: np.ndarray | Sequence[float], std: np.ndarray | Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float32)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean


def _bn_act(bn: nn.Module, bn_position: str) -> list[nn.Module]:
    # "before": the classic Linear -> BN -> ReLU (Ioffe & Szegedy); "after": Linear -> ReLU -> BN.
    return [bn, nn.ReLU()] if bn_position == "before" else [nn.ReLU(), bn]


class MLP(nn.Module):
    def __init__(
        self, n_features: int, n_outputs: int, width: int, depth: int, dropout: float, bn_position: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d_in = n_features
        for _ in range(depth):
            # No bias when BN follows directly: BN's shift makes it redundant.
            layers += [nn.Linear(d_in, width, bias=bn_position != "before")]
            layers += _bn_act(nn.BatchNorm1d(width), bn_position)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d_in = width
        layers.append(nn.Linear(d_in, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Small BatchNorm CNN: conv blocks (pooling while the map is large enough), then a BN dense head.

    1-D convolutions for C x L inputs, 2-D for C x H x W. The flat [N, F] input is reshaped to the
    feature shape inside the graph, so clients always send flat rows.
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        n_outputs: int,
        width: int,
        depth: int,
        dropout: float,
        bn_position: str,
    ) -> None:
        super().__init__()
        if len(feature_shape) not in (2, 3):
            raise ValueError(f"--arch cnn needs a C,L or C,H,W input shape; got {feature_shape}")
        self.feature_shape = tuple(int(d) for d in feature_shape)
        dim = len(feature_shape) - 1
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        pool = nn.MaxPool1d if dim == 1 else nn.MaxPool2d
        bn = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
        channels, spatial = feature_shape[0], list(feature_shape[1:])
        layers: list[nn.Module] = []
        c = width
        for stage in range(max(depth, 1)):
            for _ in range(2):
                layers.append(conv(channels, c, kernel_size=3, padding=1, bias=bn_position != "before"))
                layers += _bn_act(bn(c), bn_position)
                channels = c
            # Pool between stages while every side stays >= 2, so tiny inputs still work.
            if stage < depth - 1 and all(s >= 4 for s in spatial):
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            c *= 2
        self.features = nn.Sequential(*layers)
        flat = channels * int(np.prod(spatial))
        hidden = 4 * width
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, hidden, bias=bn_position != "before")]
        head += _bn_act(nn.BatchNorm1d(hidden), bn_position)
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, n_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, *self.feature_shape)))


class Network(nn.Module):
    """Standardize -> body -> (Destandardize for regression)."""

    def __init__(self, standardize: Standardize, body: nn.Module, destandardize: nn.Module) -> None:
        super().__init__()
        self.standardize = standardize
        self.body = body
        self.destandardize = destandardize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.destandardize(self.body(self.standardize(x)))


def build_model(
    arch: str,
    n_features: int,
    n_outputs: int,
    feature_shape: tuple[int, ...] | None,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    width: int | None = None,
    depth: int | None = None,
    dropout: float = 0.1,
    bn_position: str = "before",
    target_mean: np.ndarray | None = None,
    target_std: np.ndarray | None = None,
) -> nn.Module:
    """A `Network` taking raw [N, F] features; `target_mean`/`target_std` given -> regression output units.

    For the MLP `width` is the hidden width and `depth` the number of hidden layers; for the CNN
    `width` is the first stage's channels (doubled each stage) and `depth` the number of stages.
    None takes the arch's default (DEFAULT_WIDTH / DEFAULT_DEPTH).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)}")
    width = DEFAULT_WIDTH[arch] if width is None else width
    depth = DEFAULT_DEPTH[arch] if depth is None else depth
    if bn_position not in BN_POSITIONS:
        raise ValueError(f"unknown bn_position {bn_position!r}: use before or after")
    if width < 1 or depth < 1 or not 0 <= dropout < 1:
        raise ValueError("width and depth must be >= 1 and dropout in [0, 1)")
    if len(mean) != n_features or len(std) != n_features:
        raise ValueError("mean and std must have one value per feature")
    body: nn.Module
    if arch == "mlp":
        body = MLP(n_features, n_outputs, width, depth, dropout, bn_position)
    else:
        if feature_shape is None:
            raise ValueError(
                "--arch cnn needs image-shaped inputs: an NPZ with X of N x C x L or N x C x H x W, "
                "or --input-shape C,H,W"
            )
        if int(np.prod(feature_shape)) != n_features:
            raise ValueError(f"feature shape {feature_shape} does not hold {n_features} features")
        body = CNN(tuple(feature_shape), n_outputs, width, depth, dropout, bn_position)
    destandardize: nn.Module = nn.Identity()
    if target_mean is not None and target_std is not None:
        destandardize = Destandardize(target_mean, target_std)
    return Network(Standardize(mean, std), body, destandardize)


def emb_sz_rule(n_cat: int) -> int:
    """fastai's embedding width for a column with `n_cat` indices (reserved ones included)."""
    return min(600, round(1.6 * n_cat**0.56))


CAT_ENCODINGS = ("embedding", "onehot")


def category_encoder(n_cat: int, encoding: str) -> nn.Embedding:
    """A learned embedding (emb_sz_rule wide), or a frozen identity table: one-hot as a lookup, so both
    export as one Gather."""
    if encoding == "onehot":
        table = nn.Embedding(n_cat, n_cat)
        table.weight.data.copy_(torch.eye(n_cat))
        table.weight.requires_grad_(False)
        return table
    if encoding != "embedding":
        raise ValueError(f"unknown category encoding {encoding!r}: use one of {', '.join(CAT_ENCODINGS)}")
    return nn.Embedding(n_cat, emb_sz_rule(n_cat))


class TableCore(nn.Module):
    """What a table member's exported graph computes after text -> index: fill, normalize, embed, MLP.

    ``forward(x_num [N, Fn] float with NaN, x_cat [N, C] int64)``; either is left out when the table has
    no column of its kind (so a numeric-only table keeps one ``[N, F]`` input).
    """

    def __init__(
        self,
        fill: nn.Module | None,
        normalize: nn.Module | None,
        cardinalities: Sequence[int],
        body: nn.Module,
        destandardize: nn.Module,
        cat_encoding: str = "embedding",
    ) -> None:
        super().__init__()
        self.fill = fill
        self.normalize = normalize
        self.embeddings = nn.ModuleList(category_encoder(n, cat_encoding) for n in cardinalities)
        self.body = body
        self.destandardize = destandardize

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        rest = list(inputs)
        if self.fill is not None:
            filled, indicators = self.fill(rest.pop(0))
            parts += [self.normalize(filled), indicators]
        if len(self.embeddings):
            x_cat = rest.pop(0)
            parts += [emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.destandardize(self.body(torch.cat(parts, dim=1)))


class TabularNet(nn.Module):
    """A table member as training sees it: ``model(X [N, F])`` with a table's codes (training.data), split
    into numeric columns and category codes, the codes mapped to this member's vocabulary, then the core."""

    def __init__(
        self,
        core: TableCore,
        numeric: Sequence[int],
        categorical: Sequence[int],
        categorify: nn.Module | None,
    ) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("numeric", torch.as_tensor(list(numeric), dtype=torch.int64))
        self.register_buffer("categorical", torch.as_tensor(list(categorical), dtype=torch.int64))
        self.categorify = categorify

    @property
    def destandardize(self) -> nn.Module:
        return self.core.destandardize

    def core_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        inputs = []
        if len(self.numeric):
            inputs.append(x.index_select(1, self.numeric))
        if self.categorify is not None:
            inputs.append(self.categorify(x.index_select(1, self.categorical)))
        return inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(*self.core_inputs(x))


def build_table_model(
    columns: Sequence[Any],
    X_train: np.ndarray,
    n_outputs: int,
    *,
    width: int | None = None,
    depth: int | None = None,
    dropout: float = 0.1,
    bn_position: str = "before",
    target_mean: np.ndarray | None = None,
    target_std: np.ndarray | None = None,
    min_count: int = 1,
    cat_encoding: str = "embedding",
) -> TabularNet:
    """A `TabularNet` whose procs (training.preprocess) are fitted on `X_train` (a table's used columns)."""
    from training.preprocess import Categorify, FillMissing, Normalize

    width = DEFAULT_WIDTH["mlp"] if width is None else width
    depth = DEFAULT_DEPTH["mlp"] if depth is None else depth
    if width < 1 or depth < 1 or not 0 <= dropout < 1:
        raise ValueError("width and depth must be >= 1 and dropout in [0, 1)")
    numeric = [j for j, c in enumerate(columns) if c.kind == "numeric"]
    categorical = [j for j, c in enumerate(columns) if c.kind == "categorical"]
    fill = normalize = categorify = None
    n_in = 0
    if numeric:
        fill = FillMissing().setups(X_train[:, numeric])
        normalize = Normalize().setups(fill.encodes(X_train[:, numeric])[:, : len(numeric)])
        n_in += fill.n_out
    if categorical:
        categorify = Categorify([columns[j].categories for j in categorical], min_count).setups(
            X_train[:, categorical]
        )
        n_in += sum(category_encoder(n, cat_encoding).embedding_dim for n in categorify.cardinalities)
    destandardize: nn.Module = nn.Identity()
    if target_mean is not None and target_std is not None:
        destandardize = Destandardize(target_mean, target_std)
    core = TableCore(
        fill.module() if fill else None,
        normalize.module() if normalize else None,
        categorify.cardinalities if categorify else [],
        MLP(n_in, n_outputs, width, depth, dropout, bn_position),
        destandardize,
        cat_encoding,
    )
    model = TabularNet(core, numeric, categorical, categorify.module() if categorify else None)
    # The fitted procs, for the export (text -> index inside the graph) and the manifest's record.
    model.procs = TableProcs(list(columns), numeric, categorical, fill, normalize, categorify)
    return model


@dataclass
class TableProcs:
    columns: list[Any]  # training.data.Column of the used columns, in X's order
    numeric: list[int]
    categorical: list[int]
    fill: Any
    normalize: Any
    categorify: Any
