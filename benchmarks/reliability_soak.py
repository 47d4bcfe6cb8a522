"""Memory soak for docs/reliability.md: one server, 100k single-row requests (bounded in time), RSS from
/proc after warm-up and at the end, for good requests and then for refused (400) ones.

Uses the benchmark harness (``benchmarks.soak`` drives wrk on 127.0.0.1). Run alone:
``python -m benchmarks.reliability_soak [--requests 100000] [--max-seconds 180]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.processes import free_port
from benchmarks.soak import soak
from benchmarks.wrk_runner import Payload, run_wrk
from tests.helpers.onnx_repo import write_version

ROOT = Path(__file__).resolve().parents[1]


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0"}
    env["ENSEMBLE_GRPC_PORT"] = "0"  # HTTP only: gRPC's default port 8001 would be shared
    cmd = [sys.executable, "-m", "server", "--model-repository", str(repo), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server never became ready: {log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--bad-requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=180)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # A digits-sized model: 64 features, 10 classes, 5 members.
        write_version(work / "repo", "digits", 1, n_features=64, width=10, members=5, hidden=[64], seed=0)
        good = work / "good.json"
        good.write_text(json.dumps({"instances": [[0.5] * 64]}))
        bad = work / "bad.json"
        bad.write_text(json.dumps({"instances": [[0.5] * 63]}))  # one feature short: 400
        proc, url = start_server(work / "repo", work / "server.log")
        try:
            predict = f"{url}/v1/models/digits:predict"
            run_wrk(predict, Payload(good, "application/json"), 16, 5)  # warm-up
            ok = soak(predict, Payload(good, "application/json"), proc.pid, args.requests, args.max_seconds)
            refused = soak(predict, Payload(bad, "application/json"), proc.pid, args.bad_requests, 60)
            check = httpx.post(predict, content=good.read_bytes(), timeout=10).status_code
        finally:
            proc.terminate()
            code = proc.wait(30)
    mib = 1024 * 1024
    report = {
        "good": {
            **ok.__dict__,
            "rss_before_mib": (ok.rss_before or 0) / mib,
            "rss_after_mib": (ok.rss_after or 0) / mib,
        },
        "refused_400": {**refused.__dict__, "rss_after_mib": (refused.rss_after or 0) / mib},
        "answers_after": check,
        "exit_code": code,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
