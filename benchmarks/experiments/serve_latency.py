"""Single-row latency and throughput of a real server on 127.0.0.1 (V2 JSON), at concurrency 1 and 16.

    python -m benchmarks serve-latency [--seconds 5] [--execution auto] [--client wrk|httpx]

Builds a 5-member MLP repository (64 features -> 256 -> 128 -> 10 classes, like the digits model) in a
temporary folder, starts ``python -m server`` on a free port, and drives it with ``wrk`` (pinned to the
last CPU, when installed: ``apt-get install wrk``) or a bounded asyncio httpx loop. The client shares the
machine's CPUs with the server, so figures are a floor on what the server alone does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from testing.repositories import digits_like_repository
from testing.server_process import ServerProcess


async def load(url: str, concurrency: int, seconds: float, max_requests: int) -> tuple[list[float], int]:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < end and len(latencies) < max_requests:
            t0 = time.perf_counter()
            r = await client.post("/v2/models/digits/infer", json=body)
            if r.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, errors


def wrk(url: str, concurrency: int, seconds: float, tmp: Path) -> str:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    cpu = str(max(os.sched_getaffinity(0)))
    cmd = [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
    ]
    out = subprocess.run(
        [*cmd, f"{url}/v2/models/digits/infer"], capture_output=True, text=True, timeout=seconds + 30
    )
    keep = ("Latency", "50%", "90%", "99%", "Requests/sec", "Non-2xx", "requests in")
    return "\n".join(line for line in out.stdout.splitlines() if line.strip().startswith(keep))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--execution", default="auto")
    p.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = digits_like_repository(root / "repo", hidden=[256, 128])
        env = {"ENSEMBLE_MEMBER_EXECUTION": args.execution, "ENSEMBLE_LOG_LEVEL": "warning"}
        proc = ServerProcess(repo.root, env, root / "server.log")
        try:
            proc.wait_live()
            proc.wait_loaded()
            asyncio.run(load(proc.url, 4, 1.0, 2000))  # warm the connections and the code paths
            print(f"cpus={len(os.sched_getaffinity(0))} execution={args.execution} seconds={args.seconds}")
            if args.client == "wrk":
                for c in (1, 16):
                    print(f"--- wrk, concurrency {c}\n{wrk(proc.url, c, args.seconds, root)}")
                args.seconds = 0  # skip the httpx loop
            if args.seconds:
                print("| concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms |")
                print("|---|---|---|---|---|---|---|")
            for c in (1, 16) if args.seconds else ():
                t0 = time.perf_counter()
                lat, errors = asyncio.run(load(proc.url, c, args.seconds, 200_000))
                wall = time.perf_counter() - t0
                q = np.percentile(np.array(lat) * 1e3, [50, 90, 99])
                rate = len(lat) / wall
                print(f"| {c} | {len(lat)} | {errors} | {rate:.0f} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")
            metrics = proc.client.get("/metrics").text
            for line in metrics.splitlines():
                if line.startswith(("ensemble_batch_size_sum", "ensemble_batch_size_count")):
                    print(line)
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
