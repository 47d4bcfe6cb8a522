import json
import re
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


def _table_manifest(**over: object) -> dict:
    """A schema-2 table model: one input per column, the preprocessing record."""
    base = _manifest(
        schema_version=2,
        inputs=[
            {
                "name": "island",
                "column": "island",
                "kind": "categorical",
                "datatype": "BYTES",
                "shape": [-1, 1],
                "categories": ["Biscoe", "Dream"],
            },
            {
                "name": "bill_mm_",
                "column": "bill (mm)",
                "kind": "numeric",
                "datatype": "FP32",
                "shape": [-1, 1],
            },
        ],
        preprocessing={
            "columns": [
                {
                    "column": "island",
                    "kind": "categorical",
                    "vocabulary": ["Biscoe", "Dream"],
                    "min_count": 1,
                },
                {
                    "column": "bill (mm)",
                    "kind": "numeric",
                    "median": 40.0,
                    "mean": 41.0,
                    "std": 5.0,
                    "missing_indicator": True,
                },
            ],
            "missing_text": ["", "NA"],
        },
    )
    base.update(over)
    return base


def test_a_table_manifest_has_columns_and_no_matrix_input(tmp_path: Path) -> None:
    m = Manifest.model_validate(_table_manifest())
    (tmp_path / "manifest.json").write_text(m.model_dump_json())
    back = read_manifest(tmp_path)
    assert back == m and back.is_table and back.schema_version == 2
    assert [(c.name, c.column, c.kind, c.accepts_missing) for c in back.columns] == [
        ("island", "island", "categorical", True),
        ("bill_mm_", "bill (mm)", "numeric", True),
    ]
    with pytest.raises(ValueError, match=r"use manifest\.columns"):
        _ = back.input


def test_a_version_1_manifest_still_loads_as_a_matrix_model(tmp_path: Path) -> None:
    raw = _manifest(schema_version=1, preprocessing={"mean": [0.0] * 4, "std": [1.0] * 4})
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    m = read_manifest(tmp_path)
    assert not m.is_table and m.columns == [] and m.input.shape == [-1, 4] and not m.input.accepts_missing


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"schema_version": 1}, "need schema_version 2"),
        (
            {
                "inputs": [
                    {
                        "name": "c",
                        "column": "c",
                        "kind": "categorical",
                        "datatype": "FP32",
                        "shape": [-1, 1],
                        "categories": [],
                    }
                ]
            },
            "must be BYTES with its categories",
        ),
        (
            {
                "inputs": [
                    {"name": "c", "column": "c", "kind": "numeric", "datatype": "FP32", "shape": [-1, 2]}
                ]
            },
            r"must have shape \[-1, 1\]",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "column": "x", "kind": "numeric", "datatype": "FP32", "shape": [-1, 1]},
                    {"name": "a", "column": "y", "kind": "numeric", "datatype": "FP32", "shape": [-1, 1]},
                ]
            },
            "distinct tensor names",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "bill (mm)",
                        "column": "x",
                        "kind": "numeric",
                        "datatype": "FP32",
                        "shape": [-1, 1],
                    }
                ]
            },
            "String should match pattern",
        ),
    ],
)
def test_invalid_table_manifests_are_refused(over: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(_table_manifest(**over))


def test_tensor_names_are_safe_and_distinct() -> None:
    from server.manifest import TENSOR_NAME_PATTERN, tensor_names

    names = tensor_names(["bill (mm)", "bill [mm]", "3rd", "ok_name", "x" * 80, ""])
    assert names[:4] == ["bill__mm_", "bill__mm__2", "c_3rd", "ok_name"]
    assert len(set(names)) == 6 and all(re.match(TENSOR_NAME_PATTERN, n) for n in names)
