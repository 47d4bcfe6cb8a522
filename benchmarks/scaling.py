"""Worker scaling: req/s and server CPU per request for ``--workers 1..N`` on single-row V1 requests.

Each worker count gets its own server (``--workers k``), all started first; the cells then run
round-robin over them (as ``benchmarks.run`` does across systems). CPU is
the parent's and every worker's user + system time over the run (from /proc), divided by the requests
answered: flat CPU per request with more workers means the extra processes cost nothing per request, and
the req/s column then shows how far the cores (not Python) became the limit. Efficiency is
``req/s(k) / (k x req/s(1))``; the marginal column is what each worker added over the previous row, in
units of one worker's req/s.

    python -m benchmarks.scaling --repository DIR --model NAME [--workers 1,2] [--seconds 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks import payloads
from benchmarks.wrk_runner import Payload, run_wrk, wrk_path
from server.manifest import read_manifest
from testing.server_process import HOST, Process, cpu_ticks, free_port, wait_idle

CONCURRENCIES = (64, 256)
READY_TIMEOUT_S = 90.0  # N workers load and warm their sessions at once on shared cores
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def default_counts(cpus: int) -> list[int]:
    """1, 2, 4, ... up to `cpus`, and `cpus` itself: two rows on a 2-core machine, six on 16 cores."""
    counts, k = [], 1
    while k < cpus:
        counts.append(k)
        k *= 2
    return [*counts, cpus]


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (a parent and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_ticks(pid) or 0 for pid in pids) * TICK_S


def measure(
    repository: Path,
    model: str,
    payload: Payload,
    counts: list[int],
    seconds: float,
    repeats: int,
    work: Path,
) -> list[dict[str, Any]]:
    """One row per (workers, concurrency, repeat): rps, p50/p99, errors, server CPU µs per request.

    Every server starts first; then the cells run round-robin over the worker counts (order reversed on
    odd repeats), so that drift in what else the machine runs hits every row alike."""
    runs: list[dict[str, Any]] = []
    path = payloads.url_path("v1", model)
    services: dict[int, Process] = {}
    try:
        for k in counts:
            port = free_port()
            argv = [
                sys.executable, "-m", "server", "--model-repository", str(repository), "--host",
                HOST, "--port", str(port), "--workers", str(k), "--repository-poll-interval-s", "0",
            ]  # fmt: skip
            services[k] = Process(argv, port, work / f"workers-{k}.log", name=f"workers-{k}")
        trees: dict[int, list[int]] = {}
        for k, service in services.items():
            if service.wait_ready("/v2/health/ready", READY_TIMEOUT_S):
                trees[k] = process_tree(service.proc.pid)
                run_wrk(service.url + path, payload, 16, 1)  # warm-up
            else:
                runs.append({"workers": k, "note": f"not ready within {READY_TIMEOUT_S:.0f} s"})
        for repeat in range(repeats):
            for conc in CONCURRENCIES if repeat % 2 == 0 else CONCURRENCIES[::-1]:
                for k in list(trees) if repeat % 2 == 0 else list(trees)[::-1]:
                    runs.append(_cell(services[k], trees[k], path, payload, k, conc, seconds, repeat))
    finally:
        for service in services.values():
            service.stop(grace_s=20)
    return runs


def _cell(
    service: Process,
    pids: list[int],
    path: str,
    payload: Payload,
    k: int,
    conc: int,
    seconds: float,
    repeat: int,
) -> dict[str, Any]:
    for pid in pids:  # the previous cell's backlog must not be charged to this one
        wait_idle(pid, timeout_s=2)
    cpu0, t0 = tree_cpu_seconds(pids), time.perf_counter()
    result = run_wrk(service.url + path, payload, conc, seconds)
    cpu = tree_cpu_seconds(pids) - cpu0
    wall = time.perf_counter() - t0
    row = {
        "workers": k, "concurrency": conc, "repeat": repeat, "rps": result.rps, "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms, "errors": result.errors,
        "cpu_us_per_request": cpu / result.requests * 1e6 if result.requests else None,
        "cores_busy": cpu / wall,
    }  # fmt: skip
    print(
        f"  workers {k:2d} c {conc:3d}: {result.rps:9,.0f} req/s  p99 {result.p99_ms:7.2f} ms"
        f"  cpu {row['cpu_us_per_request'] or 0:6.0f} us/req  errors {result.errors}",
        flush=True,
    )
    return row


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (workers, concurrency), with the efficiency against one worker's req/s."""
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in runs:
        if "rps" in r:
            cells.setdefault((r["workers"], r["concurrency"]), []).append(r)
    rows = []
    for (k, conc), rs in sorted(cells.items()):
        cpu = [r["cpu_us_per_request"] for r in rs if r["cpu_us_per_request"] is not None]
        rows.append({
            "workers": k, "concurrency": conc, "rps": median(r["rps"] for r in rs),
            "p99_ms": median(r["p99_ms"] for r in rs), "errors": sum(r["errors"] for r in rs),
            "cpu_us_per_request": median(cpu) if cpu else None,
            "cores_busy": median(r["cores_busy"] for r in rs),
        })  # fmt: skip
    for conc in {r["concurrency"] for r in rows}:
        same = [r for r in rows if r["concurrency"] == conc]
        one = next((r["rps"] for r in same if r["workers"] == 1), None)
        prev: dict[str, Any] | None = None
        for r in same:
            r["efficiency"] = r["rps"] / (r["workers"] * one) if one else None
            if prev is not None and one:
                r["marginal"] = (r["rps"] - prev["rps"]) / ((r["workers"] - prev["workers"]) * one)
            prev = r
    return rows


def markdown(runs: list[dict[str, Any]], machine: str) -> list[str]:
    """The scaling section of docs/benchmarks.md."""
    lines = [
        "## Worker processes: scaling (single row, V1)",
        "",
        f"Machine: {machine}. Each row is its own `ensemble-serve --workers k` (all started first, cells"
        " round-robin); wrk (one thread) shares the cores. CPU is the server's (parent and workers), per"
        " answered request; efficiency is req/s(k) / (k × req/s(1)); marginal is what each added worker"
        " brought, in one worker's req/s.",
        "",
        "| workers | connections | req/s | p99 ms | server CPU µs/request | cores busy | efficiency |"
        " marginal per added worker | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary(runs):
        cpu = "-" if r["cpu_us_per_request"] is None else f"{r['cpu_us_per_request']:.0f}"
        eff = "-" if r.get("efficiency") is None else f"{r['efficiency']:.2f}"
        marginal = f"{r['marginal']:.2f}" if r.get("marginal") is not None else "-"
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {cpu} |"
            f" {r['cores_busy']:.2f} | {eff} | {marginal} | {r['errors']} |"
        )
    for r in runs:
        if "note" in r:
            lines.append(f"\n`--workers {r['workers']}`: {r['note']}.")
    return lines


def single_row_payload(version_dir: Path, work: Path) -> Payload:
    manifest = read_manifest(version_dir)
    pre = manifest.preprocessing
    mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
    std = pre.std if pre else [1.0] * len(mean)
    x = payloads.rows_for(mean, std, 1)
    return payloads.write_payload(work, "v1", x, manifest.inputs[0].name, [o.name for o in manifest.outputs])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import machine_line
    from server.runtime import usable_cpus
    from testing.stand_ins import bench_version

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, help="model repository (default: build the bench model)")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--workers", help="comma-separated worker counts (default 1, 2, 4, ... CPUs)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the markdown section here (default: print it)")
    args = parser.parse_args(argv)
    if wrk_path() is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    if args.repository is None:
        args.repository, args.model = work / "repository", "bench"
        version_dir = bench_version(args.repository)
    else:
        version_dir = max((args.repository / args.model).iterdir(), key=lambda p: int(p.name))
    counts = [int(c) for c in args.workers.split(",")] if args.workers else default_counts(usable_cpus())
    payload = single_row_payload(version_dir, work)
    runs = measure(args.repository, args.model, payload, counts, args.seconds, args.repeats, work)
    text = "\n".join(markdown(runs, machine_line())) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
