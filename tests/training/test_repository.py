import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import training.repository as repo_mod
from server.manifest import read_manifest, sha256_file
from testing.stand_ins import (
    FEATURE_SHAPE,
    N_CLASSES,
    N_FEATURES,
    dataset,
    export_all,
    torch_output,
    trained,
)
from training.ensemble_predict import average_predictions
from training.repository import MemberArtifact, RepositoryError, existing_versions, write_version

LABELS = ["low", "mid", "high"]


@pytest.fixture(scope="module")
def cls_members(tmp_path_factory: pytest.TempPathFactory) -> list[MemberArtifact]:
    return export_all(["mlp", "cnn", "mlp"], "classification", tmp_path_factory.mktemp("members"))


def _write(repository: Path, members: list[MemberArtifact], **over: Any) -> Path:
    x, _ = dataset("classification")
    fields: dict[str, Any] = {
        "task": "classification",
        "labels": LABELS,
        "feature_names": [f"px{i}" for i in range(N_FEATURES)],
        "feature_shape": list(FEATURE_SHAPE),
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "ensemble_metrics": {"accuracy": 0.9, "log_loss": 0.3},
    }
    fields.update(over)
    return write_version(repository, "digits", members, **fields)


def _leftovers(repository: Path) -> list[str]:
    return sorted(str(p.relative_to(repository)) for p in repository.rglob("*"))


def test_a_complete_version_is_written(tmp_path: Path, cls_members: list[MemberArtifact]) -> None:
    report = tmp_path / "report-src"
    (report / "nested").mkdir(parents=True)
    (report / "report.md").write_text("Diagnosis: good fit\n")
    (report / "nested" / "curves.png").write_bytes(b"\x89PNG")
    version_dir = _write(tmp_path / "repo", cls_members, report_dir=report)

    assert version_dir == tmp_path / "repo" / "digits" / "1"
    assert sorted(os.listdir(version_dir)) == [
        "manifest.json",
        "member-0.onnx",
        "member-1.onnx",
        "member-2.onnx",
        "report",
    ]
    assert (version_dir / "report" / "nested" / "curves.png").read_bytes() == b"\x89PNG"
    assert not list((tmp_path / "repo").rglob("*.data"))

    manifest = read_manifest(version_dir)  # the server's own schema
    assert (manifest.name, manifest.version, manifest.task) == ("digits", 1, "classification")
    assert manifest.labels == LABELS
    assert manifest.input.shape == [-1, N_FEATURES] and manifest.input.name == "input"
    assert manifest.input.feature_shape == list(FEATURE_SHAPE)
    assert manifest.output("probabilities").shape == [-1, N_CLASSES]
    assert manifest.output("spread").shape == [-1, N_CLASSES]
    assert manifest.output("label").datatype == "INT64"
    assert set(manifest.libraries) >= {"torch", "onnx", "onnxruntime", "numpy"}
    assert manifest.preprocessing is not None and len(manifest.preprocessing.mean) == N_FEATURES
    assert set(manifest.metrics) == {"member-0", "member-1", "member-2", "ensemble"}
    assert [m.arch for m in manifest.members] == ["mlp", "cnn", "mlp"]
    assert manifest.members[1].val_metrics == {"loss": 1.5}
    for member, source in zip(manifest.members, cls_members, strict=True):
        assert member.sha256 == sha256_file(version_dir / member.file) == sha256_file(source.onnx_path)
    assert json.loads((version_dir / "manifest.json").read_text())["schema_version"] == 1


def test_versions_are_numbered_after_the_highest(tmp_path: Path, cls_members: list[MemberArtifact]) -> None:
    repository = tmp_path / "repo"
    assert _write(repository, cls_members[:1]).name == "1"
    assert _write(repository, cls_members[:1]).name == "2"
    model_dir = repository / "digits"
    (model_dir / "7").mkdir()
    (model_dir / ".tmp-abandoned").mkdir()  # another writer's leftovers and stray folders are not versions
    (model_dir / "99x").mkdir()
    assert _write(repository, cls_members[:1]).name == "8"
    assert existing_versions(model_dir) == [1, 2, 7, 8]
    assert read_manifest(model_dir / "8").version == 8


def test_a_version_claimed_meanwhile_is_not_overwritten(
    tmp_path: Path, cls_members: list[MemberArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename
    calls: list[str] = []

    def racing_rename(src: Path, dst: Path) -> None:
        if not calls:  # another writer publishes the same number between our scan and our rename
            Path(dst).mkdir()
            (Path(dst) / "manifest.json").write_text("theirs")
        calls.append(str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(repo_mod.os, "rename", racing_rename)
    version_dir = _write(tmp_path / "repo", cls_members[:1])
    assert version_dir.name == "2"
    assert (tmp_path / "repo" / "digits" / "1" / "manifest.json").read_text() == "theirs"
    assert read_manifest(version_dir).version == 2
    assert not list((tmp_path / "repo" / "digits").glob(".tmp-*"))


@pytest.mark.parametrize("name", ["Digits", "../etc", "", "a" * 65, "my model"])
def test_invalid_names_are_refused(tmp_path: Path, cls_members: list[MemberArtifact], name: str) -> None:
    with pytest.raises(RepositoryError, match="invalid model name"):
        write_version(tmp_path, name, cls_members, task="classification", labels=LABELS)
    assert _leftovers(tmp_path) == []


def test_a_missing_member_leaves_nothing(tmp_path: Path, cls_members: list[MemberArtifact]) -> None:
    members = [*cls_members[:1], MemberArtifact(onnx_path=tmp_path / "nope.onnx")]
    with pytest.raises(RepositoryError, match=r"nope\.onnx does not exist"):
        _write(tmp_path / "repo", members)
    assert not (tmp_path / "repo" / "digits").exists()


def test_a_failure_mid_write_leaves_no_version_and_no_temp_folder(
    tmp_path: Path, cls_members: list[MemberArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    _write(repository, cls_members[:1])
    real_copy = repo_mod.shutil.copyfile
    copied: list[str] = []

    def failing_copy(src: Path, dst: Path) -> Any:
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(str(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(repo_mod.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="No space left"):
        _write(repository, cls_members)
    assert copied  # it did fail half-way, after one member was written
    assert os.listdir(repository / "digits") == ["1"]  # the earlier version only: no "2", no ".tmp-*"


def test_an_invalid_manifest_is_refused_after_copying_and_leaves_nothing(
    tmp_path: Path, cls_members: list[MemberArtifact]
) -> None:
    with pytest.raises(RepositoryError, match="labels must name each"):
        _write(tmp_path / "repo", cls_members, labels=["only", "two"])
    with pytest.raises(RepositoryError, match="feature_names must name every feature"):
        _write(tmp_path / "repo", cls_members, feature_names=["a"])
    assert _leftovers(tmp_path / "repo") == []


def test_members_must_agree_and_match_the_task(tmp_path: Path, cls_members: list[MemberArtifact]) -> None:
    reg = export_all(["reg"], "regression", tmp_path)
    with pytest.raises(RepositoryError, match="must have one input and one output named 'probabilities'"):
        _write(tmp_path / "repo", [cls_members[0], *reg])
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(RepositoryError, match="not a readable ONNX file"):
        _write(tmp_path / "repo", [MemberArtifact(onnx_path=tmp_path / "junk.onnx")])
    with pytest.raises(RepositoryError, match="give both mean and std"):
        _write(tmp_path / "repo", cls_members, std=None)
    assert _leftovers(tmp_path / "repo") == []


def test_regression_end_to_end(tmp_path: Path) -> None:
    members = export_all(["reg", "reg", "reg"], "regression", tmp_path / "members")
    version_dir = write_version(
        tmp_path / "repo",
        "house-prices",
        members,
        task="regression",
        ensemble_metrics={"rmse": 1.0, "r2": 0.5},
    )
    manifest = read_manifest(version_dir)
    assert manifest.labels is None
    assert {o.name: o.shape for o in manifest.outputs} == {"prediction": [-1, 2], "spread": [-1, 2]}
    x, _ = dataset("regression", n=37, seed=9)
    outputs = [
        ort.InferenceSession(str(version_dir / m.file), providers=["CPUExecutionProvider"]).run(
            None, {manifest.input.name: x}
        )[0]
        for m in manifest.members
    ]
    served = average_predictions(outputs, "regression")
    expected = np.mean([torch_output(trained("reg", seed), x, "regression") for seed in range(3)], axis=0)
    np.testing.assert_allclose(served["prediction"], expected, rtol=1e-5, atol=1e-4)
    assert served["spread"].shape == (37, 2) and np.all(served["spread"] > 0)


@pytest.mark.parametrize(
    "over",
    [
        {"ensemble_metrics": {"accuracy": 0.9, "log_loss": float("nan")}},
        {"ensemble_metrics": {"accuracy": float("inf"), "log_loss": 0.3}},
    ],
)
def test_non_finite_metrics_are_refused_and_nothing_is_written(
    tmp_path: Path, cls_members: list[MemberArtifact], over: dict[str, Any]
) -> None:
    with pytest.raises(RepositoryError, match=r"metric '(log_loss|accuracy)' is (nan|inf)"):
        _write(tmp_path / "repo", cls_members, **over)
    assert _leftovers(tmp_path) == []


def test_non_finite_member_metrics_are_refused(tmp_path: Path, cls_members: list[MemberArtifact]) -> None:
    bad = MemberArtifact(onnx_path=cls_members[0].onnx_path, val_metrics={"loss": float("nan")})
    with pytest.raises(RepositoryError, match="member-1 validation metric 'loss' is nan"):
        _write(tmp_path / "repo", [cls_members[0], bad])
    assert _leftovers(tmp_path) == []
