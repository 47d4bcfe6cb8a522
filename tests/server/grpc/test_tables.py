"""A table model over gRPC: tritonclient.grpc's mixed BYTES + FP32 request (one input per column, shapes
[N, 1] and [N], raw length-prefixed BYTES) and typed contents (bytes_contents, fp32_contents) answer what
HTTP V2 answers for the same rows; the drift counters count gRPC requests in the same series as HTTP's;
bad columns are INVALID_ARGUMENT with HTTP's 400 sentence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from server.grpc.generated import grpc_service_pb2 as pb
from server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from server.manifest import Manifest, read_manifest
from testing.server_process import ServerProcess, running_server
from testing.tables import TABLE_MODEL as MODEL

pytestmark = pytest.mark.slow

NAN = float("nan")
# One row each: a missing category "" and a NaN, an unseen category ("Mars"), a number for a category (3).
COLUMNS: dict[str, list[Any]] = {
    "island": ["Biscoe", "", "Mars", " Dream ", "Torgersen"],
    "bill_length__mm_": [41.0, NAN, 38.5, 45.0, 39.0],
    "sex": ["male", 3, "female", "", "female"],
    "clutch": [1.0, 2.0, 3.0, 1.0, 2.0],
}
SHAPES = {"island": "column", "bill_length__mm_": "flat", "sex": "flat", "clutch": "column"}  # [N,1] / [N]


@pytest.fixture(scope="module")
def server(table_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_MAX_QUEUE_DELAY_MS": "0"}
    with running_server(table_repo, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def manifest(table_repo: Path) -> Manifest:
    return read_manifest(table_repo / MODEL / "1")


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def shape_of(name: str, n: int) -> list[int]:
    return [n, 1] if SHAPES.get(name) == "column" else [n]


def datatypes(manifest: Manifest) -> dict[str, str]:
    return {c.name: c.datatype for c in manifest.columns}


def http_body(columns: dict[str, list[Any]], types: dict[str, str]) -> dict[str, Any]:
    """The same tensors as HTTP V2 JSON (NaN as null: this project's extension for a missing value)."""
    inputs = []
    for name, values in columns.items():
        data = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        inputs.append(
            {"name": name, "datatype": types[name], "shape": shape_of(name, len(values)), "data": data}
        )
    return {"inputs": inputs}


def http_probabilities(
    server: ServerProcess, columns: dict[str, list[Any]], types: dict[str, str]
) -> np.ndarray:
    r = server.client.post(f"/v2/models/{MODEL}/infer", json=http_body(columns, types))
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def typed_request(columns: dict[str, list[Any]], types: dict[str, str]) -> pb.ModelInferRequest:
    """Values in `contents`: bytes_contents for BYTES, fp32_contents for FP32."""
    msg = pb.ModelInferRequest(model_name=MODEL)
    for name, values in columns.items():
        tensor = msg.inputs.add(name=name, datatype=types[name], shape=shape_of(name, len(values)))
        if types[name] == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
        else:
            tensor.contents.fp32_contents.extend(values)
    return msg


def tritonclient_probabilities(server: ServerProcess, manifest: Manifest) -> np.ndarray:
    """tritonclient.grpc sends every input raw (BYTES as 4-byte lengths and bytes)."""
    types = datatypes(manifest)
    inputs = []
    for name, values in COLUMNS.items():
        dtype = object if types[name] == "BYTES" else np.float32
        array = np.array(values, dtype=dtype).reshape(shape_of(name, len(values)))
        tensor = grpcclient.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_target) as client:
        result = client.infer(MODEL, inputs, outputs=[grpcclient.InferRequestedOutput("probabilities")])
    return result.as_numpy("probabilities")


def test_the_columns_are_the_ones_these_requests_send(manifest: Manifest) -> None:
    types = datatypes(manifest)
    assert list(types) == list(COLUMNS)
    assert {c.name: c.kind for c in manifest.columns} == {
        "island": "categorical", "bill_length__mm_": "numeric", "sex": "categorical", "clutch": "numeric"
    }  # fmt: skip
    assert types["bill_length__mm_"] == types["clutch"] == "FP32"


def test_grpc_answers_what_http_answers(
    server: ServerProcess, manifest: Manifest, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    types = datatypes(manifest)
    want = http_probabilities(server, COLUMNS, types)
    assert want.shape == (5, len(manifest.labels))
    np.testing.assert_allclose(tritonclient_probabilities(server, manifest), want, rtol=1e-6, atol=1e-7)

    answer = stub.ModelInfer(typed_request(COLUMNS, types), timeout=30)
    index = [o.name for o in answer.outputs].index("probabilities")
    typed = np.frombuffer(answer.raw_output_contents[index], dtype="<f4").reshape(answer.outputs[index].shape)
    np.testing.assert_allclose(typed, want, rtol=1e-6, atol=1e-7)


def drift(server: ServerProcess) -> dict[tuple[str, str], tuple[str, float]]:
    """(metric, column) -> (its label set as written, value), for this model's drift counters."""
    out = {}
    for line in server.client.get("/metrics").text.splitlines():
        for metric in ("ensemble_unseen_categories_total", "ensemble_missing_values_total"):
            if line.startswith(metric + "{") and f'model="{MODEL}"' in line:
                labels, value = line[len(metric) + 1 :].rsplit("} ", 1)
                column = labels.split('column="', 1)[1].split('"', 1)[0]
                out[(metric, column)] = (labels, float(value))
    return out


def test_drift_counters_count_grpc_in_the_series_http_counts(
    server: ServerProcess, manifest: Manifest
) -> None:
    unseen, missing = (
        ("ensemble_unseen_categories_total", "island"),
        ("ensemble_missing_values_total", "island"),
    )
    bill = ("ensemble_missing_values_total", "bill length (mm)")
    before = drift(server)
    tritonclient_probabilities(server, manifest)
    after_grpc = drift(server)
    http_probabilities(server, COLUMNS, datatypes(manifest))
    after_http = drift(server)
    for key, added in ((unseen, 1), (missing, 1), (bill, 1)):
        was = before.get(key, ("", 0.0))[1]
        assert after_grpc[key][1] == was + added, key
        assert after_http[key][1] == was + 2 * added, key  # the same series: no protocol label
    assert after_grpc[unseen][0] == f'column="island",model="{MODEL}",version="1"'


def without(columns: dict[str, list[Any]], name: str) -> dict[str, list[Any]]:
    return {k: v for k, v in columns.items() if k != name}


GOOD: dict[str, list[Any]] = {k: v[:2] for k, v in COLUMNS.items()}


@pytest.mark.parametrize(
    ("columns", "types_changed", "words"),
    [
        ({**GOOD, "colour": ["red", "blue"]}, {"colour": "BYTES"}, "unknown input 'colour'"),
        (without(GOOD, "sex"), {}, "no input 'sex'"),
        ({**GOOD, "bill_length__mm_": ["1", "long"]}, {"bill_length__mm_": "BYTES"}, "row 0 holds '1'"),
        ({**GOOD, "clutch": [1.0, 2.0, 3.0]}, {}, "'clutch' has 3 rows but input 'island' has 2"),
    ],
    ids=["unknown-column", "missing-column", "text-in-numeric", "different-lengths"],
)
def test_bad_columns_are_invalid_argument_with_https_sentence(
    server: ServerProcess,
    manifest: Manifest,
    stub: pb_grpc.GRPCInferenceServiceStub,
    columns: dict[str, list[Any]],
    types_changed: dict[str, str],
    words: str,
) -> None:
    types = {**datatypes(manifest), **types_changed}
    r = server.client.post(f"/v2/models/{MODEL}/infer", json=http_body(columns, types))
    assert r.status_code == 400, r.text
    sentence = r.json()["error"]
    assert words in sentence, sentence
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed_request(columns, types), timeout=30)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, sentence)
