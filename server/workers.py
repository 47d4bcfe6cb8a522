"""Several full server processes behind one port: the parent binds, spawns, supervises and coordinates.

One Python process answers on one core (the event loop, not onnxruntime, is the limit per request), so
``--workers N`` runs N complete servers, each with its own sessions, batchers and event loop. The parent
(``Supervisor``) does no inference; it

- binds the listening socket once and hands it to every worker (as uvicorn's own supervisor does), so the
  kernel spreads connections over the workers and a restarted worker accepts on the same socket;
- starts workers with ``spawn`` (a fresh interpreter: no fork of a process that already runs threads) and
  restarts one that dies, with a log line and ``ensemble_worker_restarts_total``;
- owns ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder, set before any worker imports prometheus_client) so
  that one scrape of ``/metrics`` on any worker sums every worker, and cleans the live gauges of a dead one;
- keeps the cluster consistent (``server.cluster``): one shared readiness slot per worker, the repository
  polled once, and every change (hot reload, admin load/unload) done in two phases, staged by every worker
  and then committed by all or aborted by all, so a version is served everywhere or nowhere;
- fans SIGTERM out: every worker drains (readiness false, in-flight requests finish) and exits 0; the parent
  exits 0 once all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from server.settings import Settings

# Nothing here may import prometheus_client (server.cluster, server.metrics...) at module level: the parent
# chooses the multiprocess mode by setting PROMETHEUS_MULTIPROC_DIR before its first import.
Reply = tuple[Any, ...]  # as server.cluster.Reply

log = logging.getLogger("server.workers")

SPAWN = multiprocessing.get_context("spawn")
# A worker that exits with this before it ever served would fail the same way again (as uvicorn's 3).
STARTUP_FAILURE = 3
# A worker dead within this many seconds of its start waits this long before the next try.
CRASH_LOOP_S = 5.0
# Slack over the drain timeout before the parent kills a worker that has not exited after SIGTERM.
EXIT_GRACE_S = 10.0
# How long one cluster step may take on a worker (loading and warming a large version included).
STEP_TIMEOUT_S = 600.0


def resolve_workers(value: int | str) -> int:
    """``auto``: the CPUs this process may use (affinity and cgroup quota); otherwise the number itself."""
    if value == "auto":
        from server.runtime import usable_cpus

        return usable_cpus()
    return int(value)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # uvicorn's default backlog
    return sock


@dataclass(eq=False)
class Worker:
    """One worker slot's current process and the parent's end of its channel."""

    index: int
    process: SpawnProcess
    conn: Connection
    started: float
    hello: bool = False  # its event loop runs and it answers cluster steps
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, message: tuple[Any, ...]) -> bool:
        with self.send_lock:
            try:
                self.conn.send(message)
                return True
            except (OSError, ValueError):  # its end is gone: the death is handled by the main loop
                return False


class Supervisor:
    """The parent process of ``--workers N`` (N >= 2); ``run()`` returns the exit code."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings, self.n = settings, workers
        # Before anything imports prometheus_client: the value class is chosen at import time.
        self.metrics_dir = tempfile.mkdtemp(prefix="ensemble-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        from prometheus_client import CollectorRegistry, Counter

        # Written to this process's own file; every worker's scrape reads it.
        self.restarts = Counter(
            "ensemble_worker_restarts", "Worker processes restarted after they died.",
            registry=CollectorRegistry(),
        )  # fmt: skip
        self.ready = SPAWN.RawArray("b", workers)  # one slot per worker: its registry is ready
        self.workers: list[Worker | None] = [None] * workers
        self.stopping = False
        self.failed_start = False
        self._restart_at: dict[int, float] = {}  # slot -> when to start its next process
        self._signals: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self.coordinator = Coordinator(self)

    # ------------------------------------------------------------------ processes
    def _worker_settings(self) -> Settings:
        from server.runtime import default_intra_op_threads, usable_cpus

        update: dict[str, Any] = {"repository_poll_interval_s": 0.0}  # the parent polls, once
        if self.settings.intra_op_threads is None:  # the CPUs are shared out between the workers
            update["intra_op_threads"] = default_intra_op_threads(max(1, usable_cpus() // self.n))
        return self.settings.model_copy(update=update)

    def _spawn(self, index: int, replacement: bool = False) -> Worker:
        from server.cluster import worker_main

        parent_end, child_end = SPAWN.Pipe(duplex=True)
        process = SPAWN.Process(
            target=worker_main,
            name=f"ensemble-worker-{index}",
            kwargs={
                "settings": self._worker_settings(),
                "index": index,
                "sock": self.sock,
                "conn": child_end,
                "ready": self.ready,
                "unloaded": frozenset(self.coordinator.unloaded),
                "replacement": replacement,
            },
        )
        self.ready[index] = 0
        process.start()
        child_end.close()
        worker = Worker(index, process, parent_end, time.monotonic())
        log.info("started worker %d (pid %d)", index, worker.pid)
        return worker

    def _reap(self, worker: Worker) -> None:
        """A worker's process ended: clean its files and slot, and restart it unless shutting down."""
        from prometheus_client import multiprocess

        worker.process.join()
        code = worker.process.exitcode
        multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        self.ready[worker.index] = 0
        self.coordinator.gone(worker)
        with contextlib.suppress(OSError):
            worker.conn.close()
        self.workers[worker.index] = None
        if self.stopping:
            log.info("worker %d (pid %d) exited with code %s", worker.index, worker.pid, code)
            return
        if code == STARTUP_FAILURE and not worker.hello:
            log.error("worker %d failed to start (exit code 3): stopping the server", worker.index)
            self.failed_start = True
            self._begin_stop()
            return
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log.error("worker %d (pid %d) died (%s): restarting it", worker.index, worker.pid, how)
        self.restarts.inc()
        # A crash loop must not spin the CPU that the other workers serve with.
        delay = 1.0 if time.monotonic() - worker.started < CRASH_LOOP_S else 0.0
        self._restart_at[worker.index] = time.monotonic() + delay

    # ------------------------------------------------------------------ signals and shutdown
    def _on_signal(self, sig: int, _frame: object) -> None:
        self._signals.append(sig)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.coordinator.stop()
        for w in self.workers:
            if w is not None and w.process.exitcode is None:
                os.kill(w.pid, signal.SIGTERM)  # each drains on its own (server.http drain)
        # The workers hold their own copies; once the last one closes, the port is closed.
        self.sock.close()

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        s = self.settings
        try:
            self.sock = bind_socket(s.host, s.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
            self._cleanup()
            return STARTUP_FAILURE
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "parent %d serving http://%s:%d with %d workers", os.getpid(), s.host, self.sock.getsockname()[1],
            self.n,
        )  # fmt: skip
        self.coordinator.start()
        self.workers = [self._spawn(i) for i in range(self.n)]
        deadline: float | None = None
        while any(self.workers) or self._restart_at:
            for index, at in list(self._restart_at.items()):
                if self.stopping:
                    self._restart_at.clear()
                elif time.monotonic() >= at:
                    del self._restart_at[index]
                    self.workers[index] = self._spawn(index, replacement=True)
            live = [w for w in self.workers if w is not None]
            timeout = 0.1 if self._restart_at else 1.0
            ready = wait(
                [self._wake_r, *(w.conn for w in live), *(w.process.sentinel for w in live)], timeout
            )
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            while self._signals:
                sig = self._signals.pop(0)
                if not self.stopping:
                    log.info("%s: draining %d workers", signal.Signals(sig).name, len(live))
                    self._begin_stop()
                    deadline = time.monotonic() + s.drain_timeout_s + EXIT_GRACE_S
            for w in live:
                if w.conn in ready:
                    self._receive(w)
                if w.process.sentinel in ready:
                    self._reap(w)
            if deadline is not None and time.monotonic() > deadline:
                for w in self.workers:
                    if w is not None:
                        log.warning(
                            "worker %d (pid %d) still running after the drain: killed", w.index, w.pid
                        )
                        w.process.kill()
                deadline = None
        self.coordinator.join()
        self._cleanup()
        return STARTUP_FAILURE if self.failed_start else 0

    def _receive(self, w: Worker) -> None:
        try:
            while w.conn.poll():
                self.coordinator.on_message(w, w.conn.recv())
        except (EOFError, OSError):
            pass  # the process is ending; its sentinel tells the rest

    def _cleanup(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self._wake_r.close()
        self._wake_w.close()


class Coordinator:
    """Cluster-wide operations, one at a time, on an event loop in a thread of the parent.

    Steps go to every worker that said hello; a worker that dies meanwhile simply drops out (its
    replacement loads the repository as it is, with the models unloaded by request left out)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.unloaded: set[str] = set()  # models unloaded by an admin call: a restarted worker skips them
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="coordinator", daemon=True)
        self._ids = itertools.count()
        self._pending: dict[tuple[int, int], asyncio.Future[Reply]] = {}  # (step id, pid) -> its ack
        self._lock: asyncio.Lock | None = None
        self._poll: asyncio.Task[None] | None = None

    def start(self) -> None:
        from server.reloader import RepositoryPoller

        interval = self.sup.settings.repository_poll_interval_s
        self.poller = RepositoryPoller(_ClusterRepository(self), interval, paused=lambda: self.sup.stopping)
        # Before the workers load: a change made during their first load is then seen and applied everywhere.
        self.poller.baseline()
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        if self.poller.interval_s > 0:
            self._poll = asyncio.create_task(self.poller.run())
        await self._stopped.wait()
        assert self._lock is not None
        with contextlib.suppress(TimeoutError):  # let an operation under way answer its caller
            async with asyncio.timeout(EXIT_GRACE_S), self._lock:
                pass
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self._stopped.set())

    def join(self) -> None:
        self._thread.join(5)

    # ------------------------------------------------------------------ from the main thread
    def on_message(self, w: Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "hello":
            w.hello = True
            log.info("worker %d (pid %d) is up", w.index, w.pid)
        elif kind == "ack":
            _, step_id, reply = message
            self.loop.call_soon_threadsafe(self._resolve, (step_id, w.pid), reply)
        elif kind == "call":
            _, call_id, op, args = message
            if self.sup.stopping:
                w.send(("reply", call_id, ("error", 503, "The server is shutting down; try elsewhere.")))
                return
            future = asyncio.run_coroutine_threadsafe(self.call(op, *args), self.loop)
            future.add_done_callback(lambda f: w.send(("reply", call_id, _outcome(f))))

    def gone(self, w: Worker) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._drop, w.pid)

    def _resolve(self, key: tuple[int, int], reply: Reply) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _drop(self, pid: int) -> None:
        for key in [k for k in self._pending if k[1] == pid]:
            self._resolve(key, ("gone",))

    # ------------------------------------------------------------------ on the coordinator's loop
    async def _step(self, targets: list[Worker], step: str, *args: Any) -> list[Reply]:
        """Send one step to `targets` and wait for each one's reply (``("gone",)`` for a worker that died)."""
        step_id = next(self._ids)
        waits = []
        for w in targets:
            future = self._pending[(step_id, w.pid)] = self.loop.create_future()
            if not w.send(("step", step_id, step, args)):
                self._resolve((step_id, w.pid), ("gone",))
            waits.append(future)
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                return list(await asyncio.gather(*waits))
        finally:
            for w in targets:
                self._pending.pop((step_id, w.pid), None)

    async def call(self, op: str, *args: Any) -> Reply:
        """A cluster-wide ``load`` / ``unload`` / ``reload``; the reply of the worker that asked."""
        assert self._lock is not None
        async with self._lock:
            targets = [w for w in self.sup.workers if w is not None and w.hello]
            if op == "unload":
                replies = _present(await self._step(targets, "unload", *args))
                if replies and all(r[0] == "ok" for r in replies):
                    self.unloaded.add(args[0])
                return _first_error(replies) or ("ok", None)
            staged = _present(await self._step(targets, f"stage_{op}", *args))
            error = _first_error(staged)
            summaries = {r[1] for r in staged if r[0] == "ok"}
            if error is None and len(summaries) > 1:
                # Two workers saw different files (the repository changed between their scans): nothing
                # changes anywhere; the poller tries again, an admin caller can retry.
                log.warning("workers staged different repositories for %s: aborted", op)
                error = ("error", 503, "The repository changed while the workers loaded it; try again.")
            if error is not None:
                await self._step(targets, "abort")
                return error
            committed = _present(await self._step(targets, "commit"))
            if op == "load":
                self.unloaded.discard(args[0])
            return _first_error(committed) or ("ok", next(iter(summaries), None))


class _ClusterRepository:
    """What ``RepositoryPoller`` needs of a registry: the folder, and a reload (here: the whole cluster's)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.root = Path(coordinator.sup.settings.model_repository)

    async def reload(self) -> None:
        reply = await self.coordinator.call("reload")
        if reply[0] != "ok":
            raise RuntimeError(reply[2])  # logged once by the poller, and tried again on the next poll


def _present(replies: list[Reply]) -> list[Reply]:
    return [r for r in replies if r[0] != "gone"]


def _first_error(replies: list[Reply]) -> Reply | None:
    return next((r for r in replies if r[0] == "error"), None)


def _outcome(future: Future[Reply]) -> Reply:
    try:
        return future.result()
    except Exception as exc:  # a bug or a timeout in the coordinator: the caller gets a 503, not a hang
        log.exception("cluster operation failed")
        return ("error", 503, f"The workers did not all answer: {type(exc).__name__}.")


def run_workers(settings: Settings, workers: int) -> int:
    """Entry point of ``ensemble-serve --workers N`` (N >= 2)."""
    return Supervisor(settings, workers).run()
