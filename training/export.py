"""Export one trained member to a self-contained ONNX file the server can load, and prove it matches torch.

The member graph takes raw features ``[N, F]`` (the model's first layer standardizes them) and produces the
one output the manifest names for the task (``server.manifest.MEMBER_OUTPUT``): ``probabilities`` (softmax
applied in the graph) or ``prediction`` ``[N, T]`` in target units.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from server.manifest import MEMBER_OUTPUT, Task

# Opset 17 is supported by every onnxruntime >= 1.14 and by TensorRT 8.6+, and has every op these nets use.
OPSET = 17
PARITY_BATCHES = (1, 37)
# float32 graphs computed by two runtimes differ by rounding only; rtol covers regression targets whose
# units make values large (atol alone would demand more than float32 can hold for values ~1e3).
PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-5


class ExportError(RuntimeError):
    """The member could not be exported, or the exported graph does not compute what the torch model does."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    seconds: float  # torch.onnx.export alone
    total_seconds: float  # export + checker + parity check
    max_abs_diff: float  # worst |onnxruntime - torch| over the parity batches


class _ServingHead(nn.Module):
    """What the server runs: probabilities for classification, a 2-D prediction for regression."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(*inputs)
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        # A single-target regressor may return [N]; the manifest promises [N, T].
        return out.reshape(out.shape[0], -1)


def _parity_inputs(n_features: int, sample: np.ndarray | None, batch: int) -> np.ndarray:
    if sample is not None:
        rows = np.asarray(sample, dtype=np.float32).reshape(-1, n_features)
        return np.resize(rows, (batch, n_features)).astype(np.float32)  # tiles rows if too few
    return np.random.default_rng(batch).normal(size=(batch, n_features)).astype(np.float32)


def _check_graph(path: Path, input_name: str, output_name: str, n_features: int) -> None:
    if path.with_name(path.name + ".data").exists():
        raise ExportError(f"{path.name}: the export wrote external data; members must be self-contained")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    if [i.name for i in graph.input] != [input_name] or [o.name for o in graph.output] != [output_name]:
        raise ExportError(f"{path.name}: expected one input {input_name!r} and one output {output_name!r}")
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or dims[0].dim_value != 0 or dims[1].dim_value != n_features:
        raise ExportError(f"{path.name}: input must be [batch, {n_features}] with a dynamic batch axis")


def export_member(
    model: nn.Module,
    n_features: int,
    path: Path | str,
    task: Task,
    *,
    input_name: str = "input",
    sample: np.ndarray | None = None,
) -> ExportResult:
    """Write `model` to `path` as one ONNX file and check it against torch at batch sizes 1 and 37.

    `sample` (raw feature rows) feeds the parity check; random normal rows are used without it.
    Raises ExportError when the export fails or the graphs disagree beyond float32 rounding.
    """
    if task not in MEMBER_OUTPUT:
        raise ExportError(f"unknown task {task!r}: use 'classification' or 'regression'")
    path = Path(path)
    output_name = MEMBER_OUTPUT[task]
    params = list(model.parameters()) + list(model.buffers())
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in params):
        raise ExportError("the model must be float32: the served input is FP32")
    # Export on the CPU; a model trained on a GPU is copied so the caller's model stays where it is.
    on_cpu = all(p.device.type == "cpu" for p in params)
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    modes = {m: m.training for m in cpu_model.modules()}
    # Eval mode: BatchNorm must use its running statistics (so a row's prediction does not depend on the
    # other rows of its batch) and dropout must be off. Otherwise the export bakes in training behaviour.
    cpu_model.eval()
    head = _ServingHead(cpu_model, task).eval()
    started = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.from_numpy(_parity_inputs(n_features, sample, 2))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # torch >= 2.9 warns that the TorchScript exporter is legacy; we choose it on purpose: it is
            # fast, needs no onnxscript, and writes one self-contained file.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                head,
                (example,),
                str(path),
                dynamo=False,
                export_params=True,
                opset_version=OPSET,
                do_constant_folding=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )
        export_seconds = time.perf_counter() - t0
        _check_graph(path, input_name, output_name, n_features)
        worst = _parity(head, path, n_features, sample, input_name)
    except ExportError:
        raise
    except Exception as exc:  # torch and onnx raise many types; the caller needs one
        raise ExportError(f"exporting {path.name} failed: {exc}") from exc
    finally:
        for module, was_training in modes.items():
            module.train(was_training)
    return ExportResult(path, export_seconds, time.perf_counter() - started, worst)


def _parity(
    head: nn.Module, path: Path, n_features: int, sample: np.ndarray | None, input_name: str
) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a tiny graph; threads only add start-up cost here
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = _parity_inputs(n_features, sample, batch)
        with torch.no_grad():
            expected = head(torch.from_numpy(x)).numpy()
        got = session.run(None, {input_name: x})[0]
        if got.shape != expected.shape:
            raise ExportError(f"{path.name}: onnxruntime gave shape {got.shape}, torch {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        if not np.all(np.isfinite(got)) or not np.allclose(got, expected, atol=PARITY_ATOL, rtol=PARITY_RTOL):
            raise ExportError(
                f"{path.name}: onnxruntime and torch disagree at batch size {batch} "
                f"(max abs diff {diff:.3g} > atol {PARITY_ATOL})"
            )
        worst = max(worst, diff)
    return worst


# ai.onnx.ml opset 2 has LabelEncoder-2 (string keys -> int64 values with a default): onnxruntime's CPU
# build has run it since 1.1, and it is what turns a category's text into its index inside the graph.
ML_OPSET = 2
UNSEEN_TEXT = "\x00never-seen-in-training"  # what the parity check sends as an unseen category


def export_table_member(
    model: nn.Module, path: Path | str, task: Task, sample: np.ndarray, tensor_names: list[str]
) -> ExportResult:
    """Write a `TabularNet` as one ONNX graph that takes the table's raw columns, and check it.

    Inputs: with categorical columns, one ``[N, 1]`` input per column (`tensor_names`, in the model's
    column order): float32 for numbers (NaN = missing), string for categories (the graph's LabelEncoder
    maps text to the member's index: "" and the `MISSING_TEXT` words to "missing", anything unknown to
    "rare or unseen"). A numeric-only table keeps one ``input`` ``[N, F]`` (NaN = missing).
    `sample` (table codes of training rows) feeds the parity check, with missing values and unseen
    categories added; a disagreement beyond float32 rounding raises ExportError.
    """
    from training.preprocess import MISSING_INDEX, OTHER_INDEX

    if task not in MEMBER_OUTPUT:
        raise ExportError(f"unknown task {task!r}: use 'classification' or 'regression'")
    path = Path(path)
    procs = model.procs
    output_name = MEMBER_OUTPUT[task]
    cpu_model = copy.deepcopy(model).cpu().eval()  # eval: BatchNorm running statistics, no dropout
    head = _ServingHead(cpu_model.core, task).eval()
    rows = _parity_rows(procs, sample)
    started = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            core_inputs = cpu_model.core_inputs(torch.from_numpy(rows[:2]))
        core_names = (["x_num"] if procs.numeric else []) + (["x_cat"] if procs.categorical else [])
        if not procs.categorical:
            core_names = ["input"]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                head,
                tuple(core_inputs),
                str(path),
                dynamo=False,
                export_params=True,
                opset_version=OPSET,
                do_constant_folding=True,
                input_names=core_names,
                output_names=[output_name],
                dynamic_axes={**{n: {0: "batch"} for n in core_names}, output_name: {0: "batch"}},
            )
        export_seconds = time.perf_counter() - t0
        if procs.categorical:
            _add_column_inputs(path, procs, tensor_names, MISSING_INDEX, OTHER_INDEX)
        if path.with_name(path.name + ".data").exists():
            raise ExportError(f"{path.name}: the export wrote external data; members must be self-contained")
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in PARITY_BATCHES:
            x = np.resize(rows, (batch, rows.shape[1])).astype(np.float32)
            with torch.no_grad():
                expected = head(*cpu_model.core_inputs(torch.from_numpy(x))).numpy()
            got = session.run([output_name], table_feed(procs.columns, x, tensor_names))[0]
            if got.shape != expected.shape or not np.all(np.isfinite(got)):
                raise ExportError(f"{path.name}: onnxruntime gave {got.shape}, torch {expected.shape}")
            diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
            if not np.allclose(got, expected, atol=PARITY_ATOL, rtol=PARITY_RTOL):
                raise ExportError(
                    f"{path.name}: onnxruntime and torch disagree at batch size {batch} on rows with missing "
                    f"values and unseen categories (max abs diff {diff:.3g} > atol {PARITY_ATOL})"
                )
            worst = max(worst, diff)
    except ExportError:
        raise
    except Exception as exc:  # torch, onnx and onnxruntime raise many types; the caller needs one
        raise ExportError(f"exporting {path.name} failed: {exc}") from exc
    return ExportResult(path, export_seconds, time.perf_counter() - started, worst)


def _parity_rows(procs: object, sample: np.ndarray) -> np.ndarray:
    """Training rows, then the same rows with every value missing, then with unseen categories."""
    rows = np.asarray(sample, dtype=np.float32)[:16]
    missing = np.full_like(rows, np.nan)
    unseen = rows.copy()
    for j in procs.categorical:  # type: ignore[attr-defined]
        unseen[:, j] = len(procs.columns[j].categories) + 7  # type: ignore[attr-defined]  # no such code
    mixed = rows.copy()
    mixed[::2] = missing[::2]
    return np.concatenate([rows, missing, unseen, mixed])


def table_feed(columns: list[Any], X: np.ndarray, tensor_names: list[str]) -> dict[str, np.ndarray]:
    """The raw columns a client sends for table codes X (training.data): what the exported graph takes."""
    from training.columns import categories_as_text

    if not any(c.kind == "categorical" for c in columns):
        return {"input": np.asarray(X, dtype=np.float32)}
    feed: dict[str, np.ndarray] = {}
    for j, (column, name) in enumerate(zip(columns, tensor_names, strict=True)):
        values = np.asarray(X[:, j], dtype=np.float64)
        if column.kind == "numeric":
            feed[name] = values.astype(np.float32).reshape(-1, 1)
        else:
            n = len(column.categories)
            known = np.where((values >= 0) & (values < n), values, np.nan)
            text = categories_as_text(known, column)
            text = np.where(~np.isnan(values) & np.isnan(known), UNSEEN_TEXT, text)
            feed[name] = text.astype(object).reshape(-1, 1)
    return feed


def _add_column_inputs(
    path: Path, procs: object, tensor_names: list[str], missing_index: int, other_index: int
) -> None:
    """Put one input per column in front of the exported core: Concat the numbers into ``x_num``; each
    category's text -> index with a LabelEncoder, Concat into ``x_cat``."""
    from onnx import TensorProto, helper

    from training.columns import MISSING_TEXT

    model = onnx.load(str(path))
    graph = model.graph
    nodes, inputs = [], []
    numeric, cats = [], []
    cat_j = 0
    for j, (column, name) in enumerate(zip(procs.columns, tensor_names, strict=True)):  # type: ignore[attr-defined]
        if column.kind == "numeric":
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1]))
            numeric.append(name)
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1]))
            index = procs.categorify.text_index(cat_j)  # type: ignore[attr-defined]
            for word in MISSING_TEXT:
                index.setdefault(word, missing_index)
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [name],
                    [f"index_{j}"],
                    domain="ai.onnx.ml",
                    keys_strings=list(index),
                    values_int64s=list(index.values()),
                    default_int64=other_index,
                )
            )
            cats.append(f"index_{j}")
            cat_j += 1
    if numeric:
        nodes.append(helper.make_node("Concat", numeric, ["x_num"], axis=1))
    nodes.append(helper.make_node("Concat", cats, ["x_cat"], axis=1))
    core_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + core_nodes)
    del graph.input[:]
    graph.input.extend(inputs)
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx.save(model, str(path))
