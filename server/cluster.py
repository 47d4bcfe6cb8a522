"""A worker's side of ``--workers N``: its channel to the parent, shared readiness, and cluster steps.

Each worker is a full server; what must agree across them goes through the parent (``server.workers``):

- readiness: every worker writes its own slot of a shared array; each one's readiness reads all slots, so a
  probe that reaches any worker answers for the whole server;
- admin load/unload: the worker that gets the call forwards it to the parent, which runs it on every
  worker and answers once all have acknowledged;
- hot reload: the parent polls the repository once; every change is staged by every worker (loaded and
  warmed, not yet served) and then committed everywhere, or aborted everywhere.

With one worker (no parent) none of this exists: ``Cluster`` is ``None`` and the server is as it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable
from multiprocessing.connection import Connection
from typing import Any

from server.errors import ServerError, Unavailable
from server.metric_files import FLUSH_INTERVAL_S
from server.repository import ModelRegistry, ModelStatus, Staged
from server.settings import Settings

log = logging.getLogger("server.cluster")

# ("ok", value) | ("error", status_code, message) | ("gone",) for a worker that died before it answered.
Reply = tuple[Any, ...]
# How often a worker rewrites its readiness slot (a probe reads every slot; this bounds how stale one is).
READY_REFRESH_S = 0.05


class ClusterError(ServerError):
    """An error another worker (or the parent) answered, re-raised here with its status and message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class WorkerLink:
    """The worker's end of the parent's channel; its methods run on the worker's event loop."""

    def __init__(
        self, index: int, conn: Connection, ready: Any, unloaded: frozenset[str], replacement: bool = False
    ) -> None:
        self.index, self.conn, self._ready, self.unloaded = index, conn, ready, unloaded
        self.replacement = replacement  # started in place of a worker that died: the others serve now
        self._calls: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count()
        self.registry: ModelRegistry | None = None
        self._staged: Staged | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ start
    def start(self, registry: ModelRegistry) -> None:
        """Begin answering the parent (on the worker's event loop, before the first load starts)."""
        self.loop = asyncio.get_running_loop()
        self.registry = registry
        for name in self.unloaded:  # unloaded by an admin call before this worker started: stays so
            registry.status[name] = ModelStatus(name, state="unloaded", reason="unloaded by request")
        threading.Thread(target=self._read, name="parent-link", daemon=True).start()
        self._spawn(self._refresh_ready())
        self._spawn(self._flush_metrics())
        self._spawn(self._hello())

    async def _flush_metrics(self) -> None:
        assert self.registry is not None
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.registry.metrics.flush()

    async def ready_to_serve(self, loading: asyncio.Task[None]) -> None:
        """A replacement worker waits for its first load before it accepts connections: on the shared
        socket it would otherwise take requests that a loaded worker could answer, and answer them 503.
        The first workers accept at once, so that liveness answers while they all load."""
        assert self.registry is not None
        while self.replacement and not self.registry.loaded_once and not loading.done():
            await asyncio.sleep(READY_REFRESH_S)

    async def _hello(self) -> None:
        # Steps only once the first load is over: that load is this worker's own; every later change is
        # the cluster's, so nothing else changes the registry between a step's stage and its commit.
        assert self.registry is not None
        while not self.registry.loaded_once:
            await asyncio.sleep(READY_REFRESH_S)
        self._send(("hello",))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # a reference, so that the task is not collected while it runs
        task.add_done_callback(self._tasks.discard)

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the parent is gone: the reader thread saw it too
            self.conn.send(message)

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            self.loop.call_soon_threadsafe(self._dispatch, message)
        # The parent died (killed, or crashed): nobody would restart or stop us; drain and exit.
        log.error("worker %d lost its parent: draining", self.index)
        self.loop.call_soon_threadsafe(self._parent_gone)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    def _parent_gone(self) -> None:
        for future in self._calls.values():  # no reply will come: the callers get a 503, not a hang
            if not future.done():
                future.set_result(("gone",))

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        if message[0] == "step":
            _, step_id, step, args = message
            self._spawn(self._run_step(step_id, step, args))
        elif message[0] == "reply":
            _, call_id, reply = message
            future = self._calls.pop(call_id, None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _run_step(self, step_id: int, step: str, args: tuple[Any, ...]) -> None:
        try:
            reply: Reply = ("ok", await self._step(step, *args))
        except ServerError as exc:
            reply = ("error", exc.status_code, exc.message)
        except Exception as exc:
            log.exception("cluster step %s failed", step)
            reply = ("error", 503, f"A worker could not {step.replace('_', ' ')}: {type(exc).__name__}.")
        self._send(("ack", step_id, reply))

    async def _step(self, step: str, *args: Any) -> Any:
        """One step of a cluster-wide change on this worker's registry; returns what the parent compares."""
        registry = self.registry
        assert registry is not None
        if step == "unload":
            await registry.unload(*args)
            return None
        if step in ("stage_reload", "stage_load"):
            if self._staged is not None:  # a change the parent never finished (it cannot: one at a time)
                registry.abort(self._staged)
            self._staged = await registry.stage(step.removeprefix("stage_"), *args)
            return self._staged.summary()
        staged, self._staged = self._staged, None
        if staged is not None and step == "commit":
            await registry.commit(staged)
        elif staged is not None and step == "abort":
            registry.abort(staged)
        return None

    # ------------------------------------------------------------------ readiness
    def _local_ready(self) -> bool:
        return self.registry is not None and self.registry.is_ready()

    async def _refresh_ready(self) -> None:
        while True:
            self._ready[self.index] = 1 if self._local_ready() else 0
            await asyncio.sleep(READY_REFRESH_S)

    def all_ready(self) -> bool:
        """Every worker's registry is ready (this one's read now, the others' as last written)."""
        self._ready[self.index] = 1 if self._local_ready() else 0
        return all(self._ready)

    def readiness(self) -> dict[str, Any]:
        """Why the server is not ready although this worker is: the workers still loading."""
        return {"workers_not_ready": [i for i, ready in enumerate(self._ready) if not ready]}

    # ------------------------------------------------------------------ calls to the whole cluster
    async def call(self, op: str, *args: Any) -> Any:
        """Run `op` (``load`` / ``unload``) on every worker; raises the first worker's error, if any."""
        call_id = next(self._ids)
        future = self._calls[call_id] = self.loop.create_future()
        self._send(("call", call_id, op, args))
        try:
            reply = await future
        finally:
            self._calls.pop(call_id, None)
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "error":
            raise ClusterError(reply[1], reply[2])
        raise Unavailable("The workers' supervisor is gone; try another replica.", retry_after_s=1)


def worker_main(
    settings: Settings,
    index: int,
    sock: socket.socket,
    conn: Connection,
    ready: Any,
    unloaded: frozenset[str],
    replacement: bool = False,
) -> None:
    """The spawned worker process: a full server on the parent's socket, linked to the parent."""
    # Its own process group: a Ctrl-C in a terminal reaches the parent alone, which then drains every worker
    # once (a second signal would cut the drain short).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    from server.observability import setup_logging

    setup_logging(settings.log_level, settings.log_format, worker=index)
    from server.cli import serve

    sys.exit(serve(settings, sockets=[sock], cluster=WorkerLink(index, conn, ready, unloaded, replacement)))
