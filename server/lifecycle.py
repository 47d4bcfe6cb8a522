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

from server.dataplane import DataPlane
from server.metrics import Metrics
from server.reloader import RepositoryPoller
from server.repository import ModelRegistry
from server.settings import Settings

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

    def start(self, timeout_s: float) -> None:
        if not self.draining:
            self.draining = True
            self.started = time.monotonic()
            self.deadline = self.started + timeout_s

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


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    """The services for `settings` (nothing loaded or started yet: see :func:`running`)."""
    metrics = metrics or Metrics()
    registry = ModelRegistry(settings, metrics)
    dataplane = DataPlane(settings, registry, metrics)
    drain = DrainState()
    poller = RepositoryPoller(registry, settings.repository_poll_interval_s, paused=lambda: drain.draining)
    return Services(settings, metrics, registry, dataplane, drain, poller)


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
    background = asyncio.create_task(load_then_poll(services))
    try:
        yield services
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await background
        # After a drain every request is answered; otherwise (no signal) the usual request timeout applies.
        await services.registry.close(services.drain.remaining(services.settings.request_timeout_s))
