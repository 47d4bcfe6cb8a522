from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from testing.stand_ins import N_FEATURES, dataset, torch_output, trained
from training.export import ExportError, export_member

CASES = [("mlp", "classification", 3), ("cnn", "classification", 3), ("reg", "regression", 2)]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("kind", "task", "width"), CASES)
def test_onnx_matches_torch_at_batch_1_and_37(tmp_path: Path, kind: str, task: str, width: int) -> None:
    model = trained(kind)
    x, _ = dataset(task, n=37, seed=5)  # rows the model never saw
    result = export_member(model, N_FEATURES, tmp_path / "m.onnx", task, sample=x)
    assert result.max_abs_diff <= 1e-5
    assert result.seconds > 0
    session = _session(tmp_path / "m.onnx")
    output = "probabilities" if task == "classification" else "prediction"
    assert [o.name for o in session.get_outputs()] == [output]
    for batch in (1, 37):
        got = session.run(None, {"input": x[:batch]})[0]
        assert got.shape == (batch, width)
        np.testing.assert_allclose(got, torch_output(model, x[:batch], task), atol=1e-5, rtol=1e-5)
    if task == "classification":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_one_self_contained_file_with_a_dynamic_batch_axis(tmp_path: Path) -> None:
    export_member(trained("cnn"), N_FEATURES, tmp_path / "m.onnx", "classification")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no .onnx.data
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[0].dim_value == 0
    assert dims[1].dim_value == N_FEATURES


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_row_alone_equals_the_row_inside_a_batch(tmp_path: Path, kind: str) -> None:
    model = trained(kind)
    x, _ = dataset("classification", n=37, seed=7)
    # The check can fail: in training mode BatchNorm uses the batch's statistics, so the same row gets
    # a different output in a different batch.
    model.train()
    with torch.no_grad():
        a = model(torch.from_numpy(x))[3]
        b = model(torch.from_numpy(np.concatenate([x[3:4], x[20:] * 2.0])))[0]
    model.eval()
    assert not torch.allclose(a, b, atol=1e-3)

    alone_torch = torch_output(model, x[3:4], "classification")[0]
    batch_torch = torch_output(model, x, "classification")[3]
    np.testing.assert_allclose(alone_torch, batch_torch, atol=1e-6)

    export_member(model, N_FEATURES, tmp_path / "m.onnx", "classification")
    session = _session(tmp_path / "m.onnx")
    alone = session.run(None, {"input": x[3:4]})[0][0]
    batch = session.run(None, {"input": x})[0][3]
    np.testing.assert_allclose(alone, batch, atol=1e-6)
    np.testing.assert_allclose(alone, alone_torch, atol=1e-5)


def test_a_single_target_regressor_is_served_two_dimensional(tmp_path: Path) -> None:
    model = trained("reg1")
    x, _ = dataset("regression", n=37, seed=3)
    with torch.no_grad():
        assert model(torch.from_numpy(x)).shape == (37,)
    export_member(model, N_FEATURES, tmp_path / "m.onnx", "regression", sample=x)
    got = _session(tmp_path / "m.onnx").run(None, {"input": x})[0]
    assert got.shape == (37, 1)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_model_mode_is_restored(tmp_path: Path, mode: str) -> None:
    model = trained("mlp")
    model.train(mode == "train")
    model.body[3].eval()  # a mixed state must come back exactly as it was
    before = {name: m.training for name, m in model.named_modules()}
    try:
        export_member(model, N_FEATURES, tmp_path / "m.onnx", "classification")
        assert {name: m.training for name, m in model.named_modules()} == before
    finally:
        model.eval()


class _ShapeDependent(nn.Module):
    """Behaves differently for batch size 2 (the tracing example) than for any other: tracing bakes in
    one branch, so the exported graph cannot match torch at batch sizes 1 and 37."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if x.shape[0] == 2 else out * 3.0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_graph_that_differs_from_torch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="onnxruntime and torch disagree at batch size 1"):
        export_member(_ShapeDependent(), N_FEATURES, tmp_path / "m.onnx", "classification")


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="float32"):
        export_member(nn.Linear(N_FEATURES, 3).double(), N_FEATURES, tmp_path / "m.onnx", "classification")
    with pytest.raises(ExportError, match="unknown task"):
        export_member(nn.Linear(N_FEATURES, 3), N_FEATURES, tmp_path / "m.onnx", "ranking")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match=r"exporting m\.onnx failed"):
        export_member(nn.Linear(N_FEATURES + 1, 3), N_FEATURES, tmp_path / "m.onnx", "classification")
