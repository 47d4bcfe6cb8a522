"""server.triton_config: Triton's model configuration and V2 metadata agree, as perf_analyzer needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from server.manifest import Manifest
from server.settings import VersionPolicy
from server.triton_config import CONFIG_DATATYPES, model_config, model_metadata
from testing.repositories import make_manifest


def _manifest(task: str, width: int, n_features: int = 4) -> Manifest:
    return make_manifest(
        "digits" if task == "classification" else "houses",
        2,
        task,
        n_features,
        width,
        labels=[f"class,{i}" for i in range(width)] if task == "classification" else None,
        members=[{"file": f"member-{i}.onnx", "sha256": "0" * 64} for i in range(3)],
    )


MANIFESTS = [_manifest("classification", 10, 64), _manifest("regression", 2, 8)]


def _perf_analyzer_parse(metadata: dict[str, Any], config: dict[str, Any]) -> dict[str, list[int]]:
    """What perf_analyzer's ModelParser::InitTriton (src/model_parser.cc) does with the two documents:
    tensor shapes come from the metadata without the batch axis when max_batch_size > 0, and every
    tensor the config names must be in the metadata. Returns the per-request shapes it would send/expect."""
    max_batch_size = int(config.get("max_batch_size", 0))
    shapes: dict[str, list[int]] = {}
    for tensor in metadata["inputs"] + metadata["outputs"]:
        shape = [int(d) for d in tensor["shape"]]
        shapes[tensor["name"]] = shape[1:] if max_batch_size > 0 else shape
    for kind in ("input", "output"):
        for tensor in config.get(kind, []):
            if tensor["name"] not in shapes:
                raise AssertionError(f"no metadata found for {kind} tensor {tensor['name']}")
    assert "dynamic_batching" in config  # perf_analyzer then treats the model as dynamically batched
    return shapes


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["classification", "regression"])
def test_config_and_metadata_agree(manifest: Manifest) -> None:
    config = model_config(manifest, max_batch_size=64, max_queue_delay_us=2000)
    metadata = model_metadata(manifest, [2, 1])

    shapes = _perf_analyzer_parse(metadata, config)
    assert [t["name"] for t in config["output"]] == [t["name"] for t in metadata["outputs"]]
    assert [t["name"] for t in config["input"]] == [t["name"] for t in metadata["inputs"]]
    for tensor in config["input"] + config["output"]:
        dims = tensor["reshape"]["shape"] if "reshape" in tensor else tensor["dims"]
        assert dims == shapes[tensor["name"]]
    for tensor in metadata["inputs"] + metadata["outputs"]:
        assert tensor["shape"][0] == -1
        spec = manifest.inputs[0] if tensor["name"] == "input" else manifest.output(tensor["name"])
        assert tensor["datatype"] == spec.datatype
        assert tensor["shape"] == spec.shape
    config_types = {t["name"]: t["data_type"] for t in config["input"] + config["output"]}
    assert config_types == {
        t["name"]: CONFIG_DATATYPES[t["datatype"]] for t in metadata["inputs"] + metadata["outputs"]
    }


def test_classification_config_fields() -> None:
    manifest = MANIFESTS[0]
    config = model_config(
        manifest,
        max_batch_size=32,
        max_queue_delay_us=500,
        preferred_batch_sizes=[16, 8, 16],
        instance_kind="KIND_GPU",
        gpu_device_id=1,
        version_policy=VersionPolicy.parse("2,1"),
        parameters={"execution_provider": "CUDAExecutionProvider"},
    )
    assert config["name"] == "digits"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
        {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}},
        {"name": "spread", "data_type": "TYPE_FP32", "dims": [10]},
    ]
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 500,
        "preferred_batch_size": [8, 16],
    }
    assert config["instance_group"] == [{"name": "digits", "kind": "KIND_GPU", "count": 1, "gpus": [1]}]
    assert config["version_policy"] == {"specific": {"versions": [1, 2]}}
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["task"] == "classification"
    assert params["members"] == "3"
    assert params["execution_provider"] == "CUDAExecutionProvider"
    assert orjson.loads(params["labels"]) == [f"class,{i}" for i in range(10)]


def test_regression_config_defaults() -> None:
    config = model_config(MANIFESTS[1], max_batch_size=8, max_queue_delay_us=0)
    assert config["platform"] != "ensemble"
    assert config["output"] == [
        {"name": "prediction", "data_type": "TYPE_FP32", "dims": [2]},
        {"name": "spread", "data_type": "TYPE_FP32", "dims": [2]},
    ]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 0}
    assert config["instance_group"] == [{"name": "houses", "kind": "KIND_CPU", "count": 1}]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    every = VersionPolicy("all")
    every_config = model_config(MANIFESTS[1], max_batch_size=8, max_queue_delay_us=0, version_policy=every)
    assert every_config["version_policy"] == {"all": {}}
    assert "labels" not in config["parameters"]


def test_metadata_lists_versions_as_sorted_strings() -> None:
    metadata = model_metadata(MANIFESTS[1], [3, "1", 2])
    assert metadata["versions"] == ["1", "2", "3"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["name"] == "houses"
    assert metadata["outputs"] == [
        {"name": "prediction", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "spread", "datatype": "FP32", "shape": [-1, 2]},
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be non-negative"),
        ({"preferred_batch_sizes": [0]}, "preferred batch sizes"),
        ({"preferred_batch_sizes": [65]}, "preferred batch sizes"),
        ({"instance_kind": "KIND_TPU"}, "instance_kind"),
        ({"instance_count": 0}, "instance_count"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"max_batch_size": 64, "max_queue_delay_us": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        model_config(MANIFESTS[0], **args)


def _model_config_pb2() -> ModuleType:
    """Triton's own ModelConfig protobuf, shipped inside tritonclient (loaded by path: tritonclient.grpc's
    package refuses to import without grpcio, but this generated module only needs protobuf)."""
    pytest.importorskip("google.protobuf", reason="protobuf is needed to check against model_config.proto")
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.exists():
        pytest.skip(f"tritonclient has no {path.name} to check the config against")
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["classification", "regression"])
def test_config_is_a_valid_triton_model_config(manifest: Manifest) -> None:
    from google.protobuf import json_format

    pb2 = _model_config_pb2()
    config = model_config(
        manifest,
        max_batch_size=16,
        max_queue_delay_us=100,
        preferred_batch_sizes=[4, 16],
        version_policy=VersionPolicy.parse("1,2"),
    )
    # Unknown field names or enum values raise here: the JSON is Triton's ModelConfig, field for field.
    message = json_format.ParseDict(orjson.loads(orjson.dumps(config)), pb2.ModelConfig())
    assert message.max_batch_size == 16
    assert message.platform == "onnxruntime_onnx"
    assert [o.name for o in message.output] == [o.name for o in manifest.outputs]
    assert list(message.dynamic_batching.preferred_batch_size) == [4, 16]
    assert message.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
