"""``ensemble-serve``: serve a model repository with uvicorn (one process)."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from server.cluster import WorkerLink
    from server.settings import Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, never a usage dump
        print(f"ensemble-serve: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ensemble-serve", description="Serve an ONNX ensemble model repository over KServe V2.")
    p.add_argument(
        "--model-repository", type=Path, help="folder of <model>/<version>/ (ENSEMBLE_MODEL_REPOSITORY)"
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0: no gRPC)")
    p.add_argument(
        "--device", choices=["auto", "cuda", "tensorrt", "cpu"], help="execution device (default auto)"
    )
    p.add_argument("--max-batch-size", type=int, help="most rows per batch")
    p.add_argument("--max-queue-delay-ms", type=float, help="how long a batch may wait for company")
    p.add_argument("--member-execution", choices=["auto", "sequential", "fused", "parallel"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format", choices=["text", "json"], help="the server's logs on stderr (default text)"
    )
    p.add_argument(
        "--request-log", choices=["off", "sampled", "full"], help="one JSON line per request on stdout"
    )
    p.add_argument(
        "--repository-poll-interval-s", type=float, help="seconds between repository scans; 0: no hot reload"
    )
    p.add_argument("--drain-timeout-s", type=float, help="time the accepted requests get after SIGTERM")
    p.add_argument("--workers", help="server processes on the one port: a number or 'auto' (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    from server.settings import Settings

    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"ensemble-serve: error: {where}: {first['msg']}", file=sys.stderr)
        return 2
    if not settings.model_repository.is_dir():
        print(
            f"ensemble-serve: error: model repository {settings.model_repository} is not a folder",
            file=sys.stderr,
        )
        return 2

    from server.observability import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    # ---- worker processes (server.workers): a parent supervises N full servers on one socket
    from server.workers import resolve_workers, run_workers

    workers = resolve_workers(settings.workers)
    if workers > 1:
        return run_workers(settings, workers)
    return serve(settings)


def serve(
    settings: Settings, sockets: list[socket.socket] | None = None, cluster: WorkerLink | None = None
) -> int:
    """One server process, until it has drained; a worker gets its `sockets` and `cluster` from the parent."""
    # ----
    import uvicorn

    from server.http.app import create_app
    from server.http.connections import limits_from_settings, protocol_class
    from server.http.drain import DrainingServer
    from server.lifecycle import build_services

    # uvicorn re-raises a signal it caught (a second SIGTERM/SIGINT) after its shutdown under the handler
    # that was there before it; a no-op handler keeps a clean shutdown at exit code 0 instead of 143.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    services = build_services(settings, cluster=cluster)
    app = create_app(services)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to the root one: the same format (setup_logging)
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        # Header deadline, header limits and the connection cap (server.http.connections).
        http=protocol_class(limits_from_settings(settings), services.metrics.connections),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
    )
    # The first SIGTERM drains (readiness 503, new requests 503, accepted ones finish), then uvicorn stops.
    server = DrainingServer(config, services.drain, settings.drain_timeout_s)
    server.run(sockets)
    # As uvicorn.run: a server that never started (port taken, start-up error, already logged) exits 3.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
