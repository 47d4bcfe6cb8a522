"""`make bench`: our server against the physical limits, in one interleaved run.

Measures onnxruntime in process (the compute limit), a minimal ASGI JSON app (the HTTP limit), a typical
FastAPI baseline and our server (when `server.http.app` exists and becomes ready), with wrk on 127.0.0.1; then
start-up time, memory after warm-up and after a soak, and the training commands' times. Writes
docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.

    python -m benchmarks run [--use-trained] [--seconds 5] [--repeats 2] [--quick] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import grpc_bench, ort_limit, payloads, report, scaling, soak
from benchmarks.wrk_runner import Payload, run_wrk, wrk_path
from server.manifest import read_manifest
from testing.server_process import HOST, Process, ServerProcess, rss_bytes, uvicorn_process, wait_idle
from testing.stand_ins import bench_version

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0
TRAIN_TIMEOUT_S = 240.0
LR_FIND_TIMEOUT_S = 120.0


def machine_line() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = len(os.sched_getaffinity(0))
    versions = []
    for name in ("onnxruntime", "uvicorn", "fastapi"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk = " ".join((done.stdout + done.stderr).split()[:2])  # "wrk debian/4.1.0-3+b2"
    python = f"Python {platform.python_version()}"
    return f"{cpu}, {cores} usable cores, {python}, {', '.join(versions)}, {wrk}"


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def matrix(quick: bool) -> list[tuple[str, int, int, list[str]]]:
    """(protocol, rows, concurrency, systems) groups. The limits and the baseline only where they are
    compared: the ASGI ceiling for single-row requests; the baseline speaks V1 only."""
    if quick:
        return [("v1", 1, 16, ["asgi", "baseline", "ours"])]
    groups = []
    for rows in (1, 256):
        for conc in (1, 16, 64):
            for protocol in payloads.PROTOCOLS:
                systems = ["ours"]
                if rows == 1:
                    systems.append("asgi")
                if protocol == "v1":
                    systems.append("baseline")
                groups.append((protocol, rows, conc, systems))
    return groups


Group = tuple[str, int, int, list[str]]


def select(groups: list[Group], only: str | None) -> list[Group]:
    """Keep the groups that match one of `only`'s comma-separated ``protocol:rows:concurrency`` patterns
    (``*`` or an empty field matches anything, e.g. ``v2bin:256:*,*:1:64``); None keeps every group."""
    if not only:
        return groups
    patterns = [tuple(part.split(":")) + ("*",) * (3 - len(part.split(":"))) for part in only.split(",")]

    def fits(field: str, value: object) -> bool:
        return field in ("", "*") or field == str(value)

    return [
        g for g in groups if any(fits(p[0], g[0]) and fits(p[1], g[1]) and fits(p[2], g[2]) for p in patterns)
    ]


def measure_ort(version_dir: Path, batches: tuple[int, ...], seconds: float, repeats: int) -> list[dict]:
    run_by_mode = ort_limit.runners(sorted(version_dir.glob("member-*.onnx")))
    manifest = read_manifest(version_dir)
    pre = manifest.preprocessing
    mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
    std = pre.std if pre else [1.0] * len(mean)
    out = []
    for repeat in range(repeats):
        for batch in batches:
            x = payloads.rows_for(mean, std, batch)
            modes = ort_limit.MODES if repeat % 2 == 0 else ort_limit.MODES[::-1]
            for mode in modes:
                rows_s = ort_limit.rows_per_second(run_by_mode[mode], x, seconds)
                out.append({"mode": mode, "batch": batch, "repeat": repeat, "rows_s": rows_s})
                print(f"  ort {mode:10s} batch {batch:3d}: {rows_s:10,.0f} rows/s", flush=True)
    return out


def post_once(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10) -> tuple[int, bytes]:
    """One request (to check a payload is accepted before loading a cell with it)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode()


def check_payload(service: Process, path: str, payload: Payload) -> str | None:
    """None when one request with this payload gets a 200, else why not (so a cell is not 100% errors)."""
    headers = {"Content-Type": payload.content_type}
    if payload.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(payload.header_length)
    status, body = post_once(service.url + path, payload.body_file.read_bytes(), headers)
    return None if status == 200 else f"HTTP {status}: {body[:160].decode(errors='replace')}"


def time_command(argv: list[str], timeout_s: float, cwd: Path, shown: str) -> dict[str, Any]:
    """Run a training command, bounded; a failure is recorded as a skip with its reason, never raised."""
    missing = module_in_checkout("training.__main__")
    if missing:
        print(f"  note: `{shown}` skipped: {missing}", flush=True)
        return {"command": shown, "seconds": None, "outcome": f"skipped: {missing}"}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return {"command": shown, "seconds": None, "outcome": f"skipped: over the {timeout_s:.0f} s bound"}
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        print(f"  note: `{shown}` failed (exit {done.returncode}): {last}; skipping", flush=True)
        return {"command": shown, "seconds": None, "outcome": f"skipped: exit {done.returncode}: {last}"}
    return {"command": shown, "seconds": seconds, "outcome": "ok"}


def module_in_checkout(module: str, *, import_it: bool = False) -> str | None:
    """None when `module` resolves to a file of this checkout (and imports, with `import_it`), else why not.

    The shared virtualenv's editable install can resolve a module this checkout lacks to another checkout;
    measuring someone else's code under our name would be wrong, so that counts as absent."""
    check = f"import importlib.util; s = importlib.util.find_spec({module!r}); print(s.origin if s else '')"
    if import_it:
        check += f"; import {module}"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["import failed"])[-1][:160]
    origin = (done.stdout.strip().splitlines() or [""])[0]
    if not origin:
        return f"no module {module}"
    if not Path(origin).resolve().is_relative_to(REPO_ROOT):
        return f"{module} is not in this checkout yet"
    return None


def server_available() -> str | None:
    return module_in_checkout("server.__main__") or module_in_checkout("server.http.app", import_it=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--use-trained", action="store_true", help="serve model_repository/digits instead")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each wrk cell")
    parser.add_argument("--repeats", type=int, default=3, help="times each cell runs (medians reported)")
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--soak-seconds", type=float, default=90.0, help="bound on the soak's duration")
    parser.add_argument("--skip-training", action="store_true", help="do not time the training commands")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 1 cell, 1 s, tiny soak, no training"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "docs", help="folder for benchmarks.md/json/png"
    )
    parser.add_argument(
        "--only", help="measure only the cells matching protocol:rows:concurrency patterns, e.g. v2bin:*:64"
    )
    parser.add_argument("--no-soak", action="store_true", help="skip the soak (for quick experiments)")
    parser.add_argument(
        "--scaling-workers", help="worker counts of the scaling table, e.g. 1,2,4 (default 1, 2, 4 ... CPUs)"
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the worker scaling table")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.soak_requests, args.soak_seconds = 1.0, 1, 500, 3.0
        args.skip_training = True
    if wrk_path() is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    services: dict[str, Process] = {}
    results: dict[str, Any] = {
        "argv": sys.argv[1:] if argv is None else argv,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "load": load_average(),
        "seconds": args.seconds,
        "repeats": args.repeats,
        "services": {},
        "http": [],
        "grpc": [],
        "notes": [
            "The FastAPI baseline uses onnxruntime's default session options (a typical service sets none)"
            " and runs its 5 member sessions one after another in a sync handler; access logs are off for it"
            " and for the minimal ASGI app.",
            "wrk measures latency from when it sends a request: at concurrency 1, the full round trip.",
        ],
    }
    try:
        # The model repository: built fresh (random weights, real exports) unless --use-trained.
        if args.use_trained:
            repository, model = REPO_ROOT / "model_repository", "digits"
            model_dir = repository / model
            found = model_dir.iterdir() if model_dir.is_dir() else []
            versions = sorted((int(p.name) for p in found if p.name.isdigit()), reverse=True)
            if not versions:
                print("no model in model_repository/digits: train it first", file=sys.stderr)
                return 2
            version_dir = repository / model / str(versions[0])
            results["model"] = f"model_repository/digits version {versions[0]} (trained)"
        else:
            repository, model = work / "repository", "bench"
            print("building the benchmark model repository (5 random BatchNorm MLPs)...", flush=True)
            version_dir = bench_version(repository)
        manifest = read_manifest(version_dir)
        results.setdefault(
            "model",
            f"{len(manifest.members)} BatchNorm MLPs 64 -> 256 -> 256 -> 10 with random weights and BatchNorm"
            " statistics, exported by training.export (not trained; same ops and sizes as a trained one)",
        )

        print("compute limit: onnxruntime in process...", flush=True)
        batches = (1,) if args.quick else (1, 64, 256)
        results["ort"] = measure_ort(version_dir, batches, 0.2 if args.quick else 1.0, args.repeats)

        # Payloads: the same rows in every protocol.
        pre = manifest.preprocessing
        mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
        std = pre.std if pre else [1.0] * len(mean)
        output_names = [o.name for o in manifest.outputs]
        groups = select(matrix(args.quick), args.only)
        bodies: dict[tuple[str, int], Payload] = {}
        # The V1 single-row body always: the warm-up and the soak use it.
        for protocol, rows, _, _ in [("v1", 1, 0, []), *groups]:
            if (protocol, rows) not in bodies:
                x = payloads.rows_for(mean, std, rows)
                bodies[(protocol, rows)] = payloads.write_payload(
                    work, protocol, x, manifest.inputs[0].name, output_names
                )

        # Our server first and alone, so its start-up time is not shared with the others' start-up.
        info: dict[str, Any] = {"available": False}
        why = server_available()
        if why is None:
            service = ServerProcess(repository, {}, work / "ours.log", args=["--host", HOST], name="ours")
            services["ours"] = service
            if service.wait_ready("/v2/health/ready", READY_TIMEOUT_S):
                info.update(available=True, ready_seconds=service.ready_seconds)
            else:
                tail = service.log_tail().strip().splitlines()[-1:] or ["no output"]
                why = f"not ready within {READY_TIMEOUT_S:.0f} s: {tail[0][:160]}"
                services.pop("ours").stop(5)
        if why is not None:
            info["note"] = why
            print(f"our server: not available ({why})", flush=True)
        results["services"]["ours"] = info
        for name, app, extra in (
            ("asgi", "benchmarks.minimal_asgi:app", ["--loop", "uvloop", "--http", "httptools"]),
            ("baseline", "benchmarks.baseline_fastapi:app", []),
        ):
            env = {"BASELINE_MODEL_DIR": str(version_dir)}
            services[name] = uvicorn_process(app, work / f"{name}.log", *extra, env=env)
        for name, ready_path in (("asgi", "/"), ("baseline", "/ready")):
            ok = services[name].wait_ready(ready_path, READY_TIMEOUT_S)
            results["services"][name] = {"available": ok, "ready_seconds": services[name].ready_seconds}
            if not ok:
                raise RuntimeError(f"{name} did not start: see {services[name].log}")

        # Warm-up: a short burst per system on its single-row body, then the RSS reading.
        warm_payload = {"ours": bodies[("v1", 1)], "asgi": bodies[("v1", 1)], "baseline": bodies[("v1", 1)]}
        for name, service in services.items():
            path = payloads.url_path("v1", model)
            run_wrk(service.url + path, warm_payload[name], 16, 1)
            wait_idle(service.proc.pid)
            results["services"][name]["rss_warm"] = rss_bytes(service.proc.pid)

        # gRPC cells (ours only) after each repeat's HTTP cells; none in --quick or when --only skips them.
        grpc_cells = [] if args.quick else [
            cell for cell in grpc_bench.CELLS if select([("grpc", *cell, ["ours"])], args.only)
        ]  # fmt: skip
        grpc_why = grpc_bench.unavailable() if grpc_cells and "ours" in services else None
        if grpc_why:
            results["notes"].append(f"No gRPC cells: {grpc_why}.")
        # The matrix, round-robin across systems within each group; order reversed on odd repeats.
        rejected: dict[tuple[str, str, int], str | None] = {}
        for repeat in range(args.repeats):
            print(f"HTTP cells, repeat {repeat + 1}/{args.repeats}...", flush=True)
            for protocol, rows, conc, systems in groups:
                order = systems if repeat % 2 == 0 else systems[::-1]
                for system in order:
                    run: dict[str, Any] = {
                        "system": system, "protocol": protocol, "rows": rows, "concurrency": conc,
                        "repeat": repeat,
                    }  # fmt: skip
                    results["http"].append(run)
                    service = services.get(system)
                    if service is None:
                        run["note"] = "not available"
                        continue
                    path = payloads.url_path(protocol, model)
                    payload = bodies[(protocol, rows)]
                    if (system, protocol, rows) not in rejected:
                        rejected[(system, protocol, rows)] = check_payload(service, path, payload)
                    if rejected[(system, protocol, rows)]:
                        run["note"] = rejected[(system, protocol, rows)]
                        continue
                    result = run_wrk(service.url + path, payload, conc, args.seconds)
                    run["settle_s"] = wait_idle(service.proc.pid)
                    run.update(
                        rps=result.rps, p50_ms=result.p50_ms, p99_ms=result.p99_ms, errors=result.errors
                    )
                    print(
                        f"  {system:8s} {protocol:6s} rows {rows:3d} c {conc:2d}: {result.rps:9,.0f} req/s"
                        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}",
                        flush=True,
                    )
            if grpc_cells and grpc_why is None and "ours" in services:
                target = services["ours"].grpc_target
                results["grpc"] += grpc_bench.run_cells(target, model, grpc_cells, args.seconds, repeat)

        # Soak our server (the baseline stands in while ours is absent, so the soak itself keeps working).
        target = "ours" if "ours" in services else "baseline"
        if args.no_soak:
            args.soak_requests = 0
        print(
            f"soak: {target}, up to {args.soak_requests:,} requests / {args.soak_seconds:.0f} s...",
            flush=True,
        )
        service = services[target]
        result = soak.soak(
            service.url + payloads.url_path("v1", model),
            bodies[("v1", 1)],
            service.proc.pid,
            args.soak_requests,
            args.soak_seconds,
        )
        results["soak"] = {"system": target, "protocol": "v1", **asdict(result)}
        results["services"][target]["rss_soak"] = result.rss_after
    finally:
        for service in services.values():
            service.stop(5)

    # Worker scaling: a fresh `--workers k` server per row, alone on the machine (the others are stopped).
    if not (args.quick or args.no_scaling) and results["services"]["ours"].get("available"):
        from server.runtime import usable_cpus

        wanted = args.scaling_workers
        counts = [int(c) for c in wanted.split(",")] if wanted else scaling.default_counts(usable_cpus())
        print(f"worker scaling: {counts}...", flush=True)
        results["scaling"] = scaling.measure(
            repository, model, bodies[("v1", 1)], counts, args.seconds, args.repeats, work
        )

    training = []
    if not args.skip_training:
        print("training side...", flush=True)
        out = work / "train"
        commands = [
            (["ensemble", "--data", "digits", "--members", "5", "--repository", "REPO", "--name", "digits",
              "--seed", "0", "--quiet"], TRAIN_TIMEOUT_S),
            (["lr-find", "--data", "digits", "--out", "OUT", "--quiet"], LR_FIND_TIMEOUT_S),
        ]  # fmt: skip
        for i, (args_, bound) in enumerate(commands):
            where = {"REPO": str(out / "repo"), "OUT": str(out / f"run-{i}")}
            argv_train = [sys.executable, "-m", "training", *(where.get(a, a) for a in args_)]
            training.append(time_command(argv_train, bound, REPO_ROOT, "ensemble-train " + " ".join(args_)))
    else:
        training.append(
            {"command": "ensemble-train ...", "seconds": None, "outcome": "skipped (--skip-training)"}
        )
    results["training"] = training
    results["load"] += f" / {load_average()}"
    shutil.rmtree(work, ignore_errors=True)

    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "benchmarks.md").write_text(report.markdown(results))
    report.plot(results, args.out / "benchmarks.png")
    print(f"wrote {args.out / 'benchmarks.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
