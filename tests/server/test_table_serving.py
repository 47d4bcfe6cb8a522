"""A table model trained by `ensemble-train ensemble` (text categories, missing values, string labels) served
by a real server: V1 records, V1 columns, V2 JSON, V2 binary and tritonclient answer what the members'
graphs answer for the same raw rows; unseen categories and missing values are answered and counted; bad
columns are a 400 naming the column and the row."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from server.manifest import Manifest, read_manifest
from testing.server_process import ServerProcess, running_server
from testing.tables import TABLE_MODEL, penguin_like

ROOT = Path(__file__).resolve().parents[2]
MODEL = TABLE_MODEL
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def server(table_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ENSEMBLE_WARMUP_RUNS": "1", "ENSEMBLE_MAX_QUEUE_DELAY_MS": "0"}
    with running_server(table_repo, env, tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def manifest(table_repo: Path) -> Manifest:
    return read_manifest(table_repo / MODEL / "1")


def raw_rows() -> pd.DataFrame:
    """Rows as a CSV holds them (NaN where a cell is empty), with an unseen island and a number for sex."""
    df = penguin_like(n=200, seed=5).drop(columns=["id", "species"]).head(12).reset_index(drop=True)
    df["island"] = df["island"].astype(object)
    df["sex"] = df["sex"].astype(object)
    df.loc[0, "island"] = "Mars"  # unseen
    df.loc[1, "sex"] = 3  # a number for a categorical column: its text, "3" (unseen)
    df.loc[2, "bill length (mm)"] = np.nan
    df.loc[3, "sex"] = None
    df.loc[4, "island"] = " Dream "  # training strips text
    return df


def graph_probabilities(table_repo: Path, manifest: Manifest, df: pd.DataFrame) -> np.ndarray:
    """What the members' graphs answer (onnxruntime directly), fed the way training's check feeds them."""
    feed = {}
    for c in manifest.columns:
        values = df[c.column]
        if c.kind == "categorical":
            text = [
                ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
                for v in values
            ]
            feed[c.name] = np.array(text, dtype=object).reshape(-1, 1)
        else:
            feed[c.name] = values.to_numpy(dtype=np.float32).reshape(-1, 1)
    outs = []
    for m in manifest.members:
        session = ort.InferenceSession(
            str(table_repo / MODEL / "1" / m.file), providers=["CPUExecutionProvider"]
        )
        outs.append(session.run(["probabilities"], feed)[0])
    return np.mean(outs, axis=0)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def jsonable(values: pd.Series) -> list[Any]:
    return [
        None if isinstance(v, float) and math.isnan(v) else (int(v) if isinstance(v, np.integer) else v)
        for v in values
    ]


def v2_json_body(manifest: Manifest, df: pd.DataFrame) -> dict[str, Any]:
    inputs = []
    for c in manifest.columns:
        values = jsonable(df[c.column])
        if c.kind == "categorical":
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        inputs.append({"name": c.name, "datatype": c.datatype, "shape": [len(df), 1], "data": values})
    return {"inputs": inputs}


def v2_binary_body(manifest: Manifest, df: pd.DataFrame) -> tuple[bytes, int]:
    tensors, raws = [], []
    for c in manifest.columns:
        values = df[c.column]
        if c.kind == "categorical":
            texts = ["" if not isinstance(v, str | int) else str(v) for v in values]
            raw = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
        else:
            raw = values.to_numpy(dtype="<f4").tobytes()  # NaN for a missing number
        tensors.append({"name": c.name, "datatype": c.datatype, "shape": [len(df)],
                        "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        raws.append(raw)
    header = json.dumps({"inputs": tensors, "outputs": [{"name": "probabilities"}]}).encode()
    return header + b"".join(raws), len(header)


def probabilities_of(v2: dict[str, Any]) -> np.ndarray:
    out = next(o for o in v2["outputs"] if o["name"] == "probabilities")
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def counter(server: ServerProcess, metric: str, column: str) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(metric + "{") and f'column="{column}"' in line and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_every_form_answers_what_the_graphs_answer(
    server: ServerProcess, table_repo: Path, manifest: Manifest
) -> None:
    df = raw_rows()
    expected = graph_probabilities(table_repo, manifest, df)
    labels = [manifest.labels[i] for i in expected.argmax(axis=1)]

    r = server.client.post(PREDICT, json={"instances": records(df)})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert r.json()["predictions"] == labels

    columns = {c.column: jsonable(df[c.column]) for c in manifest.columns}
    r = server.client.post(PREDICT, json={"inputs": columns})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], expected, rtol=1e-5, atol=1e-6)

    r = server.client.post(INFER, json=v2_json_body(manifest, df))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities_of(r.json()), expected, rtol=1e-5, atol=1e-6)

    body, length = v2_binary_body(manifest, df)
    r = server.client.post(INFER, content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities_of(r.json()), expected, rtol=1e-5, atol=1e-6)


def test_a_number_for_a_category_is_its_text_as_training_wrote_it(server: ServerProcess) -> None:
    base = {"island": "Biscoe", "bill length (mm)": 41.0, "sex": "male", "clutch": 2}
    answers = []
    for island in ["3", 3, 3.0]:
        r = server.client.post(PREDICT, json={"instances": [{**base, "island": island}]})
        assert r.status_code == 200, r.text
        answers.append(r.json()["probabilities"])
    assert answers[0] == answers[1] == answers[2]


def test_unseen_categories_and_missing_values_are_answered_and_counted(
    server: ServerProcess, manifest: Manifest
) -> None:
    before = {
        "unseen": counter(server, "ensemble_unseen_categories_total", "island"),
        "missing_sex": counter(server, "ensemble_missing_values_total", "sex"),
        "missing_bill": counter(server, "ensemble_missing_values_total", "bill length (mm)"),
    }
    rows = [
        {"island": "Atlantis", "bill length (mm)": None, "sex": None, "clutch": 1},
        {"island": "Mars", "bill length (mm)": 40.0, "sex": "NA", "clutch": 2},
        {"island": "", "bill length (mm)": "NA", "sex": "female", "clutch": None},
    ]
    r = server.client.post(PREDICT, json={"instances": rows})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3
    assert counter(server, "ensemble_unseen_categories_total", "island") == before["unseen"] + 2
    assert counter(server, "ensemble_missing_values_total", "sex") == before["missing_sex"] + 2
    assert counter(server, "ensemble_missing_values_total", "bill length (mm)") == before["missing_bill"] + 2
    assert counter(server, "ensemble_missing_values_total", "island") >= 1


GOOD = {"island": "Biscoe", "bill length (mm)": 41.0, "sex": "male", "clutch": 2}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{**GOOD, "colour": "red"}]}, "Record 0 has unknown column 'colour'"),
        (
            {"instances": [GOOD, {k: v for k, v in GOOD.items() if k != "sex"}]},
            "Record 1 has no column 'sex'",
        ),
        (
            {"instances": [GOOD, {**GOOD, "bill length (mm)": "long"}]},
            "'bill length \\(mm\\)'.*row 1 holds 'long'",
        ),
        ({"instances": [[1, 2, 3, 4]]}, "takes records keyed by column"),
        ({"inputs": {**{k: [v, v] for k, v in GOOD.items()}, "clutch": [1]}}, "Column 'clutch' has 1 values"),
        ({"inputs": {k: [v] for k, v in GOOD.items() if k != "island"}}, "Column 'island' is missing"),
        (
            {"inputs": {**{k: [v] for k, v in GOOD.items()}, "bill_length__mm_": [1]}},
            "Unknown column 'bill_length__mm_'",
        ),
        ({"inputs": {**{k: [v] for k, v in GOOD.items()}, "sex": [{"a": 1}]}}, "'sex'.*row 0"),
    ],
)
def test_bad_v1_columns_are_a_400_naming_the_column_and_row(
    server: ServerProcess, body: dict[str, Any], message: str
) -> None:
    r = server.client.post(PREDICT, json=body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"]
    assert re.search(message, r.json()["error"]), r.json()["error"]


def v2_inputs(**changes: Any) -> dict[str, Any]:
    tensors = {
        "island": {"name": "island", "datatype": "BYTES", "shape": [2, 1], "data": ["Biscoe", "Dream"]},
        "bill_length__mm_": {
            "name": "bill_length__mm_",
            "datatype": "FP32",
            "shape": [2],
            "data": [40.0, 39.0],
        },
        "sex": {"name": "sex", "datatype": "BYTES", "shape": [2], "data": ["male", "female"]},
        "clutch": {"name": "clutch", "datatype": "INT64", "shape": [2], "data": [1, 2]},
    }
    for name, change in changes.items():
        if change is None:
            del tensors[name]
        else:
            tensors[name] = {**tensors.get(name, {"name": name}), **change}
    return {"inputs": list(tensors.values())}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (v2_inputs(colour={"datatype": "BYTES", "shape": [2], "data": ["a", "b"]}), "unknown input 'colour'"),
        (v2_inputs(sex=None), "no input 'sex' \\(column 'sex'\\)"),
        (v2_inputs(clutch={"shape": [3], "data": [1, 2, 3]}), "'clutch' has 3 rows but input 'island' has 2"),
        (v2_inputs(bill_length__mm_={"datatype": "BYTES", "data": ["1", "x"]}), "row 0 holds '1'"),
        (
            v2_inputs(island={"datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}),
            "shape \\[rows\\] or",
        ),
    ],
)
def test_bad_v2_columns_are_a_400_naming_the_column(
    server: ServerProcess, body: dict[str, Any], message: str
) -> None:
    r = server.client.post(INFER, json=body)
    assert r.status_code == 400, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]


def test_v2_json_null_is_a_missing_value_in_a_column_that_accepts_one(server: ServerProcess) -> None:
    body = v2_inputs(bill_length__mm_={"data": [None, 39.0]}, sex={"data": [None, 1]})
    r = server.client.post(INFER, json=body)
    assert r.status_code == 200, r.text


def test_metadata_and_config_list_every_column(server: ServerProcess, manifest: Manifest) -> None:
    meta = server.client.get(f"/v2/models/{MODEL}").json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        (c.name, c.datatype, [-1, 1]) for c in manifest.columns
    ]
    config = server.client.get(f"/v2/models/{MODEL}/config").json()
    types = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        (c.name, types[c.datatype], [1]) for c in manifest.columns
    ]


def test_tritonclient_http_sends_bytes_and_fp32(
    server: ServerProcess, table_repo: Path, manifest: Manifest
) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    df = raw_rows()
    # tritonclient's JSON writes NaN as bare NaN, which is not JSON: the JSON run sends numbers only.
    filled = df.copy()
    for c in manifest.columns:
        if c.kind == "numeric":
            filled[c.column] = filled[c.column].fillna(0.0)
    for binary, rows in ((True, df), (False, filled)):
        inputs = []
        for c in manifest.columns:
            if c.kind == "categorical":
                values = ["" if not isinstance(v, str | int) else str(v) for v in rows[c.column]]
                array = np.array(values, dtype=object).reshape(-1, 1)
            else:
                array = rows[c.column].to_numpy(dtype=np.float32).reshape(-1, 1)
            tensor = httpclient.InferInput(c.name, list(array.shape), c.datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        with httpclient.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            result = client.infer(MODEL, inputs, outputs=[httpclient.InferRequestedOutput("probabilities")])
        expected = graph_probabilities(table_repo, manifest, rows)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)


def test_server_serves_matrix_models_records_by_feature_name(tmp_path: Path) -> None:
    """A matrix model that names its features takes records too (a numeric-only table's model)."""
    from testing.repositories import write_version

    write_version(tmp_path, "iris", 1, members=2, seed=1)
    path = tmp_path / "iris" / "1" / "manifest.json"
    doc = json.loads(path.read_text())
    names = ["sepal length", "sepal width", "petal length", "petal width"]
    doc["inputs"][0]["feature_names"] = names
    path.write_text(json.dumps(doc))
    with running_server(tmp_path, {"ENSEMBLE_WARMUP_RUNS": "1"}, tmp_path / "s.log") as proc:
        rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
        by_rows = proc.client.post("/v1/models/iris:predict", json={"instances": rows}).json()
        recs = [dict(zip(names, r, strict=True)) for r in rows]
        by_records = proc.client.post("/v1/models/iris:predict", json={"instances": recs}).json()
        assert by_records["probabilities"] == by_rows["probabilities"]
        columns = {n: [r[j] for r in rows] for j, n in enumerate(names)}
        by_columns = proc.client.post("/v1/models/iris:predict", json={"inputs": columns}).json()
        assert by_columns["probabilities"] == by_rows["probabilities"]
        # This model's graph does not fill missing values (accepts_missing is false): null is a 400.
        r = proc.client.post(
            "/v1/models/iris:predict", json={"instances": [{**recs[0], "petal width": None}]}
        )
        assert r.status_code == 400 and "missing values" in r.json()["error"]


def test_readme_table_curl_commands_work_as_written(server: ServerProcess) -> None:
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "penguins:predict" in b)
    # The block as written, without the line that starts a server (this test's server is running).
    lines = [line for line in block.splitlines() if not line.startswith("ensemble-serve ")]
    assert sum(line.startswith("curl ") for line in lines) == 3
    script = "\n".join(lines).replace("localhost:8000", f"127.0.0.1:{server.port}")
    script = script.replace("curl -s ", "curl -sS --fail-with-body ")
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answers, text = [], proc.stdout  # curl writes the two JSON answers without a newline between them
    while text.startswith("{"):
        answer, end = json.JSONDecoder().raw_decode(text)
        answers.append(answer)
        text = text[end:].lstrip()
    assert [len(a["predictions"]) for a in answers] == [2, 1]
    assert 'ensemble_unseen_categories_total{column="island",model="penguins",version="1"} 1.0' in proc.stdout


def test_docs_show_example_bodies_built_from_each_model_and_they_are_answered(server: ServerProcess) -> None:
    doc = server.client.get("/openapi.json").json()
    v2 = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    v1 = doc["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(v2["examples"]) == set(v1["examples"]) == {MODEL, "penguins"}
    v1_body = v1["examples"][MODEL]["value"]
    assert set(v1_body["instances"][0]) == {"island", "bill length (mm)", "sex", "clutch"}
    assert None in v1_body["instances"][1].values()  # the second row shows a missing value
    for name in (MODEL, "penguins"):
        r = server.client.post(f"/v2/models/{name}/infer", json=v2["examples"][name]["value"])
        assert r.status_code == 200, r.text
        r = server.client.post(f"/v1/models/{name}:predict", json=v1["examples"][name]["value"])
        assert r.status_code == 200, r.text


def test_fused_sequential_and_parallel_runners_agree_on_a_table(table_repo: Path, manifest: Manifest) -> None:
    from server.ensemble import Ensemble, synthetic_rows

    rows = synthetic_rows(manifest, 9, np.random.default_rng(1))  # categories, "", an unseen one, NaN
    answers = {}
    for execution in ("fused", "sequential", "parallel"):
        ensemble = Ensemble(
            manifest,
            table_repo / MODEL / "1",
            device="cpu",
            member_execution=execution,
            max_batch_size=8,
            warmup_runs=1,
        )
        assert ensemble.execution == execution
        answers[execution] = ensemble.predict(rows)["probabilities"]
        ensemble.close()
    np.testing.assert_allclose(answers["fused"], answers["sequential"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answers["parallel"], answers["sequential"], rtol=1e-5, atol=1e-6)
    # Two requests batched together are the concatenation of their rows.
    assert np.concatenate([rows[:4], rows[4:]]).dtype == rows.dtype
