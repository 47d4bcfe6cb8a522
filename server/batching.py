"""Dynamic batching: concurrent requests for one model version become one inference run, split back.

One worker task per model version takes the first waiting request and every request already queued behind it
(up to ``max_batch_size`` rows); only when there is such company does it wait, at most ``max_queue_delay``
after the first request arrived, for more. Each batch costs one hop to the inference thread.

- **A lone request runs inline.** When a small request (at most ``inline_max_rows`` rows) finds the model
  idle while recent batches were single requests (one client at a time), it yields to the event loop once
  (so that requests already arriving can queue behind it) and, still alone, runs on the event loop itself:
  no hop to the inference thread and back. The loop is blocked for
  that one small run, which other connections would otherwise have waited for on the inference thread
  anyway (measured in docs/performance.md). Under load the queue is never empty and batches form as before.
- **Priorities** (Triton's): level 0 is served first; each level has its own queue, and a batch takes the
  higher levels' requests before the lower ones'.
- **Admission by time, not rows.** A request is refused (429) when the rows queued ahead of it (at its own
  and higher levels) cannot be inferred before its deadline at the measured rate: an EWMA of rows and
  seconds per batch, seeded by the warm-up's largest batch. ``max_queue_rows`` is only a safety cap on
  memory. A request whose deadline passes anyway is answered 504 and, if still queued, removed so that its
  rows never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from server import timers
from server.errors import BadRequest, QueueFull, Timeout, Unavailable
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.observability import BatchTiming

Outputs = dict[str, np.ndarray]
InferFn = Callable[[np.ndarray], Outputs]
# Weight of each batch in the running averages (throughput, requests per batch): about the last ten count.
RATE_ALPHA = 0.1
# Inline runs only while recent batches averaged fewer requests than this (1: every batch was alone).
INLINE_BELOW_REQUESTS = 1.5


class _Item:
    """One queued request (a slotted class: made once per request on the hot path)."""

    __slots__ = ("enqueued", "future", "level", "taken", "timing", "x")

    def __init__(
        self,
        x: np.ndarray,
        future: asyncio.Future[Outputs],
        level: int = 0,
        timing: BatchTiming | None = None,
    ) -> None:
        self.x, self.future, self.level, self.timing = x, future, level, timing
        self.enqueued = time.perf_counter()
        self.taken = False


def _note_timing(batch: list[_Item], start: float, rows: int) -> None:
    """Tell each request that asked (server.observability: its log line, its spans) when its batch ran."""
    finished, requests = time.perf_counter(), len(batch)
    for item in batch:
        if (t := item.timing) is not None:
            t.enqueued, t.started, t.finished = item.enqueued, start, finished
            t.rows, t.requests = rows, requests


def _expire(future: asyncio.Future[Outputs]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def freeze_loaded_objects() -> None:
    """Move every object alive now (modules, sessions, manifests) out of the garbage collector's sight.

    A full collection walks every tracked object; with the libraries and models loaded that is a long
    pause on the event loop, which every request in flight waits for (it showed as the p99 at 64
    connections: docs/performance.md). Frozen objects are never collected again, so collect first."""
    gc.collect()
    gc.freeze()


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_rows: int,
        max_request_rows: int,
        priority_levels: int = 1,
        inline_max_rows: int = 0,
        seed_rate: tuple[int, float] | None = None,
        metrics: Metrics | None = None,
        labels: tuple[str, str] = ("", ""),
    ) -> None:
        """`seed_rate`: ``(rows, seconds)`` of one measured batch (the warm-up's), the throughput assumed
        until batches are measured; None: admit by the row cap alone until the first batch ran."""
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_s
        self.max_queue_rows = max_queue_rows
        self.max_request_rows = max_request_rows
        self.inline_max_rows = inline_max_rows
        self.metrics, self.labels = metrics, labels
        self._m = metrics.model(*labels) if metrics else None  # label children bound once
        self._queues: list[deque[_Item]] = [deque() for _ in range(max(1, priority_levels))]
        self._level_rows = [0] * len(self._queues)
        self._queued_rows = 0
        # Throughput as an EWMA of rows and of seconds per batch (their ratio: large batches weigh more).
        self._avg_rows, self._avg_s = seed_rate if seed_rate and seed_rate[1] > 0 else (0.0, 0.0)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._busy = False
        self._idle = False  # True while the worker waits for work with nothing in hand
        # Requests per batch, averaged: an idle moment under load (the last batch just answered, the next
        # requests still on their way) must not send requests inline one by one, which would stop batching.
        self._avg_requests = 1.0
        self.inline_runs = 0
        self._worker: asyncio.Task[None] | None = None
        # One thread per model version: its batches run in order, and the event loop never blocks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{labels[0]}")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def priority_levels(self) -> int:
        return len(self._queues)

    @property
    def rows_per_s(self) -> float | None:
        """The measured throughput (None before any batch, without a seed)."""
        return self._avg_rows / self._avg_s if self._avg_s > 0 else None

    @property
    def _alone(self) -> bool:
        """Recent batches were single requests: the traffic is one client at a time."""
        return self._avg_requests < INLINE_BELOW_REQUESTS

    def start(self) -> None:
        freeze_loaded_objects()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(
        self, x: np.ndarray, deadline: float, timing: BatchTiming | None = None, level: int = 0
    ) -> Outputs:
        """Queue `x` at priority `level` (0 first) and wait for exactly its rows' outputs; `deadline` is a
        ``time.perf_counter()`` value. `timing`, when given, is filled once the batch has run
        (server.observability)."""
        rows = len(x)
        if self._closed:
            raise Unavailable("The model is being unloaded; retry shortly.", retry_after_s=1)
        if rows > self.max_request_rows:
            raise BadRequest(f"The request has {rows} rows; at most {self.max_request_rows} are allowed.")
        level = min(max(level, 0), len(self._queues) - 1)
        self._admit(rows, level, deadline)
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), level, timing)
        self._queues[level].append(item)
        self._set_depth(level, rows)
        if rows <= self.inline_max_rows and self._alone and self._idle and self._queued_rows == rows:
            try:
                # Yield once: requests that arrived with this one queue now, and then it is not alone.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self._drop(item)
                raise
            if self._idle and self._queued_rows == rows and not item.taken:
                return self._run_inline(item, deadline)
        self._wakeup.set()
        remaining = deadline - time.perf_counter()
        # One deadline that fails the future: cheaper than asyncio.wait_for's extra future and callbacks
        # (and than a loop timer: server.timers), and the same outcome (a done future is skipped).
        timer = timers.call_later(remaining, _expire, item.future) if remaining > 0 else None
        try:
            if timer is None:
                raise TimeoutError
            return await item.future
        except TimeoutError:
            self._drop(item)
            raise Timeout("The request timed out before its inference finished.") from None
        except asyncio.CancelledError:
            self._drop(item)  # the caller is gone (its deadline, or a disconnect): its rows need not run
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _admit(self, rows: int, level: int, deadline: float) -> None:
        """429 when the rows ahead (this level and the higher ones) cannot finish before `deadline`, or the
        queue would pass its safety cap; an empty queue admits anything (a long request may still 504)."""
        if not self._queued_rows:
            return
        if self._queued_rows + rows > self.max_queue_rows:
            raise QueueFull(f"The queue is full ({self._queued_rows} rows waiting); retry shortly.")
        rate = self.rows_per_s
        if rate is None:
            return
        ahead = sum(self._level_rows[: level + 1])
        if not ahead:
            return
        # The running batch is not counted: its rows left the queue, and it is at most one batch.
        needed = (ahead + rows) / rate
        left = deadline - time.perf_counter()
        if needed > left:
            raise QueueFull(
                f"The {ahead} rows queued ahead need about {needed:.3g} s at {rate:,.0f} rows/s, more than "
                f"this request's {max(left, 0):.3g} s left; retry shortly.",
                retry_after_s=max(1, math.ceil(ahead / rate)),
            )

    def _drop(self, item: _Item) -> None:
        if not item.taken:  # still queued: its rows must never run
            item.taken = True
            self._queues[item.level].remove(item)
            self._set_depth(item.level, -len(item.x))

    def _run_inline(self, item: _Item, deadline: float) -> Outputs:
        """Run a lone request now, on the event loop (the caller checked the model is idle)."""
        self._drop(item)  # out of the queue: the worker never sees it
        if time.perf_counter() >= deadline:
            raise Timeout("The request timed out before its inference finished.")
        start = time.perf_counter()
        self._busy = True
        try:
            out = self.infer(item.x)
        finally:
            self._busy = False
            _note_timing([item], start, len(item.x))
        self.inline_runs += 1
        self._record(start, (item.enqueued,), len(item.x))
        return out

    def _set_depth(self, level: int, delta: int) -> None:
        self._queued_rows += delta
        self._level_rows[level] += delta
        if self._m is not None:  # moved, not read when scraped: with workers it is summed from files
            self._m.queue_depth.inc(delta)

    def _head(self) -> deque[_Item] | None:
        """The queue of the highest priority level that holds something."""
        for queue in self._queues:
            if queue:
                return queue
        return None

    def _pop(self) -> _Item | None:
        """The next live item, highest level first (timed-out or cancelled ones are dropped here)."""
        while (queue := self._head()) is not None:
            item = self._popleft(queue)
            if not item.future.done():
                return item
        return None

    def _popleft(self, queue: deque[_Item]) -> _Item:
        item = queue.popleft()
        item.taken = True
        self._set_depth(item.level, -len(item.x))
        return item

    def _take_more(self, batch: list[_Item], rows: int) -> int:
        while rows < self.max_batch_size and (queue := self._head()) is not None:
            nxt = queue[0]
            if nxt.future.done():  # timed out or cancelled: drop it, and judge the next one on its own
                self._popleft(queue)
                continue
            if rows + len(nxt.x) > self.max_batch_size:
                break
            batch.append(self._popleft(queue))
            rows += len(nxt.x)
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._pop()
            if first is None:
                self._idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._idle = False
            batch = [first]
            rows = self._take_more(batch, len(first.x))
            # Wait for company only when there already is some: an idle model answers a lone request now.
            if len(batch) > 1 and rows < self.max_batch_size and self.max_delay > 0:
                until = first.enqueued + self.max_delay
                while rows < self.max_batch_size and (left := until - time.perf_counter()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    rows = self._take_more(batch, rows)
            self._busy = True
            try:
                await self._execute(loop, batch, rows)
            finally:
                self._busy = False

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], rows: int) -> None:
        start = time.perf_counter()
        x = batch[0].x if len(batch) == 1 else np.concatenate([i.x for i in batch])
        try:
            out = await loop.run_in_executor(self._executor, self.infer, x)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            _note_timing(batch, start, rows)  # before any caller resumes: set_result only schedules it
        self._record(start, (i.enqueued for i in batch), rows)
        offset = 0
        for item in batch:
            n = len(item.x)
            if not item.future.done():  # a caller that timed out meanwhile gets nothing
                item.future.set_result({k: v[offset : offset + n] for k, v in out.items()})
            offset += n

    def _record(self, start: float, enqueued: Iterable[float], rows: int) -> None:
        """One batch's throughput sample and metrics (`enqueued`: when each of its requests queued)."""
        compute_s = time.perf_counter() - start
        waits = [start - t for t in enqueued]
        self._avg_requests += RATE_ALPHA * (len(waits) - self._avg_requests)
        self._avg_rows += RATE_ALPHA * (rows - self._avg_rows)
        self._avg_s += RATE_ALPHA * (compute_s - self._avg_s)
        if self.metrics and self._m is not None:
            m, lab = self._m, self.labels
            m.compute_duration.observe(compute_s)
            self.metrics.stats.record_batch(*lab, waits, compute_s, rows)
            m.batch_size.observe(rows)
            m.inferred_rows.inc(rows)
            queue_duration = m.queue_duration
            for wait in waits:
                queue_duration.observe(wait)

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued and running ones, then stop."""
        self._closed = True
        t_end = time.perf_counter() + drain_timeout_s
        while (self._queued_rows or self._busy) and time.perf_counter() < t_end:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for queue in self._queues:
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(Unavailable("The model was unloaded.", retry_after_s=1))
        for level, rows in enumerate(self._level_rows):
            self._set_depth(level, -rows)  # those rows will never run
        self._executor.shutdown(wait=False)
