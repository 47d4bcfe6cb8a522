"""Build small model repositories with onnx's helper API (no torch): members are tiny MLPs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.manifest import Manifest, output_specs, sha256_file


def member_graph(weights: list[tuple[np.ndarray, np.ndarray]], task: str, opset: int = 17) -> onnx.ModelProto:
    """An MLP: (MatMul + Add [+ Relu between layers]) ..., then Softmax for classification."""
    n_in = weights[0][0].shape[0]
    width = weights[-1][0].shape[1]
    out_name = "probabilities" if task == "classification" else "prediction"
    nodes, inits = [], []
    x = "input"
    for i, (w, b) in enumerate(weights):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        last = i == len(weights) - 1
        z = f"z{i}" if not last or task == "classification" else out_name
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [z], name=f"add{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [z], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
        elif task == "classification":
            nodes.append(helper.make_node("Softmax", [z], [out_name], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        "member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def random_weights(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rng.standard_normal((a, b)) / np.sqrt(a), rng.standard_normal(b) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]


def make_manifest(
    name: str = "m",
    version: int = 1,
    task: str = "classification",
    n_features: int = 2,
    width: int = 3,
    *,
    labels: list[str] | None = None,
    members: list[dict] | None = None,
) -> Manifest:
    """A valid manifest with input ``[-1, n_features]``; labels default to class_0..; members to one stub."""
    if labels is None and task == "classification":
        labels = [f"class_{c}" for c in range(width)]
    return Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "task": task,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, n_features]}],
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
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Write ``root/name/version`` with `members` member graphs; returns every member's weights."""
    width = width or (3 if task == "classification" else 2)
    rng = np.random.default_rng(seed)
    vdir = root / name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    all_weights, member_entries = [], []
    for i in range(members):
        weights = random_weights(rng, [n_features, *(hidden or []), width])
        all_weights.append(weights)
        path = vdir / f"member-{i}.onnx"
        onnx.save(member_graph(weights, task), str(path))
        member_entries.append({"file": path.name, "sha256": sha256_file(path), "seed": i})
    manifest = make_manifest(name, version, task, n_features, width, members=member_entries)
    (vdir / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return all_weights


def numpy_member(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, task: str) -> np.ndarray:
    """The member graph computed in numpy (float64), for exact comparisons."""
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    if task == "classification":
        e = np.exp(h - h.max(axis=1, keepdims=True))
        h = e / e.sum(axis=1, keepdims=True)
    return h


def corrupt_manifest(root: Path, name: str, version: int) -> None:
    """Make a version fail its checksum check."""
    path = root / name / str(version) / "manifest.json"
    data = json.loads(path.read_text())
    data["members"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
