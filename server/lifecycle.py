"""Build the server's services once, start them, stop them; the transports receive them.

Settings -> Metrics -> ModelRegistry -> DataPlane -> DrainState -> RepositoryPoller, in that order, in
:func:`build_services`. :func:`running` is the lifespan every transport shares: it loads the repository
in the background (so liveness answers during start-up), then polls it for changes (hot reload), and on the
way out unloads every version once its requests have their answers (the drain's remaining time, or the
request timeout). ``server.http.app.create_app(services)`` and the gRPC server take a :class:`Services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.dataplane import DataPlane
from server.grpc.service import create_grpc_server
from server.metrics import Metrics
from server.observability import build_observer
from server.reloader import RepositoryPoller
from server.repository import ModelRegistry
from server.settings import Settings

if TYPE_CHECKING:
    from server.cluster import WorkerLink

log = logging.getLogger("server")


class DrainState:
    """Graceful shutdown, shared by every transport: once ``draining`` (the first SIGTERM), readiness is
    false and new work is refused while what was accepted finishes. ``in_flight`` counts the requests let
    through and not yet answered (each transport adds its own); the server stops when it reaches 0 or at
    ``deadline``."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.deadline: float | None = None  # time.monotonic() by which the process should be gone
        self.started: float | None = None
        # Set when the drain starts: what waits for work that may never come (an idle gRPC stream) ends.
        self.begun = asyncio.Event()

    def start(self, timeout_s: float) -> None:
        if not self.draining:
            self.draining = True
            self.started = time.monotonic()
            self.deadline = self.started + timeout_s
            try:  # called from a signal handler: wake the loop's waiters from its next iteration
                asyncio.get_running_loop().call_soon_threadsafe(self.begun.set)
            except RuntimeError:  # no loop running (a test)
                self.begun.set()

    def remaining(self, default: float) -> float:
        """Seconds left to the drain deadline, or `default` when not draining."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a transport needs; built once per process."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    dataplane: DataPlane
    drain: DrainState
    poller: RepositoryPoller
    cluster: WorkerLink | None = None  # a worker of `--workers N`: its link to the parent (server.cluster)


def build_services(
    settings: Settings, metrics: Metrics | None = None, cluster: WorkerLink | None = None
) -> Services:
    """The services for `settings` (nothing loaded or started yet: see :func:`running`)."""
    metrics = metrics or Metrics()
    registry = ModelRegistry(settings, metrics)
    # Per process (each worker builds its own services): the span exporter's thread must start after a fork.
    observer = build_observer(
        settings.request_log, settings.request_log_sample_rate, on_drop=metrics.request_log_dropped.inc
    )
    dataplane = DataPlane(settings, registry, metrics, cluster, observer)
    drain = DrainState()
    poller = RepositoryPoller(registry, settings.repository_poll_interval_s, paused=lambda: drain.draining)
    return Services(settings, metrics, registry, dataplane, drain, poller, cluster)


async def load_then_poll(services: Services) -> None:
    """Load every model, then (when hot reload is on) poll the repository until cancelled."""
    await asyncio.to_thread(services.poller.baseline)
    try:
        await services.registry.reload()
    except Exception as exc:
        log.error("loading failed: %r", exc)
    if services.settings.repository_poll_interval_s > 0:
        await services.poller.run()


@contextlib.asynccontextmanager
async def running(services: Services) -> AsyncIterator[Services]:
    """Start loading (in the background) on entry; on exit stop polling and unload every version."""
    if services.cluster is not None:  # ---- worker processes: answer the parent's steps (server.cluster)
        services.cluster.start(services.registry)
    background = asyncio.create_task(load_then_poll(services))
    if services.cluster is not None:  # a restarted worker accepts connections once it can answer them
        await services.cluster.ready_to_serve(background)
    # gRPC transport (server.grpc): in this process and event loop, beside HTTP; None when grpc_port is 0.
    grpc_server = create_grpc_server(services)
    if grpc_server is not None:
        await grpc_server.start()
    try:
        yield services
    finally:
        if grpc_server is not None:  # after HTTP's drain: running gRPC calls get the time that is left
            await grpc_server.stop(services.drain.remaining(0))
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await background
        # After a drain every request is answered; otherwise (no signal) the usual request timeout applies.
        await services.registry.close(services.drain.remaining(services.settings.request_timeout_s))
        if services.dataplane.observer is not None:  # the last log lines, the spans still buffered
            services.dataplane.observer.close()
