"""Preprocessing procs, fitted on a member's training rows only and then exported inside its graph.

fastai style: each proc is a small class with `setups` (learn from the training rows) and `encodes`
(apply, numpy), testable one by one; `module()` gives the same computation as a torch module, so it is
part of the network and goes into the ONNX graph (fastai keeps its procs in Python at inference time).

- `FillMissing`: NaN -> the training median; a 0/1 missing indicator for every column that had missing
  training values. A column with no missing training values is filled the same way at serving time
  (without an indicator, which would always have been 0 in training).
- `Categorify`: a vocabulary from the training rows; values seen fewer than `min_count` times pool into
  the reserved "rare or unseen" index, so a value never seen in training is answered with what was
  learned from rare values instead of an error. Index 0 is "missing".
- `Normalize`: (x - mean) / std of the filled training values (a constant column gets std 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from training.data import STD_FLOOR

if TYPE_CHECKING:
    from training.repository import TableRecord

MISSING_INDEX = 0  # the category index of a missing value
OTHER_INDEX = 1  # rare in training, or never seen
N_RESERVED = 2
DEFAULT_MIN_COUNT = 1  # a value seen once is kept; raise it to pool rare values


class FillMissing:
    """Median fill plus missing indicators (for the columns whose training rows had missing values)."""

    def setups(self, x: np.ndarray) -> FillMissing:
        x = np.asarray(x, dtype=np.float64)
        missing = np.isnan(x)
        with np.errstate(all="ignore"):
            medians = np.nanmedian(np.where(missing.all(axis=0), 0.0, x), axis=0) if x.size else np.zeros(0)
        self.medians = np.nan_to_num(medians).astype(np.float32)
        self.indicators = np.flatnonzero(missing.any(axis=0)).astype(np.int64)
        return self

    @property
    def n_out(self) -> int:
        return len(self.medians) + len(self.indicators)

    def encodes(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        missing = np.isnan(x)
        filled = np.where(missing, self.medians, x)
        return np.concatenate([filled, missing[:, self.indicators].astype(np.float32)], axis=1)

    def module(self) -> nn.Module:
        return _FillMissing(self.medians, self.indicators)


class _FillMissing(nn.Module):
    def __init__(self, medians: np.ndarray, indicators: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("medians", torch.as_tensor(medians, dtype=torch.float32))
        self.register_buffer("indicators", torch.as_tensor(indicators, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        missing = torch.isnan(x)  # exported as IsNaN + Where
        filled = torch.where(missing, self.medians, x)
        return filled, missing.index_select(1, self.indicators).to(x.dtype)


class Normalize:
    """(x - mean) / std with the training rows' statistics."""

    def setups(self, x: np.ndarray) -> Normalize:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0).astype(np.float32)
        std = x.std(axis=0)
        self.std = np.where(std < STD_FLOOR, 1.0, std).astype(np.float32)
        return self

    def encodes(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def module(self) -> nn.Module:
        from training.models import Standardize

        return Standardize(self.mean, self.std)


class Categorify:
    """Per-column vocabularies of the training rows: text -> index (0 missing, 1 rare or unseen, 2.. kept).

    Input to `setups`/`encodes` is a table's category codes (float, NaN = missing) indexing each column's
    full list of values (`Column.categories`); `vocab` holds the kept values as text, for the graph.
    """

    def __init__(self, categories: Sequence[Sequence[str]], min_count: int = DEFAULT_MIN_COUNT) -> None:
        if min_count < 1:
            raise ValueError("min_count must be >= 1")
        self.categories = [list(c) for c in categories]
        self.min_count = min_count

    def setups(self, codes: np.ndarray) -> Categorify:
        codes = np.asarray(codes, dtype=np.float64).reshape(len(codes), len(self.categories))
        self.vocab: list[list[str]] = []
        self.lookup: list[np.ndarray] = []  # code -> index; slot len(categories) = missing, +1 = unseen
        for j, names in enumerate(self.categories):
            col = codes[:, j]
            counts = np.bincount(col[~np.isnan(col)].astype(np.int64), minlength=len(names))
            kept = [i for i in range(len(names)) if counts[i] >= self.min_count]
            table = np.full(len(names) + 2, OTHER_INDEX, dtype=np.int64)
            table[kept] = np.arange(N_RESERVED, N_RESERVED + len(kept))
            table[len(names)] = MISSING_INDEX
            self.vocab.append([names[i] for i in kept])
            self.lookup.append(table)
        return self

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per column: the kept values plus the reserved indices."""
        return [len(v) + N_RESERVED for v in self.vocab]

    def encodes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.float64).reshape(len(codes), len(self.categories))
        out = np.empty(codes.shape, dtype=np.int64)
        for j, table in enumerate(self.lookup):
            out[:, j] = table[_slots(codes[:, j], len(self.categories[j]))]
        return out

    def text_index(self, j: int) -> dict[str, int]:
        """Column j's text -> index map, as the graph's LabelEncoder holds it (missing/unseen aside)."""
        return {v: N_RESERVED + i for i, v in enumerate(self.vocab[j])}

    def module(self) -> nn.Module:
        return _Categorify(self.lookup, [len(c) for c in self.categories])


def _slots(codes: np.ndarray, n: int) -> np.ndarray:
    """NaN -> the missing slot n; a code outside 0..n-1 (a value the table never had) -> the unseen slot."""
    out = np.where(np.isnan(codes), n, codes)
    out = np.where((out < 0) | (out > n), n + 1, out)
    return out.astype(np.int64)


class _Categorify(nn.Module):
    """Codes -> indices in torch, for training only: the exported graph maps text with LabelEncoder."""

    def __init__(self, lookup: Sequence[np.ndarray], sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        for j, table in enumerate(lookup):
            self.register_buffer(f"lookup_{j}", torch.as_tensor(table))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        cols = []
        for j, n in enumerate(self.sizes):
            c = codes[:, j]
            c = torch.where(torch.isnan(c), torch.full_like(c, n), c)
            c = torch.where((c < 0) | (c > n), torch.full_like(c, n + 1), c)
            cols.append(getattr(self, f"lookup_{j}")[c.long()])
        return torch.stack(cols, dim=1)


def table_record(columns: Sequence[Any], X: np.ndarray, min_count: int = DEFAULT_MIN_COUNT) -> TableRecord:
    """The manifest's inputs and preprocessing record for a table model, the procs fitted on rows X (the
    non-test rows: the union of the members' training rows). Each member's graph holds its own fit."""
    from server.manifest import ColumnInput, ColumnPreprocessing, TablePreprocessing, tensor_names
    from training.columns import MISSING_TEXT
    from training.repository import TableRecord

    numeric = [j for j, c in enumerate(columns) if c.kind == "numeric"]
    categorical = [j for j, c in enumerate(columns) if c.kind == "categorical"]
    records: dict[int, ColumnPreprocessing] = {}
    if numeric:
        fill = FillMissing().setups(X[:, numeric])
        norm = Normalize().setups(fill.encodes(X[:, numeric])[:, : len(numeric)])
        for k, j in enumerate(numeric):
            records[j] = ColumnPreprocessing(
                column=columns[j].name,
                kind="numeric",
                median=float(fill.medians[k]),
                mean=float(norm.mean[k]),
                std=float(norm.std[k]),
                missing_indicator=bool(k in set(fill.indicators.tolist())),
            )
    vocab: dict[int, list[str]] = {}
    if categorical:
        cat = Categorify([columns[j].categories for j in categorical], min_count).setups(X[:, categorical])
        for k, j in enumerate(categorical):
            vocab[j] = cat.vocab[k]
            records[j] = ColumnPreprocessing(
                column=columns[j].name, kind="categorical", vocabulary=cat.vocab[k], min_count=min_count
            )
    names = tensor_names([c.name for c in columns])
    inputs = []
    if categorical:  # one input per column; a numeric-only table keeps its one [-1, F] input
        inputs = [
            ColumnInput(
                name=names[j],
                column=c.name,
                kind=c.kind,
                datatype="FP32" if c.kind == "numeric" else "BYTES",
                shape=[-1, 1],
                categories=vocab[j] if c.kind == "categorical" else None,
            )
            for j, c in enumerate(columns)
        ]
    preprocessing = TablePreprocessing(
        columns=[records[j] for j in range(len(columns))],
        missing_text=list(MISSING_TEXT),
        missing_index=MISSING_INDEX,
        other_index=OTHER_INDEX,
    )
    return TableRecord(inputs, preprocessing)
