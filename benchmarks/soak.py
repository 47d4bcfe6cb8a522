"""Soak: keep one server busy for a bounded number of requests (and time), then read its resident memory.

A leak per request shows as RSS growing between the warm-up reading and this one. Drives wrk in chunks
so the count can stop near the target without a Python client eating the cores the server needs.
Run alone: ``python -m benchmarks soak --url URL --body FILE --pid PID [--requests N]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.wrk_runner import Payload, run_wrk
from testing.server_process import rss_bytes

CONNECTIONS = 16


@dataclass(frozen=True)
class SoakResult:
    requests: int
    errors: int
    seconds: float
    rss_before: int | None
    rss_after: int | None
    stopped_by: str  # "count" or "time"


def soak(
    url: str, payload: Payload, pid: int, requests: int, max_seconds: float, chunk_seconds: float = 5.0
) -> SoakResult:
    """Send at least `requests` requests or stop at `max_seconds`, whichever comes first."""
    before = rss_bytes(pid)
    done = errors = 0
    started = time.perf_counter()
    stopped_by = "count"
    while done < requests:
        left = max_seconds - (time.perf_counter() - started)
        if left < 1:
            stopped_by = "time"
            break
        result = run_wrk(url, payload, CONNECTIONS, min(chunk_seconds, left))
        done += result.requests
        errors += result.errors
        if result.requests == 0:
            stopped_by = "time"  # the server stopped answering: no point waiting out the budget
            break
    return SoakResult(done, errors, time.perf_counter() - started, before, rss_bytes(pid), stopped_by)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header-length", type=int, default=None)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args(argv)
    payload = Payload(args.body, args.content_type, args.header_length)
    print(json.dumps(asdict(soak(args.url, payload, args.pid, args.requests, args.max_seconds))))


if __name__ == "__main__":
    main()
