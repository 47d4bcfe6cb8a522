"""CPU time per request of the server's own code, without sockets: ASGI calls straight into the app.

wrk on 2 shared cores measures the whole machine; this drives ``server.http.app.create_app`` in one process
with `concurrency` coroutines, each sending its requests one after another (on uvloop, as uvicorn would run
it), and reports requests/s and process CPU time per request (event loop and inference thread together).
Profile it with ``--profile`` (cProfile, sorted by own time). The app is imported from PYTHONPATH, so
pointing PYTHONPATH at another revision's tree measures that revision.

    python -m benchmarks asgi-load --repository REPO --model bench --protocol v2bin --rows 1 \\
        --concurrency 64 --requests 30000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import payloads


async def drive(args: argparse.Namespace, body: bytes, header_length: int | None) -> dict[str, Any]:
    from server.http.app import create_app
    from server.lifecycle import build_services
    from server.settings import Settings

    services = build_services(Settings(model_repository=args.repository, log_level="warning"))
    app = create_app(services)
    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})

    async def lifespan_send(message: dict[str, Any]) -> None:
        pass

    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_in.get, lifespan_send)
    )
    registry = services.registry
    deadline = time.monotonic() + 60
    while not registry.is_ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not load within 60 s")
        await asyncio.sleep(0.05)

    path = payloads.url_path(args.protocol, args.model)
    headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode())]
    if header_length is not None:
        headers.append((b"inference-header-content-length", str(header_length).encode()))
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 2)}  # fmt: skip
        await app(scope, receive, send)

    async def client(n: int) -> None:
        for _ in range(n):
            await one()

    for _ in range(200):  # warm-up
        await one()
    statuses.clear()
    per_client = max(1, args.requests // args.concurrency)
    profile = cProfile.Profile() if args.profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    await asyncio.gather(*(client(per_client) for _ in range(args.concurrency)))
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = per_client * args.concurrency
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await lifespan
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return {"requests": n, "rps": n / wall, "cpu_us_per_request": cpu / n * 1e6, "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--repository", type=Path, help="model repository (default: build the bench model)")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--protocol", choices=payloads.PROTOCOLS, default="v2bin")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    import uvloop

    from server.manifest import read_manifest

    work = Path(tempfile.mkdtemp(prefix="asgi-load-"))
    if args.repository is None:
        from testing.stand_ins import bench_version

        args.repository = work / "repository"
        bench_version(args.repository)
    versions = sorted(
        (p for p in (args.repository / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    manifest = read_manifest(versions[-1])
    pre = manifest.preprocessing
    mean = pre.mean if pre else [0.0] * manifest.inputs[0].shape[1]
    std = pre.std if pre else [1.0] * len(mean)
    x = payloads.rows_for(mean, std, args.rows)
    body, header_length = payloads.body(
        args.protocol, x, manifest.inputs[0].name, [o.name for o in manifest.outputs]
    )
    result = uvloop.run(drive(args, body, header_length))
    print(
        f"{args.protocol} rows={args.rows} c={args.concurrency}: {result['rps']:,.0f} req/s,"
        f" {result['cpu_us_per_request']:.1f} us CPU per request, statuses {result['statuses']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
