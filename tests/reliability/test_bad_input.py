"""Table-driven bad input against ONE real server: each case gets its 4xx ``{"error": ...}`` naming the
problem, and afterwards the server still answers correctly.

Content type (see docs/reliability.md): like Triton, the server does not consult ``Content-Type``; a body
is JSON, or JSON plus binary tensors when ``Inference-Header-Content-Length`` is set. So ``curl -d`` (which
sends ``application/x-www-form-urlencoded``) and clients that send no type work, and a body that is not
JSON is a 400 whatever its declared type.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import orjson
import pytest

from testing.repositories import Repository
from testing.requests import v2_body
from testing.server_process import ServerProcess
from tests.reliability.conftest import MAX_REQUEST_ROWS
from tests.reliability.rawhttp import request
from tests.reliability.record import record

V1 = "/v1/models/iris:predict"
V2 = "/v2/models/iris/infer"
JSON = {"Content-Type": "application/json"}
ROW = [5.1, 3.5, 1.4, 0.2]


class Case(NamedTuple):
    id: str
    path: str | bytes
    body: bytes
    status: int
    message: str  # a fragment of the error sentence
    headers: dict[str, str] = JSON
    method: str = "POST"


def nest(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


def j(value: object) -> bytes:
    return orjson.dumps(value)


def v2(shape: object, data: object, datatype: str = "FP32", name: str = "input") -> bytes:
    return j({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})


def binary(header: dict, tail: bytes, header_length: int | str | None = None) -> tuple[bytes, dict[str, str]]:
    raw = j(header)
    length = str(len(raw) if header_length is None else header_length)
    return raw + tail, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length}


def bin_input(shape: list[int], size: int, datatype: str = "FP32") -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
        ]
    }


FOUR_FLOATS = struct.pack("<4f", *ROW)
NAN_ROW = struct.pack("<4f", 1.0, float("nan"), 2.0, 3.0)
INF_ROW = struct.pack("<4f", 1.0, float("inf"), 2.0, 3.0)
bin_ok = binary(bin_input([1, 4], 16), FOUR_FLOATS)
bin_nan = binary(bin_input([1, 4], 16), NAN_ROW)
bin_inf = binary(bin_input([1, 4], 16), INF_ROW)
bin_long_header = binary(bin_input([1, 4], 16), FOUR_FLOATS, header_length=10_000)
bin_short_header = binary(bin_input([1, 4], 16), FOUR_FLOATS, header_length=5)
bin_text_header = binary(bin_input([1, 4], 16), FOUR_FLOATS, header_length="12abc")
bin_tail_mismatch = binary(bin_input([1, 4], 16), FOUR_FLOATS + b"\0\0\0\0")
bin_shape_mismatch = binary(bin_input([2, 4], 16), FOUR_FLOATS)

CASES = [
    # --- JSON itself
    Case("malformed-json-v1", V1, b'{"instances": [[1, 2', 400, "not valid JSON"),
    Case("malformed-json-v2", V2, b'{"inputs": [}', 400, "not valid UTF-8 JSON"),
    Case("not-an-object-v1", V1, b"[[1, 2, 3, 4]]", 400, "must be a JSON object"),
    Case("not-an-object-v2", V2, b'"hello"', 400, "must be a JSON object"),
    Case("empty-body-v1", V1, b"", 400, "empty"),
    Case("empty-body-v2", V2, b"", 400, "empty"),
    Case("non-utf8-v1", V1, b'{"instances": [[1, 2, 3, 4]], "x": "\xff\xfe"}', 400, "not valid UTF-8"),
    Case("non-utf8-v2", V2, b'{"inputs": "\xc3\x28"}', 400, "UTF-8"),
    Case("nested-100k-v1", V1, b"[" * 100_000, 400, "not valid JSON"),
    Case("nested-100k-v2", V2, b"[" * 100_000, 400, "not valid UTF-8 JSON"),
    Case("nested-100k-in-instances", V1, b'{"instances": ' + b"[" * 100_000, 400, "not valid JSON"),
    Case("nested-60-deep-instances", V1, j({"instances": nest(ROW, 60)}), 400, "2-D"),
    Case("nested-100-deep-v2-data", V2, v2([1, 4], nest(1, 100)), 400, "nested too deeply"),
    Case("huge-json-over-limit", V1, j({"instances": [ROW] * 12_000}), 413, "at most 200000"),
    Case("big-valid-json-under-limit", V1, j({"instances": [ROW], "padding": "x" * 150_000}), 200, ""),
    Case("nested-100k-objects", V1, b'{"a":' * 30_000, 400, "not valid JSON"),
    Case("huge-number-literal", V1, b'{"instances": [[1e999999, 2, 3, 4]]}', 400, ""),
    Case("huge-integer-literal", V1, b'{"instances": [[' + b"9" * 400 + b", 2, 3, 4]]}", 400, ""),
    # --- content type: not consulted (documented policy); non-JSON bodies are 400 whatever it says
    Case("no-content-type-json-ok", V1, j({"instances": [ROW]}), 200, "", headers={}),
    Case("text-plain-json-ok", V1, j({"instances": [ROW]}), 200, "", headers={"Content-Type": "text/plain"}),
    Case(
        "form-urlencoded-json-ok",
        V1,
        j({"instances": [ROW]}),
        200,
        "",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "text-plain-not-json",
        V2,
        b"instances=1,2,3,4",
        400,
        "not valid UTF-8 JSON",
        headers={"Content-Type": "text/plain"},
    ),
    Case(
        "multipart-not-json",
        V1,
        b"--x\r\nContent-Disposition: form-data\r\n\r\n1\r\n--x--",
        400,
        "not valid JSON",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    ),
    # --- V1 instances
    Case("instances-missing", V1, j({"rows": [ROW]}), 400, "'instances'"),
    Case("instances-empty", V1, j({"instances": []}), 400, "empty"),
    Case("instances-not-list", V1, j({"instances": "1,2,3,4"}), 400, "'instances'"),
    Case("instances-flat", V1, j({"instances": ROW}), 400, "not one flat list"),
    Case("row-too-short", V1, j({"instances": [[1, 2, 3]]}), 400, "4 features"),
    Case("row-too-long", V1, j({"instances": [[1, 2, 3, 4, 5]]}), 400, "4 features"),
    Case("rows-ragged", V1, j({"instances": [ROW, [1, 2]]}), 400, "equal length"),
    Case("row-of-strings", V1, j({"instances": [["1", "2", "3", "4"]]}), 400, "numbers"),
    Case("row-with-null", V1, j({"instances": [[1, None, 3, 4]]}), 400, "numbers"),
    Case("row-with-object", V1, j({"instances": [[1, {"a": 1}, 3, 4]]}), 400, "numbers"),
    Case("row-all-bool", V1, j({"instances": [[True, False, True, True]]}), 400, "numbers"),
    Case("too-many-rows-v1", V1, j({"instances": [ROW] * (MAX_REQUEST_ROWS + 1)}), 400, "at most 64"),
    Case("fp32-overflow-v1", V1, j({"instances": [[1e39, 2, 3, 4]]}), 400, "infinite"),
    # --- V2 JSON tensors
    Case("v2-no-inputs", V2, j({"inputs": []}), 400, "non-empty 'inputs'"),
    Case("v2-inputs-not-list", V2, j({"inputs": {"name": "input"}}), 400, "non-empty 'inputs'"),
    Case("v2-datatype-bytes", V2, v2([1, 4], ROW, "BYTES"), 400, "BYTES"),
    Case("v2-datatype-unknown", V2, v2([1, 4], ROW, "FP33"), 400, "unknown datatype"),
    Case("v2-datatype-bool", V2, v2([1, 4], [True] * 4, "BOOL"), 400, "BOOL"),
    Case("v2-datatype-not-string", V2, v2([1, 4], ROW, 7), 400, "string 'datatype'"),  # type: ignore[arg-type]
    Case("v2-int-data-fraction", V2, v2([1, 4], ROW, "INT32"), 400, "integers"),
    Case("v2-shape-1d", V2, v2([4], ROW), 400, "2-D"),
    Case("v2-shape-3d", V2, v2([1, 1, 4], ROW), 400, "2-D"),
    Case("v2-shape-data-disagree", V2, v2([2, 4], ROW), 400, "needs 8"),
    Case("v2-shape-huge", V2, v2([2**40, 2**40], ROW), 400, "more than"),
    Case("v2-shape-negative", V2, v2([-1, 4], ROW), 400, "negative"),
    Case("v2-shape-strings", V2, v2(["1", "4"], ROW), 400, "array of integers"),
    Case("v2-shape-zero-rows", V2, v2([0, 4], []), 400, "no rows"),
    Case("v2-wrong-feature-count", V2, v2([1, 3], ROW[:3]), 400, "4 features"),
    Case("v2-ragged-data", V2, v2([2, 4], [ROW, [1, 2]]), 400, "ragged"),
    Case("v2-data-strings", V2, v2([1, 4], ["a", "b", "c", "d"]), 400, "not numbers"),
    Case("v2-data-not-list", V2, v2([1, 4], "1 2 3 4"), 400, "JSON array"),
    Case("v2-unknown-input", V2, v2([1, 4], ROW, name="x"), 400, "unknown input 'x'"),
    Case(
        "v2-two-inputs",
        V2,
        j(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW},
                    {"name": "extra", "shape": [1, 4], "datatype": "FP32", "data": ROW},
                ]
            }
        ),
        400,
        "exactly one input",
    ),
    Case(
        "v2-unknown-output",
        V2,
        j({**orjson.loads(v2([1, 4], ROW)), "outputs": [{"name": "logits"}]}),
        400,
        "Unknown output 'logits'",
    ),
    Case("v2-fp32-overflow", V2, v2([1, 4], [1e39, 2, 3, 4]), 400, "outside the range of FP32"),
    Case(
        "too-many-rows-v2", V2, v2([MAX_REQUEST_ROWS + 1, 4], ROW * (MAX_REQUEST_ROWS + 1)), 400, "at most 64"
    ),
    # --- binary tensor extension
    Case("binary-ok", V2, bin_ok[0], 200, "", headers=bin_ok[1]),
    Case("binary-nan-refused", V2, bin_nan[0], 400, "NaN", headers=bin_nan[1]),
    Case("binary-inf-refused", V2, bin_inf[0], 400, "infinite", headers=bin_inf[1]),
    Case(
        "binary-header-longer-than-body", V2, bin_long_header[0], 400, "has only", headers=bin_long_header[1]
    ),
    Case(
        "binary-header-cuts-json",
        V2,
        bin_short_header[0],
        400,
        "not valid UTF-8 JSON",
        headers=bin_short_header[1],
    ),
    Case(
        "binary-header-not-a-number",
        V2,
        bin_text_header[0],
        400,
        "non-negative integer",
        headers=bin_text_header[1],
    ),
    Case(
        "binary-tail-longer-than-declared",
        V2,
        bin_tail_mismatch[0],
        400,
        "declare 16 bytes",
        headers=bin_tail_mismatch[1],
    ),
    Case(
        "binary-size-disagrees-with-shape",
        V2,
        bin_shape_mismatch[0],
        400,
        "needs 32",
        headers=bin_shape_mismatch[1],
    ),
    Case(
        "binary-size-without-header", V2, j(bin_input([1, 4], 16)) + FOUR_FLOATS, 400, "not valid UTF-8 JSON"
    ),
    # --- models, versions and names
    Case("unknown-model-v1", "/v1/models/nope:predict", j({"instances": [ROW]}), 404, "does not exist"),
    Case("unknown-model-v2", "/v2/models/nope/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("unknown-version", "/v2/models/iris/versions/7/infer", v2([1, 4], ROW), 404, "no version 7"),
    Case("version-zero", "/v2/models/iris/versions/0/infer", v2([1, 4], ROW), 404, "positive integers"),
    Case("version-negative", "/v2/models/iris/versions/-1/infer", v2([1, 4], ROW), 404, "positive integers"),
    Case("version-huge", f"/v2/models/iris/versions/{'9' * 40}/infer", v2([1, 4], ROW), 404, "not exist"),
    # "¹".isdigit() is True but int("¹") fails: this was a 500 (found by schemathesis).
    Case(
        "version-superscript-one", "/v2/models/iris/versions/%C2%B9/infer", v2([1, 4], ROW), 404, "positive"
    ),
    Case(
        "version-arabic-indic-one", "/v2/models/iris/versions/%D9%A1/infer", v2([1, 4], ROW), 404, "positive"
    ),
    # Past Python's int-digit limit (4,300): once a 500 with a traceback; at most 18 digits are a version.
    Case("version-5000-digits", f"/v2/models/iris/versions/{'1' * 5000}/infer", v2([1, 4], ROW), 404, ""),
    Case("version-5000-digits-meta", f"/v2/models/iris/versions/{'1' * 5000}", b"", 404, "", method="GET"),
    Case("version-19-digits", "/v2/models/iris/versions/" + "1" * 19 + "/infer", v2([1, 4], ROW), 404, ""),
    Case("version-dotdot", "/v2/models/iris/versions/../infer", v2([1, 4], ROW), 404, ""),
    Case("name-dotdot", "/v2/models/../infer", v2([1, 4], ROW), 404, ""),
    Case("name-dotdot-etc", "/v2/models/../../etc/passwd/infer", v2([1, 4], ROW), 404, ""),
    Case("name-encoded-dotdot", "/v2/models/%2e%2e/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("name-encoded-slash", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", v2([1, 4], ROW), 404, ""),
    Case("name-encoded-backslash", "/v2/models/..%5C..%5Cetc/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("name-nul-byte", "/v2/models/iris%00/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("name-uppercase", "/v2/models/IRIS/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("name-long-5k", "/v2/models/" + "a" * 5000 + "/infer", v2([1, 4], ROW), 404, "does not exist"),
    Case("name-long-metadata", "/v2/models/" + "a" * 5000, b"", 404, "does not exist", method="GET"),
    Case("name-dotdot-v1", "/v1/models/..%2F..%2Fetc:predict", j({"instances": [ROW]}), 404, ""),
    Case("broken-model", "/v2/models/badsha/infer", v2([1, 4], ROW), 503, "sha256"),
    Case("wrong-method", V2, b"", 405, "Method not allowed", method="GET"),
    Case("unknown-path", "/v3/anything", b"", 404, "Not found", method="GET"),
    Case("content-length-not-a-number", V1, b"", 400, "", headers={"Content-Length": "12x"}),
    Case("content-length-superscript", V1, b"", 400, "", headers={"Content-Length": "\u00b2"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_4xx(server: ServerProcess, case: Case) -> None:
    r = request(server.port, case.method, case.path, case.body, case.headers)
    ok = r.status == case.status
    if case.status != 200 and ok and r.headers.get("content-type", "").startswith("application/json"):
        doc = orjson.loads(r.body)
        ok = set(doc) == {"error"} and case.message in doc["error"] and doc["error"].endswith(".")
    record("input", case.id, str(case.status), f"{r.status} {r.body[:160].decode('utf-8', 'replace')}")
    assert r.status == case.status, r.body[:300]
    if case.status == 200:
        return
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = orjson.loads(r.body)
    assert set(doc) == {"error"}, doc
    assert case.message in doc["error"], doc
    assert ok


def test_server_still_answers_correctly_afterwards(server: ServerProcess, repo: Repository) -> None:
    x = np.array([ROW, [6.2, 2.9, 4.3, 1.3]])
    want = repo.expected(x)
    v1 = server.client.post(V1, json={"instances": x.tolist()})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["probabilities"], want, atol=1e-5)
    r = server.client.post(V2, json=v2_body(x))
    assert r.status_code == 200, r.text
    probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(np.reshape(probs["data"], (2, 3)), want, atol=1e-5)
    assert server.proc.poll() is None
    text = server.log.read_text()
    assert "Traceback" not in text
    assert "1" * 1000 not in text  # a 5 KB path is never written whole into the log
    record("input", "after-all-bad-input", "200, exact answer", f"{r.status_code}, matches numpy")
