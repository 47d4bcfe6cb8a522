from pathlib import Path

import numpy as np
import pytest

from server.averaging import average as combine
from server.ensemble import Ensemble, fuse_members
from server.manifest import read_manifest
from testing.members import numpy_member
from testing.repositories import write_version


def test_combine_is_mean_population_std_and_argmax() -> None:
    rng = np.random.default_rng(0)
    stacked = rng.random((4, 6, 3)).astype(np.float32)
    out = combine(stacked, "classification")
    np.testing.assert_allclose(out["probabilities"], stacked.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["spread"], stacked.astype(np.float64).std(0, ddof=0), rtol=1e-5)
    np.testing.assert_array_equal(out["label"], stacked.mean(0).argmax(1))
    assert out["label"].dtype == np.int64 and out["probabilities"].dtype == np.float32


def test_combine_regression_and_single_member_has_zero_spread() -> None:
    stacked = np.array([[[1.0, 2.0]], [[3.0, 6.0]]], dtype=np.float32)
    out = combine(stacked, "regression")
    np.testing.assert_array_equal(out["prediction"], [[2.0, 4.0]])
    np.testing.assert_array_equal(out["spread"], [[1.0, 2.0]])
    assert set(out) == {"prediction", "spread"}
    assert (combine(stacked[:1], "regression")["spread"] == 0).all()


@pytest.mark.parametrize("execution", ["sequential", "fused", "parallel", "auto"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_every_strategy_matches_numpy(tmp_path: Path, execution: str, task: str) -> None:
    weights = write_version(tmp_path, "m", 1, task=task, members=4, hidden=[6], seed=7)
    vdir = tmp_path / "m" / "1"
    ens = Ensemble(read_manifest(vdir), vdir, member_execution=execution, max_batch_size=16, warmup_runs=1)
    x = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    members = np.stack([numpy_member(w, x, task) for w in weights])
    out = ens.predict(x)
    key = "probabilities" if task == "classification" else "prediction"
    np.testing.assert_allclose(out[key], members.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["spread"], members.std(0), atol=1e-5)
    if task == "classification":
        np.testing.assert_array_equal(out["label"], members.mean(0).argmax(1))
    assert ens.execution in ("sequential", "fused", "parallel")
    if execution != "auto":
        assert ens.execution == execution
    else:
        assert set(ens.timings) == {"sequential", "fused", "parallel"}
    assert ens.info.provider == "CPUExecutionProvider"
    ens.close()


def test_fused_graph_outputs_each_member(tmp_path: Path) -> None:
    weights = write_version(tmp_path, "m", 1, members=3, seed=5)
    vdir = tmp_path / "m" / "1"
    blob, names = fuse_members([vdir / f"member-{i}.onnx" for i in range(3)], ["input"], "probabilities")
    assert names == ["m0_probabilities", "m1_probabilities", "m2_probabilities"]
    import onnxruntime as ort

    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = np.ones((2, 4), dtype=np.float32)
    for w, got in zip(weights, sess.run(names, {"input": x}), strict=True):
        np.testing.assert_allclose(got, numpy_member(w, x, "classification"), atol=1e-6)


def test_member_width_not_matching_manifest_is_refused(tmp_path: Path) -> None:
    write_version(tmp_path, "m", 1, members=2, width=3)
    write_version(tmp_path, "other", 1, members=2, width=4)
    vdir = tmp_path / "m" / "1"
    # Swap in members with 4 classes (and fix the manifest's checksums is not needed: Ensemble skips them).
    for i in range(2):
        (vdir / f"member-{i}.onnx").write_bytes((tmp_path / "other" / "1" / f"member-{i}.onnx").read_bytes())
    with pytest.raises(ValueError, match="members produce"):
        Ensemble(read_manifest(vdir), vdir, member_execution="sequential", warmup_runs=1)
