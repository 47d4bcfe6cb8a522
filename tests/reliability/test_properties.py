"""Property-based requests (hypothesis) against the real server: whatever the body, never a 5xx, and every
refusal is ``{"error": "..."}``. Bounded: a fixed number of examples per property, no deadline per example
(a loaded CI machine is slow, not wrong)."""

from __future__ import annotations

import json

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testing.server_process import ServerProcess
from tests.reliability.record import record

EXAMPLES = 150
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "fp32", ""]

scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)
rows = st.lists(st.lists(scalars, min_size=0, max_size=6), min_size=0, max_size=5)
numeric_rows = st.lists(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=5
)
shapes = st.lists(st.integers(min_value=-2, max_value=2**64), max_size=4) | st.lists(
    st.integers(min_value=0, max_value=6), min_size=1, max_size=3
)
v2_input = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]) | st.text(max_size=8),
        "datatype": st.sampled_from(DATATYPES) | st.text(max_size=6),
        "shape": shapes | json_values,
    },
    optional={
        "data": st.lists(scalars, max_size=12) | rows | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-4, 64) | json_values}
        )
        | json_values,
    },
)
v2_request = st.fixed_dictionaries(
    {"inputs": st.lists(v2_input, max_size=3) | json_values},
    optional={
        "id": st.text(max_size=5) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}), max_size=3) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_values}) | json_values,
    },
)

checked = {"requests": 0, "codes": set()}


def check(r: httpx.Response) -> None:
    checked["requests"] += 1
    checked["codes"].add(r.status_code)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(orjson.loads(r.content)) == {"error"}, r.text


@SETTINGS
@given(body=st.fixed_dictionaries({"instances": rows | json_values | numeric_rows}))
def test_v1_instances_never_5xx(server: ServerProcess, body: dict) -> None:
    check(server.client.post("/v1/models/iris:predict", content=json.dumps(body).encode()))


@SETTINGS
@given(body=v2_request)
def test_v2_json_never_5xx(server: ServerProcess, body: dict) -> None:
    check(server.client.post("/v2/models/iris/infer", content=json.dumps(body).encode()))


@SETTINGS
@given(
    header=v2_request,
    tail=st.binary(max_size=64),
    # Printable header values only: others never leave httpx, or uvicorn's HTTP parser refuses the request.
    length=st.none() | st.integers(min_value=-5, max_value=600) | st.text("0123456789-+.xe", max_size=6),
)
def test_v2_binary_never_5xx(
    server: ServerProcess, header: dict, tail: bytes, length: int | str | None
) -> None:
    raw = json.dumps(header).encode()
    value = str(len(raw)) if length is None else str(length)
    headers = {"Inference-Header-Content-Length": value, "Content-Type": "application/octet-stream"}
    check(server.client.post("/v2/models/iris/infer", content=raw + tail, headers=headers))


@SETTINGS
@given(
    body=st.binary(max_size=256), path=st.sampled_from(["/v1/models/iris:predict", "/v2/models/iris/infer"])
)
def test_random_bytes_never_5xx(server: ServerProcess, body: bytes, path: str) -> None:
    check(server.client.post(path, content=body))


def test_zz_server_still_serves_and_record(server: ServerProcess) -> None:
    r = server.client.post("/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert r.status_code == 200
    record("properties", f"hypothesis: 4 properties x {EXAMPLES} examples (V1, V2 JSON, V2 binary, bytes)",
           "no 5xx", f"{checked['requests']} requests, codes {sorted(checked['codes'])}")  # fmt: skip
