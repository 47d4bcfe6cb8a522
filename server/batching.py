"""Dynamic batching: concurrent requests for one model version become one inference run, split back.

One worker task per model version takes the first waiting request and every request already queued behind it
(up to ``max_batch_size`` rows); only when there is such company does it wait, at most ``max_queue_delay``
after the first request arrived, for more. A lone request on an idle model runs at once. Each batch costs one
hop to the inference thread. The queue is bounded in rows, independent of the batch size; a request whose
deadline passes is answered 504 and, if still queued, removed so that its rows never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from server.errors import BadRequest, QueueFull, Timeout, Unavailable
from server.metrics import Metrics

Outputs = dict[str, np.ndarray]
InferFn = Callable[[np.ndarray], Outputs]


class _Item:
    """One queued request (a slotted class: made once per request on the hot path)."""

    __slots__ = ("enqueued", "future", "taken", "x")

    def __init__(self, x: np.ndarray, future: asyncio.Future[Outputs]) -> None:
        self.x, self.future = x, future
        self.enqueued = time.perf_counter()
        self.taken = False


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
        metrics: Metrics | None = None,
        labels: tuple[str, str] = ("", ""),
    ) -> None:
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_s
        self.max_queue_rows = max_queue_rows
        self.max_request_rows = max_request_rows
        self.metrics, self.labels = metrics, labels
        self._m = metrics.model(*labels) if metrics else None  # label children bound once
        self._depth_watched = False
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        self._busy = False
        self._worker: asyncio.Task[None] | None = None
        # One thread per model version: its batches run in order, and the event loop never blocks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{labels[0]}")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        freeze_loaded_objects()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, x: np.ndarray, deadline: float) -> Outputs:
        """Queue `x` and wait for exactly its rows' outputs; `deadline` is a ``time.perf_counter()`` value."""
        rows = len(x)
        if self._closed:
            raise Unavailable("The model is being unloaded; retry shortly.", retry_after_s=1)
        if rows > self.max_request_rows:
            raise BadRequest(f"The request has {rows} rows; at most {self.max_request_rows} are allowed.")
        # An empty queue always admits one request, so a request larger than the queue still runs.
        if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
            raise QueueFull(f"The queue is full ({self._queued_rows} rows waiting); retry shortly.")
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future())
        self._queue.append(item)
        self._set_depth(rows)
        self._wakeup.set()
        remaining = deadline - time.perf_counter()
        # One timer that fails the future at the deadline: cheaper than asyncio.wait_for's extra future
        # and callbacks, and the same outcome (a done future is skipped by the worker).
        timer = loop.call_later(remaining, _expire, item.future) if remaining > 0 else None
        try:
            if timer is None:
                raise TimeoutError
            return await item.future
        except TimeoutError:
            if not item.taken:  # still queued: its rows must never run
                item.taken = True
                self._queue.remove(item)
                self._set_depth(-rows)
            raise Timeout("The request timed out before its inference finished.") from None
        finally:
            if timer is not None:
                timer.cancel()

    def _set_depth(self, delta: int) -> None:
        self._queued_rows += delta
        if not self._depth_watched and self._m is not None:
            # The gauge reads the count when scraped; a weak reference lets a retired batcher go.
            me = weakref.ref(self)
            self._m.watch_queue(lambda: b._queued_rows if (b := me()) is not None else 0)
            self._depth_watched = True

    def _pop(self) -> _Item | None:
        """The next live item (timed-out or cancelled ones are dropped here)."""
        while self._queue:
            item = self._popleft()
            if not item.future.done():
                return item
        return None

    def _popleft(self) -> _Item:
        item = self._queue.popleft()
        item.taken = True
        self._set_depth(-len(item.x))
        return item

    def _take_more(self, batch: list[_Item], rows: int) -> int:
        while self._queue and rows < self.max_batch_size:
            nxt = self._queue[0]
            if nxt.future.done():  # timed out or cancelled: drop it, and judge the next one on its own
                self._popleft()
                continue
            if rows + len(nxt.x) > self.max_batch_size:
                break
            item = self._pop()
            if item is not None:
                batch.append(item)
                rows += len(item.x)
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._pop()
            if first is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
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
        if self.metrics and self._m is not None:
            m, lab = self._m, self.labels
            compute_s = time.perf_counter() - start
            m.compute_duration.observe(compute_s)
            self.metrics.stats.record_batch(*lab, (start - i.enqueued for i in batch), compute_s, rows)
            m.batch_size.observe(rows)
            m.inferred_rows.inc(rows)
            queue_duration = m.queue_duration
            for item in batch:
                queue_duration.observe(start - item.enqueued)
        offset = 0
        for item in batch:
            n = len(item.x)
            if not item.future.done():  # a caller that timed out meanwhile gets nothing
                item.future.set_result({k: v[offset : offset + n] for k, v in out.items()})
            offset += n

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued and running ones, then stop."""
        self._closed = True
        t_end = time.perf_counter() + drain_timeout_s
        while (self._queue or self._busy) and time.perf_counter() < t_end:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Unavailable("The model was unloaded.", retry_after_s=1))
        self._executor.shutdown(wait=False)
