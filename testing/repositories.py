"""Model repositories on disk, written with the server's own manifest schema (so a fixture that drifts
from the contract fails here first), and the named repositories the suites serve.

`write_version` is the one builder: every test, the image test and the benchmarks that need a served model
without training call it with the shape they need.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from server.manifest import MANIFEST_FILE, Manifest, output_specs, sha256_file
from testing.members import Weights, member_graph, numpy_ensemble, random_weights


def make_manifest(
    name: str = "m",
    version: int = 1,
    task: str = "classification",
    n_features: int = 2,
    width: int = 3,
    *,
    labels: list[str] | None = None,
    members: list[dict[str, Any]] | None = None,
    feature_names: list[str] | None = None,
    description: str = "",
) -> Manifest:
    """A valid manifest with input ``[-1, n_features]``; labels default to class_0..; members to one stub."""
    if labels is None and task == "classification":
        labels = [f"class_{c}" for c in range(width)]
    spec: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [-1, n_features]}
    if feature_names is not None:
        spec["feature_names"] = feature_names
    return Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "task": task,
            "description": description,
            "inputs": [spec],
            "outputs": [o.model_dump() for o in output_specs(task, width)],  # type: ignore[arg-type]
            "labels": labels,
            "members": members if members is not None else [{"file": "member-0.onnx", "sha256": "0" * 64}],
        }
    )


def write_version(
    root: Path,
    name: str,
    version: int,
    task: str = "classification",
    n_features: int = 4,
    width: int | None = None,
    members: int = 3,
    hidden: list[int] | None = None,
    seed: int = 0,
    *,
    labels: list[str] | None = None,
    feature_names: list[str] | None = None,
    description: str = "",
) -> list[Weights]:
    """Write ``root/name/version`` with `members` random MLP members; returns every member's weights.

    Width defaults to 3 classes or 2 regression targets; `hidden` lists the hidden layers' sizes (none: a
    linear model, softmax for classification)."""
    width = width or (len(labels) if labels else 3 if task == "classification" else 2)
    rng = np.random.default_rng(seed)
    vdir = Path(root) / name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    all_weights, member_entries = [], []
    for i in range(members):
        weights = random_weights(rng, [n_features, *(hidden or []), width])
        all_weights.append(weights)
        path = vdir / f"member-{i}.onnx"
        onnx.save(member_graph(weights, task), str(path))
        member_entries.append({"file": path.name, "sha256": sha256_file(path), "seed": i})
    manifest = make_manifest(
        name,
        version,
        task,
        n_features,
        width,
        labels=labels,
        members=member_entries,
        feature_names=feature_names,
        description=description,
    )
    (vdir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return all_weights


def corrupt_manifest(root: Path, name: str, version: int) -> None:
    """Make a version fail its checksum check."""
    path = Path(root) / name / str(version) / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["members"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))


@dataclass
class Repository:
    """A repository on disk and the member weights of its good models (by name, the served version), to
    compute in numpy the exact answers a server must give."""

    root: Path
    weights: dict[str, list[Weights]] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, version: int, task: str = "classification", **kwargs: Any) -> list[Weights]:
        """Write a version (see `write_version`); the last one added of a model is the served one."""
        weights = write_version(self.root, name, version, task, **kwargs)
        self.weights[name], self.tasks[name] = weights, task
        return weights

    def expected(self, x: np.ndarray, model: str = "iris") -> np.ndarray:
        """The model's mean probabilities (or predictions) for rows `x` (float64)."""
        return numpy_ensemble(self.weights[model], x, self.tasks[model])


def serving_repository(root: Path) -> Repository:
    """``iris`` (classification, versions 1 and 2), ``reg`` (regression, 3 features), ``broken`` (bad
    checksum): the server suite's repository."""
    repo = Repository(Path(root))
    repo.add("iris", 1, members=3, seed=1)
    repo.add("iris", 2, members=5, hidden=[8], seed=2)
    repo.add("reg", 1, task="regression", n_features=3, members=4, seed=3)
    write_version(repo.root, "broken", 1, seed=4)
    corrupt_manifest(repo.root, "broken", 1)
    return repo


def client_repository(root: Path) -> Repository:
    """``iris`` (classification, 4 features) and ``reg`` (regression, 3 features), all loadable: what
    third-party clients (tritonclient, perf_analyzer, the examples) are pointed at."""
    repo = Repository(Path(root))
    repo.add("iris", 1, members=3, hidden=[8], seed=11)
    repo.add("reg", 1, task="regression", n_features=3, members=4, seed=12)
    return repo


def faulty_repository(root: Path) -> Repository:
    """``iris`` (good, 4 features, 3 classes; also a stray folder ``¹``), ``corrupt`` (ONNX bytes that do
    not parse, right sha256), ``badsha`` (wrong sha256), ``badmanifest`` (manifest.json is not a manifest)."""
    repo = Repository(Path(root))
    repo.add("iris", 1, members=3, hidden=[8], seed=1)
    write_version(repo.root, "corrupt", 1, seed=2)
    member = repo.root / "corrupt" / "1" / "member-0.onnx"
    member.write_bytes(b"this is not an onnx protobuf" * 10)
    manifest = repo.root / "corrupt" / "1" / MANIFEST_FILE
    doc = json.loads(manifest.read_text())
    doc["members"][0]["sha256"] = hashlib.sha256(member.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    write_version(repo.root, "badsha", 1, seed=3)
    corrupt_manifest(repo.root, "badsha", 1)
    write_version(repo.root, "badmanifest", 1, seed=4)
    (repo.root / "badmanifest" / "1" / MANIFEST_FILE).write_text('{"name": "badmanifest", "version": "one"')
    # A version folder whose name is a digit to str.isdigit() but not to int(): skipped, not a crash.
    (repo.root / "iris" / "\u00b9").mkdir()
    return repo


def digits_like_repository(root: Path, members: int = 5, hidden: list[int] | None = None) -> Repository:
    """``digits``: 64 features, 10 classes, shaped like the default trained model (without training)."""
    repo = Repository(Path(root))
    repo.add("digits", 1, n_features=64, width=10, members=members, hidden=hidden or [64], seed=0)
    return repo


def tiny_repository(root: Path, members: int = 2) -> Repository:
    """``tiny``: linear + softmax members on 4 raw features and 3 named classes (the image test's model)."""
    repo = Repository(Path(root))
    repo.add(
        "tiny",
        1,
        members=members,
        labels=["setosa", "versicolor", "virginica"],
        feature_names=[f"x{i}" for i in range(4)],
        description="Image-test fixture: linear + softmax members.",
    )
    return repo
