"""A tiny classification ensemble written with onnx's helper API, for testing the image without torch.

Each member is ``softmax(x @ W + b)`` on 4 raw features and 3 classes; the manifest is validated by the
server's own schema, so an image test fails here first if the contract and the fixture drift apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.manifest import MANIFEST_FILE, InputSpec, Manifest, Member, output_specs, sha256_file

MODEL_NAME = "tiny"
N_FEATURES = 4
LABELS = ["setosa", "versicolor", "virginica"]
INPUT_NAME = "input"


def _member_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(N_FEATURES, len(LABELS))).astype(np.float32)
    bias = rng.normal(size=(len(LABELS),)).astype(np.float32)
    return weight, bias


def _member_graph(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        name="linear_softmax",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", N_FEATURES])],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    # Opset 17 and IR 9 load in every onnxruntime the extras allow (>= 1.20).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def expected_probabilities(rows: np.ndarray, members: int = 2) -> np.ndarray:
    """The ensemble's mean probabilities for `rows`, computed with numpy (the reference for the server)."""
    outputs = []
    for seed in range(members):
        weight, bias = _member_weights(seed)
        logits = rows.astype(np.float32) @ weight + bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        outputs.append(exp / exp.sum(axis=1, keepdims=True))
    return np.mean(outputs, axis=0)


def build_tiny_repository(root: Path, members: int = 2) -> Path:
    """Write ``root/tiny/1`` (member graphs + manifest) and return the version folder."""
    version_dir = root / MODEL_NAME / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in range(members):
        path = version_dir / f"member-{seed}.onnx"
        onnx.save_model(_member_graph(*_member_weights(seed)), path)
        entries.append(Member(file=path.name, sha256=sha256_file(path), arch="linear", seed=seed))
    manifest = Manifest(
        name=MODEL_NAME,
        version=1,
        task="classification",
        libraries={"onnx": onnx.__version__, "numpy": np.__version__},
        description="Image-test fixture: linear + softmax members.",
        inputs=[
            InputSpec(
                name=INPUT_NAME,
                shape=[-1, N_FEATURES],
                feature_names=[f"x{i}" for i in range(N_FEATURES)],
            )
        ],
        outputs=output_specs("classification", len(LABELS)),
        labels=LABELS,
        members=entries,
    )
    (version_dir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return version_dir
