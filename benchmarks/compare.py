"""Side-by-side: the server as of several git revisions, under the same load, interleaved.

What one change to the hot path buys is only visible against its predecessor measured at the same time on
the same (shared, noisy) cores. Each revision's ``server`` package is extracted with ``git archive`` (the
working tree is not touched), every one is started on the same model repository, and each cell runs
round-robin across them (order reversed on each repeat); medians are printed as a markdown table.

    python -m benchmarks compare before=fb88fed fastpath=51ca385 final=HEAD \\
        [--cells v1:1:64,v2bin:1:64] [--seconds 3] [--repeats 3] [--json out.json]

A variant may also differ by settings alone: ``--env NAME:VAR=VALUE`` (repeatable) sets an environment
variable for that variant's server only, e.g. ``off=HEAD full=HEAD --env full:ENSEMBLE_REQUEST_LOG=full``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import payloads
from benchmarks.wrk_runner import Payload, run_wrk, wrk_path
from server.manifest import read_manifest
from testing.server_process import HOST, ServerProcess, wait_idle
from testing.stand_ins import BENCH_MODEL, bench_version

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CELLS = "v1:1:64,v2json:1:64,v2bin:1:64,v2bin:1:1,v2bin:256:1"


def extract(rev: str, into: Path) -> None:
    """The `server` package as of `rev`, into `into` (nothing else is needed to run it)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "server"], cwd=REPO_ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def parse_cells(text: str) -> list[tuple[str, int, int]]:
    cells = []
    for part in text.split(","):
        protocol, rows, conc = part.split(":")
        if protocol not in payloads.PROTOCOLS:
            raise SystemExit(f"unknown protocol {protocol!r}: use one of {', '.join(payloads.PROTOCOLS)}")
        cells.append((protocol, int(rows), int(conc)))
    return cells


def parse_env(items: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    """``NAME:VAR=VALUE`` items -> {variant name: {VAR: VALUE}}; an unknown variant name is an error."""
    env: dict[str, dict[str, str]] = {name: {} for name in names}
    for item in items:
        name, sep, assignment = item.partition(":")
        var, eq, value = assignment.partition("=")
        if not sep or not eq or not var:
            raise SystemExit(f"--env {item!r}: use NAME:VAR=VALUE")
        if name not in env:
            raise SystemExit(f"--env {item!r}: no variant named {name!r}")
        env[name][var] = value
    return env


def table(variants: list[str], cells: list[tuple[str, int, int]], runs: list[dict[str, Any]]) -> str:
    """Median req/s (and p50/p99) per cell and variant, with each variant's req/s over the first's."""
    lines = [
        "| cell | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for protocol, rows, conc in cells:
        shown = []
        first = None
        for name in variants:
            mine = [
                r
                for r in runs
                if (r["variant"], r["protocol"], r["rows"], r["concurrency"]) == (name, protocol, rows, conc)
            ]
            if not mine:
                shown.append("-")
                continue
            rps = statistics.median(r["rps"] for r in mine)
            p50 = statistics.median(r["p50_ms"] for r in mine)
            p99 = statistics.median(r["p99_ms"] for r in mine)
            errors = sum(r["errors"] for r in mine)
            first = rps if first is None else first
            ratio = f" ({rps / first:.2f}x)" if name != variants[0] else ""
            err = f", {errors} errors" if errors else ""
            shown.append(f"{rps:,.0f} req/s{ratio}<br>p50 {p50:.2f} / p99 {p99:.1f} ms{err}")
        label = f"{protocol} {rows} row(s), c={conc}"
        lines.append(f"| {label} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("variants", nargs="+", help="NAME=GIT_REV, e.g. before=fb88fed after=HEAD")
    parser.add_argument("--cells", default=DEFAULT_CELLS, help="protocol:rows:concurrency, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also save the raw runs here")
    parser.add_argument("--env", action="append", default=[], help="NAME:VAR=VALUE for one variant's server")
    args = parser.parse_args(argv)
    if wrk_path() is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    variants = [v.split("=", 1) for v in args.variants]
    if any(len(v) != 2 for v in variants):
        print("variants are NAME=GIT_REV", file=sys.stderr)
        return 2
    cells = parse_cells(args.cells)
    env = parse_env(args.env, [name for name, _ in variants])
    work = Path(tempfile.mkdtemp(prefix="compare-"))
    services: dict[str, ServerProcess] = {}
    runs: list[dict[str, Any]] = []
    try:
        version_dir = bench_version(work / "repository")
        manifest = read_manifest(version_dir)
        pre = manifest.preprocessing
        mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
        std = pre.std if pre else [1.0] * len(mean)
        outputs = [o.name for o in manifest.outputs]
        bodies: dict[tuple[str, int], Payload] = {}
        for protocol, rows, _ in cells:
            if (protocol, rows) not in bodies:
                x = payloads.rows_for(mean, std, rows)
                bodies[(protocol, rows)] = payloads.write_payload(
                    work, protocol, x, manifest.inputs[0].name, outputs
                )
        for name, rev in variants:
            tree = work / f"tree-{name}"
            extract(rev, tree)
            # The variant's tree first on PYTHONPATH (and as the working folder): its `server` is the one run.
            service = ServerProcess(
                work / "repository", env[name], work / f"{name}.log",
                args=["--host", HOST, "--log-level", "warning"], pythonpath=tree, name=name,
            )  # fmt: skip
            services[name] = service
            if not service.wait_ready("/v2/health/ready", 60):
                raise RuntimeError(f"{name} ({rev}) did not become ready: see {service.log}")
            print(f"{name} ({rev}): ready in {service.ready_seconds:.2f} s", flush=True)
        names = [name for name, _ in variants]
        warm = bodies_v1(work, manifest)
        for name in names:
            run_wrk(services[name].url + payloads.url_path("v1", BENCH_MODEL), warm, 16, 1)
        for repeat in range(args.repeats):
            for protocol, rows, conc in cells:
                for name in names if repeat % 2 == 0 else names[::-1]:
                    service = services[name]
                    url = service.url + payloads.url_path(protocol, BENCH_MODEL)
                    result = run_wrk(url, bodies[(protocol, rows)], conc, args.seconds)
                    wait_idle(service.proc.pid)
                    run = {"variant": name, "protocol": protocol, "rows": rows, "concurrency": conc,
                           "repeat": repeat, "rps": result.rps, "p50_ms": result.p50_ms,
                           "p99_ms": result.p99_ms, "errors": result.errors}  # fmt: skip
                    runs.append(run)
                    print(
                        f"  {name:12s} {protocol:6s} rows {rows:3d} c {conc:2d}: {result.rps:9,.0f} req/s"
                        f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}",
                        flush=True,
                    )
    finally:
        for service in services.values():
            service.stop(5)
        shutil.rmtree(work, ignore_errors=True)
    names = [name for name, _ in variants]
    print()
    revisions = ", ".join(f"{n} = {r}" + "".join(f" {k}={v}" for k, v in env[n].items()) for n, r in variants)
    print(f"Revisions: {revisions}; {args.repeats} x {args.seconds:g} s per cell.")
    print()
    print(table(names, cells, runs))
    if args.json:
        saved = {"variants": dict(variants), "env": env, "runs": runs}
        args.json.write_text(json.dumps(saved, indent=1) + "\n")
    return 0


def bodies_v1(work: Path, manifest: Any) -> Payload:
    pre = manifest.preprocessing
    mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
    std = pre.std if pre else [1.0] * len(mean)
    x = payloads.rows_for(mean, std, 1)
    return payloads.write_payload(work, "v1", x, manifest.inputs[0].name, [o.name for o in manifest.outputs])


if __name__ == "__main__":
    sys.exit(main())
