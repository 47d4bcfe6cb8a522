"""CPU per request of uvicorn's httptools protocol, as it is and with ``server.http.connections``' limits.

No sockets, no model: requests are fed to one kept-alive connection over a transport that drops what is
written, on uvloop, with an app that answers at once. What remains is the protocol's own Python per
request, the part the limits add to; on a busy shared machine it is steadier than a wrk run (CPU time,
best of the repeats, the two alternating).

    python -m benchmarks.connection_overhead [--requests 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from server.http.connections import limits_from_settings, protocol_class
from server.settings import Settings

# What wrk sends with benchmarks/post.lua: a small POST on a kept-alive connection.
REQUEST = (
    b"POST /v2/models/bench/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


class NullTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def cpu_per_request_us(protocol_cls: type[asyncio.Protocol], n: int) -> float:
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol: Any = protocol_cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    transport = NullTransport()
    protocol.connection_made(transport)
    start = time.process_time()
    for _ in range(n):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs to its end in this turn
    spent = time.process_time() - start
    protocol.connection_lost(None)
    return spent / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    variants: dict[str, type[asyncio.Protocol]] = {
        "uvicorn httptools": HttpToolsProtocol,
        "with connection limits": protocol_class(limits_from_settings(Settings())),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    loop = uvloop.new_event_loop()
    try:
        for _ in range(args.repeats):
            for name, cls in variants.items():
                results[name].append(loop.run_until_complete(cpu_per_request_us(cls, args.requests)))
    finally:
        loop.close()
    base = min(results["uvicorn httptools"])
    print("| protocol | CPU per request (best) | median | vs uvicorn |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        best = min(runs)
        print(f"| {name} | {best:.2f} us | {statistics.median(runs):.2f} us | {best - base:+.2f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
