"""Run wrk against one URL with one request body and return its figures (see post.lua)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).with_name("post.lua")
MARK = "BENCH_JSON "


@dataclass(frozen=True)
class Payload:
    """One request body on disk and the headers that go with it."""

    body_file: Path
    content_type: str
    header_length: int | None = None  # Inference-Header-Content-Length for binary V2 bodies


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # connect/read/write errors, timeouts and non-2xx answers
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def parse_output(stdout: str) -> WrkResult:
    """The figures from post.lua's JSON line; ValueError when wrk printed none (it failed)."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            d = json.loads(line[len(MARK) :])
            errors = sum(d[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors"))
            return WrkResult(
                requests=d["requests"],
                seconds=d["duration_us"] / 1e6,
                errors=errors + d["timeouts"],
                p50_ms=d["p50_us"] / 1e3,
                p99_ms=d["p99_us"] / 1e3,
            )
    raise ValueError(f"wrk printed no result: {stdout[-500:]!r}")


def run_wrk(
    url: str, payload: Payload, connections: int, seconds: float, timeout_s: float = 5.0
) -> WrkResult:
    """One wrk run: one thread (the load generator shares the 2 cores with the server), `connections`
    concurrent keep-alive connections, for `seconds`. Only 127.0.0.1 URLs are accepted."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only send traffic to 127.0.0.1, not {url}")
    binary = wrk_path()
    if binary is None:
        raise FileNotFoundError("wrk is not installed (Debian package 'wrk')")
    env = dict(
        os.environ,
        BENCH_BODY_FILE=str(payload.body_file),
        BENCH_CONTENT_TYPE=payload.content_type,
        BENCH_HEADER_LENGTH="" if payload.header_length is None else str(payload.header_length),
    )
    duration = max(1, round(seconds))
    argv = [binary, "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s:g}s", "-s", str(LUA)]
    done = subprocess.run(
        [*argv, url], env=env, capture_output=True, text=True, timeout=duration + timeout_s + 10, check=False
    )
    return parse_output(done.stdout + done.stderr)
