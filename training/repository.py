"""Write one version of a model into the model repository, all or nothing.

Everything goes into a hidden temporary folder inside the model folder first (same filesystem, so the
final ``os.rename`` is atomic); a server scanning the repository sees either no version or a complete one.
The manifest is built with the server's own schema (`server.manifest.Manifest`), so a version the server
would refuse is never written.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
from pydantic import ValidationError

from server.manifest import (
    MANIFEST_FILE,
    MEMBER_OUTPUT,
    NAME_RE,
    ColumnInput,
    InputSpec,
    Manifest,
    Member,
    Preprocessing,
    TablePreprocessing,
    Task,
    output_specs,
    sha256_file,
)

VERSION_RE = re.compile(r"^[1-9][0-9]*$")
TMP_PREFIX = ".tmp-"
REPORT_DIR = "report"
# Another writer may claim the same number between our scan and our rename; try a few next numbers.
MAX_RENAME_ATTEMPTS = 20
LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy")


class RepositoryError(ValueError):
    """The version cannot be written: bad name, bad members or a manifest the server would refuse."""


@dataclass(frozen=True)
class TableRecord:
    """A table model's signature and preprocessing record (training.pipeline builds it)."""

    columns: list[ColumnInput]  # one input per column; empty: a numeric-only table's one [-1, F] input
    preprocessing: TablePreprocessing


@dataclass(frozen=True)
class MemberArtifact:
    """One exported member (an ONNX file written by `training.export.export_member`) and its record."""

    onnx_path: Path
    arch: str = "mlp"
    fold: int | None = None
    seed: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    # Held-out test metrics; recorded under manifest.metrics["member-<i>"].
    test_metrics: dict[str, float] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that made the artifact (read from package metadata, no imports)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version folders in `model_dir` (temporary and other folders are ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def _member_io(path: Path, task: Task) -> tuple[str, int, int]:
    """(input name, number of features, output width) of a member graph, checked against the contract.

    A table member with one input per column gives its input names joined by "," and 0 features.
    """
    if not path.is_file():
        raise RepositoryError(f"member file {path} does not exist")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise RepositoryError(f"member {path} is not a readable ONNX file: {exc}") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise RepositoryError(f"member {path.name} keeps weights in an external file: export it whole")
    expected = MEMBER_OUTPUT[task]
    if len(graph.input) > 1 or graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.STRING:
        out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        if [o.name for o in graph.output] != [expected] or len(out_dims) != 2 or out_dims[1] < 1:
            raise RepositoryError(f"member {path.name} must have one output {expected!r} [batch, W]")
        for i in graph.input:
            if [d.dim_value for d in i.type.tensor_type.shape.dim] != [0, 1]:
                raise RepositoryError(f"member {path.name}: column input {i.name!r} must be [batch, 1]")
        return ",".join(i.name for i in graph.input), 0, out_dims[1]
    if len(graph.input) != 1 or [o.name for o in graph.output] != [expected]:
        raise RepositoryError(f"member {path.name} must have one input and one output named {expected!r}")
    in_dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    if len(in_dims) != 2 or len(out_dims) != 2 or min(in_dims[1], out_dims[1]) < 1:
        raise RepositoryError(f"member {path.name} must map [batch, F] to [batch, W] with fixed F and W")
    return graph.input[0].name, in_dims[1], out_dims[1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(
    repository: Path | str,
    name: str,
    members: Sequence[MemberArtifact],
    *,
    task: Task,
    labels: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    feature_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ensemble_metrics: dict[str, float] | None = None,
    description: str = "",
    report_dir: Path | str | None = None,
    table: TableRecord | None = None,
) -> Path:
    """Write the next version of model `name` and return its folder (e.g. ``repository/name/3``).

    The input name, feature count and output width are read from the member graphs, which must agree.
    `table` (a model trained on a CSV/Parquet table) writes a schema-2 manifest: its column inputs (which
    must match the graphs' inputs) and preprocessing record replace `feature_names`/`mean`/`std`.
    Raises RepositoryError (a ValueError) with one clear sentence for bad input; leaves nothing behind.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1 to 64 characters from lowercase a-z, 0-9, '_' and '-'"
        )
    if not members:
        raise RepositoryError("a version needs at least one member")
    ios = {_member_io(Path(m.onnx_path), task) for m in members}
    if len(ios) != 1:
        raise RepositoryError(f"member graphs disagree on input name, feature count or output width: {ios}")
    input_name, n_features, width = ios.pop()
    if table is not None and table.columns and input_name != ",".join(c.name for c in table.columns):
        raise RepositoryError(f"member inputs {input_name} do not match the table's columns")
    if (mean is None) != (std is None):
        raise RepositoryError("give both mean and std (the standardization in the graphs), or neither")
    if report_dir is not None and not Path(report_dir).is_dir():
        raise RepositoryError(f"report folder {report_dir} does not exist")
    _check_metrics_finite(members, ensemble_metrics)

    model_dir = Path(repository) / name
    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        records = []
        for i, member in enumerate(members):
            file = f"member-{i}.onnx"
            shutil.copyfile(member.onnx_path, tmp / file)
            _fsync(tmp / file)
            records.append(
                Member(
                    file=file,
                    sha256=sha256_file(tmp / file),  # of the copy: exactly the bytes the server will read
                    arch=member.arch,
                    fold=member.fold,
                    seed=member.seed,
                    hyperparameters=member.hyperparameters,
                    val_metrics=member.val_metrics,
                )
            )
        if report_dir is not None:
            shutil.copytree(report_dir, tmp / REPORT_DIR)
        metrics = {f"member-{i}": dict(m.test_metrics) for i, m in enumerate(members) if m.test_metrics}
        if ensemble_metrics:
            metrics["ensemble"] = dict(ensemble_metrics)
        fields: dict[str, Any] = {
            "name": name,
            "task": task,
            "created_at": datetime.now(UTC),
            "libraries": library_versions(),
            "description": description,
            "inputs": table.columns
            if table is not None and table.columns
            else [
                InputSpec(
                    name=input_name,
                    datatype="FP32",
                    shape=[-1, n_features],
                    feature_names=list(feature_names) if feature_names is not None else None,
                    feature_shape=list(feature_shape) if feature_shape is not None else None,
                    accepts_missing=table is not None,
                )
            ],
            "outputs": output_specs(task, width),
            "labels": list(labels) if labels is not None else None,
            "members": records,
            "preprocessing": (
                table.preprocessing
                if table is not None
                else Preprocessing(mean=[float(v) for v in mean], std=[float(v) for v in std])
                if mean is not None and std is not None
                else None
            ),
            "schema_version": 2 if table is not None else 1,
            "metrics": metrics,
        }
        return _publish(tmp, model_dir, fields)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_model_dir:
            with contextlib.suppress(OSError):
                model_dir.rmdir()  # only if still empty: never removes another writer's version
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or exc.title
            raise RepositoryError(f"the manifest would be invalid: {where}: {first['msg']}") from exc
        raise


def _check_metrics_finite(
    members: Sequence[MemberArtifact], ensemble_metrics: dict[str, float] | None
) -> None:
    """NaN/inf metrics would become JSON null (refused by the server's manifest) or invalid JSON."""
    groups: list[tuple[str, dict[str, float]]] = [("ensemble", dict(ensemble_metrics or {}))]
    for i, m in enumerate(members):
        groups.append((f"member-{i} validation", dict(m.val_metrics)))
        groups.append((f"member-{i} test", dict(m.test_metrics)))
    for where, values in groups:
        for key, value in values.items():
            if isinstance(value, int | float) and not math.isfinite(float(value)):
                raise RepositoryError(
                    f"{where} metric {key!r} is {value}: training produced non-finite results "
                    "(check the data and lower the learning rate)"
                )


def _publish(tmp: Path, model_dir: Path, fields: dict[str, Any]) -> Path:
    """Write the manifest for the next free version number and rename the folder into place."""
    version = max(existing_versions(model_dir), default=0) + 1
    for _ in range(MAX_RENAME_ATTEMPTS):
        manifest = Manifest(version=version, **fields)
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        _fsync(tmp / MANIFEST_FILE)
        target = model_dir / str(version)
        # rename() onto an existing *empty* folder succeeds on POSIX, so check first; a published version
        # always holds a manifest (never empty), so a racing writer's version makes rename() fail below.
        if not target.exists():
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                _fsync(model_dir)
                return target
        version = max([*existing_versions(model_dir), version]) + 1
    raise RepositoryError(f"could not claim a version number in {model_dir} in {MAX_RENAME_ATTEMPTS} tries")
