"""Graceful shutdown: on SIGTERM stop being ready, refuse new work, finish what was accepted, then exit 0.

uvicorn's own shutdown closes the listening socket at once, so a readiness probe would only see a refused
connection and a load balancer could not tell "draining" from "dead". ``DrainingServer`` puts a drain phase in
front of it: the first SIGTERM (or SIGINT) sets ``DrainState.draining`` (``server.lifecycle``, shared with the
other transports); ``DrainMiddleware`` then answers readiness probes 503 and every new POST 503 ``{"error"}``
(the one renderer, ``server.http.errors``) with ``Connection: close``, while the requests already accepted
run to the end. Once none is left (or ``drain_timeout_s`` passed) uvicorn's shutdown
runs with whatever time remains. A second signal skips the wait.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from server.http.errors import Send, send_error, send_reply
from server.lifecycle import DrainState

log = logging.getLogger(__name__)

Scope = dict[str, Any]
DRAINING = "The server is shutting down; send the request to another replica."

# The drain lasts at least this long (or the whole drain timeout, if shorter), answering 503 meanwhile.
# Closing the listening socket resets every connection the kernel accepted but uvicorn had not yet taken:
# their requests were sent, and would get no answer at all. A second of 503s lets in-flight senders and
# load balancers (readiness is false from the first moment) see the drain before the socket goes.
MIN_DRAIN_S = 1.0


def _refused_while_draining(scope: Scope) -> bool:
    # Inference and admin calls are POSTs; readiness probes end in /ready. Liveness, metadata, /metrics and
    # the docs keep answering so that the drain itself can be watched.
    return scope["method"] == "POST" or scope["path"].endswith("/ready")


class DrainMiddleware:
    """Pure ASGI (no task or body buffering per request): counts requests; refuses new ones when draining."""

    def __init__(self, app: Any, state: DrainState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and _refused_while_draining(scope):
            await self._refuse(scope, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1

    @staticmethod
    async def _refuse(scope: Scope, send: Send) -> None:
        # The client should not reuse this connection: the process is about to go away.
        close = {"Connection": "close"}
        if scope["method"] == "GET":
            await send_reply(send, 503, b'{"ready":false,"draining":true}', "application/json", close)
        else:
            await send_error(send, 503, DRAINING, close)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase between the first SIGTERM/SIGINT and its own shutdown."""

    def __init__(self, config: uvicorn.Config, state: DrainState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain, self.drain_timeout_s = state, drain_timeout_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # a second signal: stop waiting (and force on SIGINT)
            return
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown; a drained server
        # exits 0 of its own accord.
        self.drain.start(self.drain_timeout_s)
        log.info(
            "%s: draining %d request(s), at most %.1fs",
            signal.Signals(sig).name, self.drain.in_flight, self.drain_timeout_s,
        )  # fmt: skip

    async def on_tick(self, counter: int) -> bool:
        d = self.drain
        settled = d.started is not None and time.monotonic() - d.started >= MIN_DRAIN_S
        if d.draining and not self.should_exit and ((d.in_flight == 0 and settled) or d.remaining(0) <= 0):
            if d.in_flight:
                log.warning("drain timeout: %d request(s) still running", d.in_flight)
            else:
                log.info("drained: every accepted request has its answer")
            # Whatever time is left (at least a second) goes to uvicorn's own connection and task wait.
            self.config.timeout_graceful_shutdown = max(1, int(d.remaining(0)))
            self.should_exit = True
        return await super().on_tick(counter)
