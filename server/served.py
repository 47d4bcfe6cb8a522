"""A served model version: its manifest, its warmed ensemble, its batcher and its metric series.

The registry (``server.repository``) builds one per loaded version and swaps them in and out; the data
plane counts the requests that looked a version up (``enter`` / ``leave``), so that a version leaving the
registry (hot reload, unload, shutdown) is retired only once those have their answers: :meth:`retire`
waits on an event set by the last ``leave``, then closes the batcher and the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from server.batching import Batcher
from server.ensemble import Ensemble
from server.manifest import Manifest
from server.metrics import Metrics, ModelMetrics
from server.settings import Settings


@dataclass(eq=False)
class ServedVersion:
    name: str
    version: int
    path: Path
    manifest: Manifest
    ensemble: Ensemble
    stamp: float  # manifest mtime when loaded: a changed manifest means a new load
    batcher: Batcher | None = None  # set by start()
    metrics: ModelMetrics | None = None  # this version's bound metric series, set by start()
    active: int = 0  # requests that looked this version up and are not answered yet
    _drained: asyncio.Event | None = field(default=None, init=False, repr=False)  # set by the last leave()

    @cached_property
    def output_types(self) -> dict[str, str]:
        """Output name -> V2 datatype, in the manifest's order (read on every request)."""
        return {o.name: o.datatype for o in self.manifest.outputs}

    @cached_property
    def version_label(self) -> str:
        return str(self.version)

    @property
    def info_labels(self) -> tuple[str, ...]:
        """The labels of this version's ``ensemble_model_info`` series."""
        e = self.ensemble
        return (self.name, str(self.version), e.info.provider, e.info.device, str(e.members), e.execution)

    def start(self, settings: Settings, metrics: Metrics) -> None:
        """Start the batcher (on the running loop) and publish the info series; once per version."""
        if self.batcher is not None:
            return
        labels = (self.name, str(self.version))
        self.metrics = metrics.model(*labels)
        e = self.ensemble
        timing = e.timings.get(e.execution)
        self.batcher = Batcher(
            e.predict,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            max_queue_rows=settings.max_queue_size,
            max_request_rows=settings.max_request_rows,
            priority_levels=settings.priority_levels,
            inline_max_rows=settings.inline_max_rows,
            # The warm-up timed the largest batch: the throughput admission assumes until batches run.
            seed_rate=(settings.max_batch_size, timing.batch_max_s) if timing else None,
            metrics=metrics,
            labels=labels,
        )
        self.batcher.start()
        metrics.model_info.labels(*self.info_labels).set(1)

    def enter(self) -> None:
        """A request looked this version up (call with no await since the lookup)."""
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0 and self._drained is not None:
            self._drained.set()

    async def retire(self, timeout_s: float, metrics: Metrics, keep_info: bool = False) -> None:
        """Wait (at most `timeout_s`) for the requests that looked this version up, then close it.

        A request may have looked the version up and still be reading its body: it has not reached the
        batcher yet, so it is waited for too before the batcher starts refusing work. `keep_info`: the same
        info series is served again (a version reloaded in place), so it must stay."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        if self.active:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        if self.batcher is not None:
            await self.batcher.close(max(0.0, end - loop.time()))
        if not keep_info:
            with contextlib.suppress(KeyError):
                metrics.forget_info(self.info_labels)
        self.ensemble.close()
