"""Member graphs written with onnx's helper API (no torch), and the same members computed in numpy.

Small MLPs with known weights: a test can compute the exact answer a server must give, and a benchmark can
shape the compute like a trained model without training one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

Weights = list[tuple[np.ndarray, np.ndarray]]  # (W [in, out], b [out]) per layer


def random_weights(rng: np.random.Generator, sizes: list[int]) -> Weights:
    """Layers for `sizes` = [inputs, hidden..., outputs], scaled so activations stay of order 1."""
    return [
        (rng.standard_normal((a, b)) / np.sqrt(a), rng.standard_normal(b) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]


def member_graph(weights: Weights, task: str, opset: int = 17) -> onnx.ModelProto:
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
    # onnx writes its newest IR version; IR 8 loads in every onnxruntime the extras allow (>= 1.20).
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def numpy_member(weights: Weights, x: np.ndarray, task: str) -> np.ndarray:
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


def numpy_ensemble(members: list[Weights], x: np.ndarray, task: str = "classification") -> np.ndarray:
    """The members' mean output for rows `x`: what the server must answer (float64 here)."""
    return np.mean([numpy_member(w, x, task) for w in members], axis=0)


def fuse_members(member_paths: list[Path], output: str = "probabilities") -> onnx.ModelProto:
    """One graph that runs every member on the shared input and averages their `output` (ONNX Mean).

    What the fastest in-process ensemble can do: one session call per batch instead of one per member."""
    first = onnx.load(str(member_paths[0]))
    input_name = first.graph.input[0].name
    nodes, initializers, member_outputs = [], [], []
    for i, path in enumerate(member_paths):
        model = compose.add_prefix(onnx.load(str(path)), prefix=f"m{i}_")
        prefixed_input = model.graph.input[0].name
        for node in model.graph.node:
            node.input[:] = [input_name if name == prefixed_input else name for name in node.input]
            nodes.append(node)
        initializers.extend(model.graph.initializer)
        member_outputs.append(model.graph.output[0].name)
    nodes.append(helper.make_node("Mean", member_outputs, [output]))
    width = first.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    graph = helper.make_graph(
        nodes,
        "fused_ensemble",
        [first.graph.input[0]],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, width])],
        initializers,
    )
    fused = helper.make_model(graph, opset_imports=list(first.opset_import))
    fused.ir_version = first.ir_version
    onnx.checker.check_model(fused)
    return fused
