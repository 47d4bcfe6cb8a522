"""The benchmark harness: its pure parts, its request bodies, and one tiny real run (wrk needed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from benchmarks import payloads, report
from benchmarks.minimal_asgi import app as minimal_app
from benchmarks.wrk_runner import parse_output
from server.manifest import read_manifest
from server.protocol.v2 import binary_outputs, parse_infer_request
from testing.members import fuse_members

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testing.stand_ins import bench_version

    return bench_version(tmp_path_factory.mktemp("repo"), n_members=2)


def test_benchmark_model_is_a_valid_version_and_the_fused_graph_averages_its_members(
    version_dir: Path,
) -> None:
    manifest = read_manifest(version_dir)
    assert [m.file for m in manifest.members] == ["member-0.onnx", "member-1.onnx"]
    assert manifest.inputs[0].shape == [-1, 64]
    paths = sorted(version_dir.glob("member-*.onnx"))
    fused = ort.InferenceSession(fuse_members(paths).SerializeToString(), providers=["CPUExecutionProvider"])
    x = payloads.rows_for(manifest.preprocessing.mean, manifest.preprocessing.std, 9)
    each = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in paths
    ]
    assert not np.allclose(each[0], each[1])  # distinct members, or the mean proves nothing
    np.testing.assert_allclose(fused.run(None, {"input": x})[0], np.mean(each, axis=0), atol=1e-6)


@pytest.mark.parametrize("protocol", ["v2json", "v2bin"])
def test_v2_bodies_parse_with_the_servers_parser(protocol: str) -> None:
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    body, header_length = payloads.body(protocol, x, "input", ["probabilities", "label", "spread"])
    request = parse_infer_request(body, header_length)
    np.testing.assert_allclose(request.inputs[0].data, x, atol=1e-4 if protocol == "v2json" else 0)
    assert request.inputs[0].shape == (3, 64)
    if protocol == "v2bin":
        assert binary_outputs(request, ["probabilities", "label", "spread"]) == {
            "probabilities",
            "label",
            "spread",
        }


def test_v1_body_holds_the_rows_as_instances() -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 64)
    body, header_length = payloads.body("v1", x, "input", [])
    assert header_length is None
    assert json.loads(body) == {"instances": x.tolist()}


def _call_asgi(body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(minimal_app({"type": "http", "headers": headers}, receive, send))
    return sent


def test_minimal_asgi_parses_the_json_header_of_a_binary_body_and_answers_the_constant() -> None:
    x = np.ones((1, 64), dtype=np.float32)
    body, header_length = payloads.body("v2bin", x, "input", ["probabilities"])
    sent = _call_asgi(body, [(b"inference-header-content-length", str(header_length).encode())])
    assert sent[0]["status"] == 200 and orjson.loads(sent[1]["body"]) == {"ok": True}
    with pytest.raises(orjson.JSONDecodeError):  # it really parses: the raw floats are not JSON
        _call_asgi(body, [])


def test_wrk_output_is_parsed_and_a_failed_run_raises() -> None:
    line = (
        'BENCH_JSON {"requests":500,"duration_us":2000000,"bytes":1,"connect_errors":0,"read_errors":1,'
        '"write_errors":0,"status_errors":2,"timeouts":3,"p50_us":1500,"p90_us":2000,"p99_us":9000,"max_us":9}'
    )
    result = parse_output("Running 2s test\n" + line + "\n")
    assert (result.rps, result.errors, result.p50_ms, result.p99_ms) == (250.0, 6, 1.5, 9.0)
    with pytest.raises(ValueError, match="no result"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused")


def _run(system: str, protocol: str, rows: int, conc: int, rps: float, p50: float, p99: float) -> dict:
    return dict(
        system=system, protocol=protocol, rows=rows, concurrency=conc, rps=rps, p50_ms=p50, p99_ms=p99
    )


def test_verdicts_compare_medians_against_the_targets() -> None:
    runs = [
        _run("ours", "v1", 1, 64, 4000, 10, 40),
        _run("ours", "v1", 1, 64, 5000, 12, 60),  # medians: 4500 req/s, p99 50 ms (not < 50: FAIL)
        _run("baseline", "v1", 1, 64, 1000, 50, 100),
        _run("asgi", "v1", 1, 64, 20000, 2, 9),
        _run("ours", "v2bin", 256, 16, 400, 30, 45),  # 102,400 rows/s
        _run("ours", "v1", 1, 1, 500, 1.9, 3),
    ]
    cells = report.medians(runs)
    ort = {("fused", 256): 200_000.0}
    got = {target: (measured, verdict) for target, measured, verdict in report.verdicts(cells, ort, 3.5)}
    assert got["1 row, c=64, V1 JSON: >= 4x baseline req/s"] == ("4.50x", "PASS")
    assert got["1 row, c=64, V1 JSON: p99 < 50 ms"] == ("50.00 ms", "FAIL")
    assert got["1 row, c=64, V1 JSON: >= 25% of minimal ASGI"] == ("22%", "FAIL")
    assert got["256 rows V2 binary: >= 60% of in-process rows/s (best concurrency)"] == ("51% (c=16)", "FAIL")
    assert got["1 row, c=1, V1 JSON: p50 < 2 ms"] == ("1.90 ms", "PASS")
    assert got["1 row, c=64, V2 JSON: p99 < 50 ms"] == ("-", "not available")
    assert got["ready within 3 s of start"] == ("3.50 s", "FAIL")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_quick_run_measures_the_limits_and_the_baseline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    measured = {r["system"]: r for r in results["http"] if r.get("rps") is not None}
    for system in ("asgi", "baseline"):
        assert measured[system]["rps"] > 0 and measured[system]["errors"] == 0
    assert "ours" in measured or results["services"]["ours"]["note"]
    assert all(r["rows_s"] > 0 for r in results["ort"])
    assert results["soak"]["requests"] > 0
    text = (tmp_path / "benchmarks.md").read_text()
    assert "| minimal ASGI (HTTP limit) | V1 JSON | 1 | 16 |" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
