"""A model's Triton model configuration (``GET .../config``) and V2 metadata (``GET /v2/models/{m}``).

Both are built from the same manifest so they cannot disagree: perf_analyzer reads the metadata for the
tensors, then the config for ``max_batch_size`` and the scheduler, and fails with "no metadata found for
output tensor X" when the config names a tensor the metadata lacks (perf_analyzer ``src/model_parser.cc``,
``ModelParser::InitTriton``). The config follows the JSON form of ``ModelConfig`` in Triton's
``model_config.proto``; integers are written as JSON numbers (protobuf's JSON form writes 64-bit ones as
strings, and perf_analyzer's ``GetInt`` reads either).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson

from server.manifest import Manifest, TensorSpec
from server.settings import LATEST, VersionPolicy

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# V2 datatype -> model_config.proto DataType (BYTES is TYPE_STRING there).
CONFIG_DATATYPES: Mapping[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    """A config tensor: dims leave out the batch axis. A tensor that is only the batch axis ([-1], e.g.
    ``label``) cannot have empty dims in Triton, so it is written as dims [1] reshaped to [] (the form
    Triton's model configuration guide prescribes for such tensors)."""
    dims = spec.shape[1:]
    tensor: dict[str, Any] = {"name": spec.name, "data_type": CONFIG_DATATYPES[spec.datatype]}
    if dims:
        tensor["dims"] = list(dims)
    else:
        tensor["dims"] = [1]
        tensor["reshape"] = {"shape": []}
    return tensor


def model_config(
    manifest: Manifest,
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    preferred_batch_sizes: Sequence[int] | None = None,
    instance_kind: InstanceKind = "KIND_CPU",
    instance_count: int = 1,
    gpu_device_id: int = 0,
    version_policy: VersionPolicy = LATEST,
    parameters: Mapping[str, str] | None = None,
    priority_levels: int = 0,
    default_priority_level: int = 0,
) -> dict[str, Any]:
    """Triton's JSON model configuration for one served model.

    `priority_levels` / `default_priority_level` (0: no priorities) are the batch queue's, as Triton names
    them in ``dynamic_batching``.

    `version_policy` is the server's setting (Triton's ``latest``, ``all`` and ``specific`` policies).
    `parameters` (e.g. the execution provider that actually runs) join the ensemble's own facts in
    ``parameters`` as ``{"string_value": ...}``, Triton's form for free-form model parameters.
    """
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1: every served model batches on its first axis")
    if max_queue_delay_us < 0:
        raise ValueError("max_queue_delay_us must be non-negative")
    if instance_count < 1:
        raise ValueError("instance_count must be at least 1")
    if instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance_kind must be KIND_CPU or KIND_GPU, got {instance_kind!r}")
    preferred = sorted(set(preferred_batch_sizes or ()))
    if any(not 1 <= size <= max_batch_size for size in preferred):
        raise ValueError("preferred batch sizes must lie between 1 and max_batch_size")

    dynamic_batching: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if preferred:
        dynamic_batching["preferred_batch_size"] = preferred
    if priority_levels:
        dynamic_batching["priority_levels"] = priority_levels
        dynamic_batching["default_priority_level"] = default_priority_level
    instance_group: dict[str, Any] = {"name": manifest.name, "kind": instance_kind, "count": instance_count}
    if instance_kind == "KIND_GPU":
        instance_group["gpus"] = [gpu_device_id]
    policy: dict[str, Any]
    if version_policy.kind == "latest":
        policy = {"latest": {"num_versions": 1}}
    elif version_policy.kind == "all":
        policy = {"all": {}}
    else:
        policy = {"specific": {"versions": list(version_policy.versions)}}

    facts = {
        "task": manifest.task,
        "aggregation": manifest.aggregation,
        "members": str(len(manifest.members)),
        "manifest_version": str(manifest.version),
    }
    if manifest.labels is not None:
        # A JSON array, since class names may hold commas.
        facts["labels"] = orjson.dumps(manifest.labels).decode()
    facts.update(parameters or {})

    return {
        "name": manifest.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": policy,
        "max_batch_size": max_batch_size,
        "input": [_config_tensor(spec) for spec in manifest.inputs],
        "output": [_config_tensor(spec) for spec in manifest.outputs],
        "dynamic_batching": dynamic_batching,
        "instance_group": [instance_group],
        "parameters": {key: {"string_value": str(value)} for key, value in facts.items()},
    }


def model_metadata(manifest: Manifest, versions: Iterable[int | str]) -> dict[str, Any]:
    """V2 model metadata: versions as strings, shapes with -1 for the batch axis."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}

    ordered = sorted({int(v) for v in versions})
    return {
        "name": manifest.name,
        "versions": [str(v) for v in ordered],
        "platform": PLATFORM,
        "inputs": [tensor(spec) for spec in manifest.inputs],
        "outputs": [tensor(spec) for spec in manifest.outputs],
    }
