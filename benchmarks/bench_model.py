"""The benchmark's model: 5 small BatchNorm MLPs written as a real model-repository version, plus the
members fused into one ONNX graph (the in-process compute limit).

Built from random weights so `make bench` works on a fresh clone without training; a few forward passes in
train mode on random data give BatchNorm non-trivial running statistics, so the exported graphs compute what
a trained member would (same ops, same shapes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

N_FEATURES, HIDDEN, N_CLASSES, N_MEMBERS = 64, 256, 10, 5
MODEL_NAME = "bench"


def _torch_members(n_members: int, seed: int) -> tuple[list[object], np.ndarray, np.ndarray]:
    # torch is imported here only: the rest of the harness (and the server side) runs without it.
    import torch
    from torch import nn

    from training.models import Standardize

    def block(n_in: int, n_out: int) -> list[nn.Module]:
        return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(0.1)]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Digits-like raw features (pixel intensities 0..16) so the baked-in standardization is not a no-op.
    mean = rng.uniform(0, 8, N_FEATURES).astype(np.float32)
    std = rng.uniform(1, 6, N_FEATURES).astype(np.float32)
    members = []
    for _ in range(n_members):
        model = nn.Sequential(
            Standardize(mean, std),
            *block(N_FEATURES, HIDDEN),
            *block(HIDDEN, HIDDEN),
            nn.Linear(HIDDEN, N_CLASSES),
        )
        model.train()  # train mode: the forward passes below update BatchNorm's running mean and variance
        with torch.no_grad():
            for _ in range(8):
                x = torch.from_numpy(mean + std * rng.normal(size=(128, N_FEATURES)).astype(np.float32))
                model(x)
        members.append(model)
    return members, mean, std


def build_repository(repository: Path, n_members: int = N_MEMBERS, seed: int = 0) -> Path:
    """Export `n_members` random BatchNorm MLPs and write them as the next version of model ``bench``.

    Returns the version folder (``repository/bench/<v>``)."""
    from training.export import export_member
    from training.repository import MemberArtifact, write_version

    members, mean, std = _torch_members(n_members, seed)
    staging = Path(repository) / ".staging"
    artifacts = []
    for i, model in enumerate(members):
        path = staging / f"member-{i}.onnx"
        export_member(model, N_FEATURES, path, "classification", sample=mean + std)
        artifacts.append(MemberArtifact(onnx_path=path, seed=seed + i))
    version = write_version(
        repository,
        MODEL_NAME,
        artifacts,
        task="classification",
        labels=[str(c) for c in range(N_CLASSES)],
        mean=mean.tolist(),
        std=std.tolist(),
        description="random-weight BatchNorm MLPs for benchmarks (not trained)",
    )
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    return version


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
    out_type = first.graph.output[0]
    graph = helper.make_graph(
        nodes,
        "fused_ensemble",
        [first.graph.input[0]],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, out_type_width(out_type)])],
        initializers,
    )
    fused = helper.make_model(graph, opset_imports=list(first.opset_import))
    fused.ir_version = first.ir_version
    onnx.checker.check_model(fused)
    return fused


def out_type_width(value_info: onnx.ValueInfoProto) -> int:
    return value_info.type.tensor_type.shape.dim[1].dim_value
