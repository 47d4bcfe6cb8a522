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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
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
