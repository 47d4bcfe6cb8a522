"""``ensemble-serve``: serve a model repository with uvicorn (one process)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError


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
    p.add_argument(
        "--device", choices=["auto", "cuda", "tensorrt", "cpu"], help="execution device (default auto)"
    )
    p.add_argument("--max-batch-size", type=int, help="most rows per batch")
    p.add_argument("--max-queue-delay-ms", type=float, help="how long a batch may wait for company")
    p.add_argument("--member-execution", choices=["auto", "sequential", "fused", "parallel"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--repository-poll-interval-s", type=float, help="seconds between repository scans; 0: no hot reload"
    )
    p.add_argument("--drain-timeout-s", type=float, help="time the accepted requests get after SIGTERM")
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

    import uvicorn

    from server.http.app import create_app
    from server.http.drain import DrainingServer
    from server.lifecycle import build_services

    # uvicorn re-raises a signal it caught (a second SIGTERM/SIGINT) after its shutdown under the handler
    # that was there before it; a no-op handler keeps a clean shutdown at exit code 0 instead of 143.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    services = build_services(settings)
    app = create_app(services)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    # The first SIGTERM drains (readiness 503, new requests 503, accepted ones finish), then uvicorn stops.
    server = DrainingServer(config, services.drain, settings.drain_timeout_s)
    server.run()
    # As uvicorn.run: a server that never started (port taken, start-up error, already logged) exits 3.
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
