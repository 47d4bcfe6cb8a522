"""A table member's graph takes raw columns (text and numbers with NaN) and answers as torch does,
missing values and unseen categories included; a graph that disagrees fails the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.manifest import tensor_names
from tests.training.tables import penguin_like, write_csv
from training import export
from training.data import ColumnOverrides, load_dataset
from training.export import ExportError, export_table_member, table_feed
from training.fit import FitConfig, fit


def _member(tmp_path: Path, drop: tuple[str, ...] = ()):
    df = penguin_like(n=160).drop(columns=list(drop))
    ds = load_dataset(write_csv(tmp_path, df), "species", kinds=ColumnOverrides(ignore=("id",)))
    idx = np.arange(len(ds))
    result = fit(ds, idx[:120], idx[120:], FitConfig(epochs=2, width=16, patience=5), progress=False)
    return ds, result.model, tensor_names([c.name for c in ds.feature_columns])


def test_columns_in_raw_values_out_equal_to_torch(tmp_path: Path) -> None:
    ds, model, names = _member(tmp_path)
    result = export_table_member(model, tmp_path / "m.onnx", "classification", ds.X[:64], names)
    assert result.max_abs_diff < 1e-5
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {
        "island": ("tensor(string)", ["batch", 1]),
        "bill_length__mm_": ("tensor(float)", ["batch", 1]),
        "sex": ("tensor(string)", ["batch", 1]),
        "clutch": ("tensor(float)", ["batch", 1]),
    }
    # What a client sends: text, "" or "NA" for missing, NaN for a missing number, a never-seen island.
    feed = {
        "island": np.array([["Dream"], ["Atlantis"], [""], ["NA"]], dtype=object),
        "bill_length__mm_": np.array([[41.0], [np.nan], [38.0], [np.nan]], dtype=np.float32),
        "sex": np.array([["male"], ["female"], [""], ["null"]], dtype=object),
        "clutch": np.array([[1.0], [2.0], [np.nan], [3.0]], dtype=np.float32),
    }
    got = session.run(None, feed)[0]
    # The same rows as table codes through torch: Dream = 1, Atlantis = a code the table never had.
    codes = np.array(
        [[1, 41.0, 1, 1], [99, np.nan, 0, 2], [np.nan, 38.0, np.nan, np.nan], [np.nan, np.nan, np.nan, 3]],
        dtype=np.float32,
    )
    import torch

    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(codes)), -1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert not any(
        n.op_type == "LabelEncoder" and n.domain != "ai.onnx.ml"
        for n in onnx.load(str(tmp_path / "m.onnx")).graph.node
    )


def test_numeric_only_table_keeps_one_matrix_input_that_fills_nan(tmp_path: Path) -> None:
    ds, model, names = _member(tmp_path, drop=("island", "sex"))
    export_table_member(model, tmp_path / "m.onnx", "classification", ds.X[:64], names)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (only,) = session.get_inputs()
    assert only.name == "input" and only.type == "tensor(float)" and only.shape == ["batch", 2]
    x = np.array([[np.nan, 2.0], [40.0, np.nan]], dtype=np.float32)
    assert np.isfinite(session.run(None, {"input": x})[0]).all()
    np.testing.assert_allclose(table_feed(ds.feature_columns, x, names)["input"], x)


def test_a_graph_that_maps_text_wrongly_fails_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, model, names = _member(tmp_path)
    real = export._add_column_inputs

    def off_by_one(path, procs, tensor_names, missing_index, other_index):
        return real(path, procs, tensor_names, other_index, missing_index)  # missing and unseen swapped

    monkeypatch.setattr(export, "_add_column_inputs", off_by_one)
    with pytest.raises(ExportError, match=r"disagree .* missing values and unseen categories"):
        export_table_member(model, tmp_path / "m.onnx", "classification", ds.X[:64], names)
