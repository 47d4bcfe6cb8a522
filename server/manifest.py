"""The model repository's manifest: the contract between `training/` (which writes it) and `server/`.

Layout (Triton-like)::

    model_repository/
      digits/                 # model name: [a-z0-9_-]+
        1/                    # version: positive integer; the highest is served by default
          manifest.json
          member-0.onnx ...   # self-contained ONNX files
          report/             # training report (optional)

Every member graph takes the model's one input, raw features of shape ``[-1, F]`` (the input
standardization is inside the graph), and produces one output:

- classification: ``probabilities`` ``[-1, C]`` (softmax applied in the graph);
- regression: ``prediction`` ``[-1, T]`` in the target's own units.

The server averages the members (``aggregation: mean``) and adds ``spread``, the members' standard
deviation, and for classification ``label`` (INT64 index into ``labels``).

Schema version 2 adds table models (docs/design-notes.md, "manifest v2"): a table with categorical
columns takes one input per column (``ColumnInput``: BYTES ``[-1, 1]`` for categories, FP32 ``[-1, 1]``
for numbers, the original column name beside a safe tensor name), and ``preprocessing`` records what
each column's graph does (``TablePreprocessing``). A numeric-only table keeps the one ``[-1, F]`` input,
with ``accepts_missing`` when its graph fills NaN. Version-1 manifests load unchanged.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 2  # the newest version this server reads; it reads every older one too
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MANIFEST_FILE = "manifest.json"
NAME_PATTERN = r"^[a-z0-9_-]{1,64}$"
MEMBER_FILE_PATTERN = r"^[A-Za-z0-9_.-]{1,128}\.onnx$"
NAME_RE = re.compile(NAME_PATTERN)

Task = Literal["classification", "regression"]
Datatype = Literal["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES"]

# The one output name each member graph produces, per task.
MEMBER_OUTPUT: dict[str, str] = {"classification": "probabilities", "regression": "prediction"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One tensor of the model's signature, in V2 terms; -1 marks the batch axis."""

    name: str = Field(pattern=TENSOR_NAME_PATTERN)
    datatype: Datatype = "FP32"
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _batch_axis_first(cls, shape: list[int]) -> list[int]:
        if not shape or shape[0] != -1:
            raise ValueError("shape must start with -1 (the batch axis)")
        if any(d < 1 for d in shape[1:]):
            raise ValueError("every axis after the batch axis must be a positive size")
        return shape


class InputSpec(TensorSpec):
    """The model's one input: raw (unstandardized) features, ``[-1, F]``."""

    feature_names: list[str] | None = None
    # The shape a CNN member reshapes one row to (e.g. [1, 8, 8]); for the record.
    feature_shape: list[int] | None = None
    # Whether the graph fills NaN (a missing value) itself; without it a NaN is the client's mistake.
    accepts_missing: bool = False

    @model_validator(mode="after")
    def _names_match(self) -> InputSpec:
        if len(self.shape) != 2:
            raise ValueError("the input must be 2-D: [-1, number of features]")
        if self.feature_names is not None and len(self.feature_names) != self.shape[1]:
            raise ValueError("feature_names must name every feature")
        return self


class ColumnInput(TensorSpec):
    """One column of a table model, as its own input: ``[-1, 1]`` (the server also takes ``[-1]``).

    Missing values: NaN for numbers; for categories an empty string (or any of ``missing_text`` in the
    preprocessing record, e.g. "NA"), which the graph maps to its "missing" index.
    """

    column: str = Field(min_length=1)  # the column's name in the user's table (any text)
    kind: Literal["numeric", "categorical"]
    accepts_missing: bool = True
    # categorical: the values seen in training (a value outside is "unseen": answered, not refused)
    categories: list[str] | None = None

    @model_validator(mode="after")
    def _kind_matches(self) -> ColumnInput:
        if self.shape != [-1, 1]:
            raise ValueError(f"column input {self.name!r} must have shape [-1, 1]")
        if self.kind == "categorical" and (self.datatype != "BYTES" or self.categories is None):
            raise ValueError(f"categorical column {self.name!r} must be BYTES with its categories")
        if self.kind == "numeric" and (self.datatype != "FP32" or self.categories is not None):
            raise ValueError(f"numeric column {self.name!r} must be FP32 without categories")
        return self


class Member(_Strict):
    """One trained network of the ensemble."""

    file: str = Field(pattern=MEMBER_FILE_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    arch: str = "mlp"
    fold: int | None = None
    seed: int | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    val_metrics: dict[str, float] = Field(default_factory=dict)


class Preprocessing(_Strict):
    """The standardization every member graph already applies (for the record: clients send raw data)."""

    mean: list[float]
    std: list[float]
    applied_in_graph: bool = True


class ColumnPreprocessing(_Strict):
    """What the graphs do with one table column (fitted on the training rows; for the record)."""

    column: str
    kind: Literal["numeric", "categorical"]
    # numeric: NaN -> median, then (x - mean) / std; missing_indicator adds a 0/1 feature
    median: float | None = None
    mean: float | None = None
    std: float | None = None
    missing_indicator: bool = False
    # categorical: index 0 = missing, 1 = rare or unseen, 2 + i = vocabulary[i]
    vocabulary: list[str] | None = None
    min_count: int | None = None


class TablePreprocessing(_Strict):
    """A table's preprocessing, inside every member graph. Each member fits its own on its training rows;
    this record is the same procs fitted on all of the non-test rows (the union of the members')."""

    columns: list[ColumnPreprocessing]
    missing_text: list[str] = Field(default_factory=list)  # category text the graphs read as missing
    missing_index: int = 0
    other_index: int = 1
    applied_in_graph: bool = True


class Manifest(_Strict):
    """``manifest.json`` of one version of one model."""

    schema_version: Literal[1, 2] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    task: Task
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    libraries: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    inputs: list[InputSpec] | list[ColumnInput] = Field(min_length=1)
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    aggregation: Literal["mean"] = "mean"
    members: list[Member] = Field(min_length=1)
    preprocessing: Preprocessing | TablePreprocessing | None = None
    # {"member-0": {"accuracy": ...}, ..., "ensemble": {...}}
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = {o.name for o in self.outputs}
        width = {o.name: o.shape for o in self.outputs}
        if self.task == "classification":
            expected = {"probabilities", "label", "spread"}
            if names != expected:
                raise ValueError(f"classification outputs must be {sorted(expected)}, got {sorted(names)}")
            n_classes = width["probabilities"][1] if len(width["probabilities"]) == 2 else None
            if n_classes is None or width["label"] != [-1] or width["spread"] != width["probabilities"]:
                raise ValueError("outputs must be probabilities [-1, C], label [-1] and spread [-1, C]")
            if not self.labels or len(self.labels) != n_classes:
                raise ValueError("labels must name each of the C classes")
        else:
            expected = {"prediction", "spread"}
            if names != expected:
                raise ValueError(f"regression outputs must be {sorted(expected)}, got {sorted(names)}")
            if len(width["prediction"]) != 2 or width["spread"] != width["prediction"]:
                raise ValueError("outputs must be prediction [-1, T] and spread [-1, T]")
        files = [m.file for m in self.members]
        if len(set(files)) != len(files):
            raise ValueError("member files must be distinct")
        table_inputs = isinstance(self.inputs[0], ColumnInput)
        if self.schema_version == 1 and (table_inputs or isinstance(self.preprocessing, TablePreprocessing)):
            raise ValueError("per-column inputs and table preprocessing need schema_version 2")
        if not table_inputs and len(self.inputs) != 1:
            raise ValueError("a model without per-column inputs has exactly one input [-1, F]")
        if table_inputs:
            names = [i.name for i in self.inputs]
            columns = [i.column for i in self.inputs]  # type: ignore[union-attr]
            if len(set(names)) != len(names) or len(set(columns)) != len(columns):
                raise ValueError("column inputs must have distinct tensor names and columns")
        if isinstance(self.preprocessing, Preprocessing):
            n = self.inputs[0].shape[1]
            if table_inputs or len(self.preprocessing.mean) != n or len(self.preprocessing.std) != n:
                raise ValueError("preprocessing mean and std must have one value per feature")
        return self

    @property
    def is_table(self) -> bool:
        """True when every column is its own input (a table with categorical columns)."""
        return isinstance(self.inputs[0], ColumnInput)

    @property
    def columns(self) -> list[ColumnInput]:
        """The per-column inputs of a table model; empty for a one-matrix model."""
        return list(self.inputs) if self.is_table else []  # type: ignore[arg-type]

    @property
    def input(self) -> InputSpec:
        """The one ``[-1, F]`` input of a matrix model (a table model has `columns` instead)."""
        if self.is_table:
            raise ValueError(f"model {self.name!r} takes one input per column: use manifest.columns")
        return self.inputs[0]  # type: ignore[return-value]

    @property
    def member_output(self) -> str:
        """Name of the output every member graph produces."""
        return MEMBER_OUTPUT[self.task]

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def output_specs(task: Task, width: int) -> list[TensorSpec]:
    """The served outputs for a task with `width` classes (classification) or targets (regression)."""
    if task == "classification":
        return [
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, width]),
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="spread", datatype="FP32", shape=[-1, width]),
        ]
    return [
        TensorSpec(name="prediction", datatype="FP32", shape=[-1, width]),
        TensorSpec(name="spread", datatype="FP32", shape=[-1, width]),
    ]


def tensor_names(columns: list[str]) -> list[str]:
    """Safe, distinct V2 tensor names for table columns ("bill length (mm)" -> "bill_length_mm_")."""
    names: list[str] = []
    for column in columns:
        base = re.sub(r"[^A-Za-z0-9_]", "_", column)[:56] or "column"
        if not re.match(r"[A-Za-z_]", base):
            base = f"c_{base}"[:56]
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json`` in a version folder (raises pydantic.ValidationError/OSError)."""
    return Manifest.model_validate_json((version_dir / MANIFEST_FILE).read_bytes())
