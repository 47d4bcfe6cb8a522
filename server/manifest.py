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
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
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

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
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

    @model_validator(mode="after")
    def _names_match(self) -> InputSpec:
        if len(self.shape) != 2:
            raise ValueError("the input must be 2-D: [-1, number of features]")
        if self.feature_names is not None and len(self.feature_names) != self.shape[1]:
            raise ValueError("feature_names must name every feature")
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


class Manifest(_Strict):
    """``manifest.json`` of one version of one model."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    task: Task
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    libraries: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    inputs: list[InputSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    aggregation: Literal["mean"] = "mean"
    members: list[Member] = Field(min_length=1)
    preprocessing: Preprocessing | None = None
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
        if self.preprocessing is not None:
            n = self.inputs[0].shape[1]
            if len(self.preprocessing.mean) != n or len(self.preprocessing.std) != n:
                raise ValueError("preprocessing mean and std must have one value per feature")
        return self

    @property
    def input(self) -> InputSpec:
        return self.inputs[0]

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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json`` in a version folder (raises pydantic.ValidationError/OSError)."""
    return Manifest.model_validate_json((version_dir / MANIFEST_FILE).read_bytes())
