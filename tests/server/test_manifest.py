import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.manifest import Manifest, Member, output_specs, read_manifest, sha256_file


def _manifest(**over: object) -> dict:
    base = {
        "name": "digits",
        "version": 1,
        "task": "classification",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [o.model_dump() for o in output_specs("classification", 3)],
        "labels": ["a", "b", "c"],
        "members": [{"file": "member-0.onnx", "sha256": "0" * 64}],
    }
    base.update(over)
    return base


def test_valid_classification_manifest_round_trips(tmp_path: Path) -> None:
    m = Manifest.model_validate(_manifest())
    (tmp_path / "manifest.json").write_text(m.model_dump_json())
    back = read_manifest(tmp_path)
    assert back == m
    assert back.member_output == "probabilities"
    assert back.output("label").datatype == "INT64"


def test_regression_manifest() -> None:
    m = Manifest.model_validate(
        _manifest(
            task="regression", labels=None, outputs=[o.model_dump() for o in output_specs("regression", 2)]
        )
    )
    assert m.member_output == "prediction"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "../etc", "String should match pattern"),
        ("version", 0, "greater than or equal to 1"),
        ("labels", ["a", "b"], "labels must name each"),
        ("members", [], "at least 1"),
        ("members", [{"file": "../x.onnx", "sha256": "0" * 64}], "String should match pattern"),
        ("inputs", [{"name": "input", "shape": [4]}], "shape must start with -1"),
        ("outputs", [o.model_dump() for o in output_specs("regression", 3)], "classification outputs"),
    ],
)
def test_invalid_manifests_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(_manifest(**{field: value}))


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Manifest.model_validate(json.loads(json.dumps(_manifest(surprise=1))))


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    Member(file="member-0.onnx", sha256=sha256_file(p))
