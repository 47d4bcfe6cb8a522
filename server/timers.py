"""Request deadlines: one-shot timers that cost a heap push instead of an event-loop timer each.

Every request arms two deadlines (its body read and its wait for the batcher) and almost always cancels
both. On uvloop ``loop.call_later`` plus ``cancel`` allocates, starts and closes a libuv timer handle: about
9 µs of the event loop's time per pair on the development machine, two pairs per request, on a path whose
whole Python cost is a few tens of microseconds (docs/performance.md). Here all the deadlines of one loop sit
in one heap behind ONE real loop timer armed at the earliest of them; cancelling only marks the entry, and
cancelled entries are dropped when they reach the top or, when they pile up, all at once.

A callback never runs before its time (the loop's clock is checked when the timer fires) and runs at most
one loop iteration after it. Callbacks run on the loop, as ``call_later``'s do.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

# Rebuild the heap once more than this share of it is cancelled entries (bounds its memory to a few
# times the live deadlines while every push stays O(log n)).
_COMPACT_SHARE = 0.5
_COMPACT_MIN = 1024


class Deadline:
    """A pending callback; :meth:`cancel` it when the work finished in time."""

    __slots__ = ("args", "callback", "cancelled", "wheel")

    def __init__(self, wheel: _Wheel, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.wheel, self.callback, self.args = wheel, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = self.args = None  # type: ignore[assignment]  # let what it held go now
            self.wheel.dead += 1


class _Wheel:
    """The deadlines of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, Deadline]] = []
        self.seq = itertools.count()
        self.armed: asyncio.TimerHandle | None = None
        self.armed_at = float("inf")
        self.dead = 0  # cancelled entries still in the heap

    def add(self, delay: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> Deadline:
        when = self.loop.time() + delay
        entry = Deadline(self, callback, args)
        heapq.heappush(self.heap, (when, next(self.seq), entry))
        if when < self.armed_at:
            self._arm(when)
        elif self.dead > _COMPACT_MIN and self.dead > _COMPACT_SHARE * len(self.heap):
            self.heap = [item for item in self.heap if not item[2].cancelled]
            heapq.heapify(self.heap)
            self.dead = 0
        return entry

    def _arm(self, when: float) -> None:
        if self.armed is not None:
            self.armed.cancel()
        self.armed_at = when
        self.armed = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.armed, self.armed_at = None, float("inf")
        heap, now = self.heap, self.loop.time()
        while heap:
            when, _, entry = heap[0]
            if entry.cancelled:
                heapq.heappop(heap)
                self.dead -= 1
                continue
            if when > now:  # the loop's timer may fire a little early: wait for the rest
                self._arm(when)
                return
            heapq.heappop(heap)
            callback, args = entry.callback, entry.args
            entry.cancelled = True  # fired: a later cancel() is a no-op (and it is out of the heap)
            try:
                callback(*args)
            except Exception as exc:  # as the loop treats a failing callback: report it, carry on
                self.loop.call_exception_handler({"message": "deadline callback failed", "exception": exc})


_wheels: dict[asyncio.AbstractEventLoop, _Wheel] = {}


def call_later(delay: float, callback: Callable[..., Any], *args: Any) -> Deadline:
    """Like ``loop.call_later`` on the running loop, for deadlines that are usually cancelled."""
    loop = asyncio.get_running_loop()
    wheel = _wheels.get(loop)
    if wheel is None or wheel.loop.is_closed():
        for old in [lp for lp in _wheels if lp.is_closed()]:  # loops of finished asyncio.run()s
            del _wheels[old]
        wheel = _wheels[loop] = _Wheel(loop)
    return wheel.add(delay, callback, args)
