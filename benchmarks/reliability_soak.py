"""Memory soak for docs/reliability.md: one server, 100k single-row requests (bounded in time), RSS from
/proc after warm-up and at the end, for good requests and then for refused (400) ones.

Uses the benchmark harness (``benchmarks.soak`` drives wrk on 127.0.0.1). Run alone:
``python -m benchmarks reliability-soak [--requests N] [--max-seconds S]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from benchmarks.soak import soak
from benchmarks.wrk_runner import Payload, run_wrk
from testing.repositories import digits_like_repository
from testing.server_process import ServerProcess


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--bad-requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=180)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = digits_like_repository(work / "repo")
        good = work / "good.json"
        good.write_text(json.dumps({"instances": [[0.5] * 64]}))
        bad = work / "bad.json"
        bad.write_text(json.dumps({"instances": [[0.5] * 63]}))  # one feature short: 400
        env = {"ENSEMBLE_REPOSITORY_POLL_INTERVAL_S": "0"}
        server = ServerProcess(repo.root, env, work / "server.log", args=["--log-level", "warning"])
        try:
            if not server.wait_ready("/v2/health/ready", 60):
                raise RuntimeError(f"server never became ready: {server.log_tail()}")
            pid = server.proc.pid
            predict = f"{server.url}/v1/models/digits:predict"
            run_wrk(predict, Payload(good, "application/json"), 16, 5)  # warm-up
            ok = soak(predict, Payload(good, "application/json"), pid, args.requests, args.max_seconds)
            refused = soak(predict, Payload(bad, "application/json"), pid, args.bad_requests, 60)
            check = httpx.post(predict, content=good.read_bytes(), timeout=10).status_code
            server.proc.terminate()
            code = server.proc.wait(30)  # a clean drain exits 0
        finally:
            server.stop()
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
