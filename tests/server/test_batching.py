import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from server.batching import Batcher, Outputs
from server.errors import BadRequest, QueueFull, Timeout
from server.metrics import Metrics


class Recorder:
    """An inference function that records each batch it ran; optionally slow or gated."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.rows_seen: list[np.ndarray] = []
        self.delay_s, self.gate = delay_s, gate

    def __call__(self, x: np.ndarray) -> Outputs:
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.batches.append(len(x))
        self.rows_seen.append(x.copy())
        return {"double": x * 2, "first": x[:, 0].astype(np.int64)}


def make(infer: Callable[[np.ndarray], Outputs], **kw: float) -> Batcher:
    opts = {
        "max_batch_size": 64,
        "max_queue_delay_s": 0.005,
        "max_queue_rows": 10_000,
        "max_request_rows": 1000,
    }
    opts.update(kw)
    return Batcher(infer, **opts)  # type: ignore[arg-type]


def rows(start: int, n: int) -> np.ndarray:
    """Rows whose values identify them: row i is [i, i + 0.5]."""
    ids = np.arange(start, start + n, dtype=np.float32)
    return np.stack([ids, ids + 0.5], axis=1)


def test_concurrent_callers_each_get_their_own_rows_in_order_and_batches_merge() -> None:
    rec = Recorder(delay_s=0.002)

    async def main() -> list[tuple[np.ndarray, Outputs]]:
        b = make(rec)
        b.start()
        rng = np.random.default_rng(0)
        sizes = rng.integers(1, 9, size=120)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        inputs = [rows(int(s), int(n)) for s, n in zip(starts, sizes, strict=True)]
        deadline = time.perf_counter() + 10
        outs = await asyncio.gather(*(b.submit(x, deadline) for x in inputs))
        await b.close()
        return list(zip(inputs, outs, strict=True))

    pairs = asyncio.run(main())
    for x, out in pairs:
        np.testing.assert_array_equal(out["double"], x * 2)
        np.testing.assert_array_equal(out["first"], x[:, 0].astype(np.int64))
    assert sum(rec.batches) == sum(len(x) for x, _ in pairs)
    assert max(rec.batches) > 8, f"no batch merged several requests: {rec.batches}"
    assert max(rec.batches) <= 64
    assert len(rec.batches) < len(pairs)


def test_lone_request_is_not_delayed_for_company() -> None:
    rec = Recorder()

    async def main() -> float:
        b = make(rec, max_queue_delay_s=0.5)
        b.start()
        await b.submit(rows(0, 1), time.perf_counter() + 5)  # first call pays thread start-up
        t0 = time.perf_counter()
        await b.submit(rows(0, 1), time.perf_counter() + 5)
        took = time.perf_counter() - t0
        await b.close()
        return took

    assert asyncio.run(main()) < 0.1  # far below the 0.5 s delay it would wait for company


def test_request_larger_than_batch_runs_alone_and_too_many_rows_is_400() -> None:
    rec = Recorder()

    async def main() -> None:
        b = make(rec, max_batch_size=8, max_request_rows=50)
        b.start()
        out = await b.submit(rows(0, 30), time.perf_counter() + 5)
        np.testing.assert_array_equal(out["double"], rows(0, 30) * 2)
        with pytest.raises(BadRequest, match="at most 50"):
            await b.submit(rows(0, 51), time.perf_counter() + 5)
        await b.close()

    asyncio.run(main())
    assert rec.batches == [30]


def test_full_queue_answers_queue_full_with_retry_after() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def main() -> None:
        b = make(rec, max_batch_size=4, max_queue_rows=10)
        b.start()
        deadline = time.perf_counter() + 10
        running = asyncio.ensure_future(b.submit(rows(0, 4), deadline))
        await asyncio.sleep(0.05)  # the worker took it and is blocked on the gate
        queued = [asyncio.ensure_future(b.submit(rows(10 + 4 * i, 4), deadline)) for i in range(2)]
        await asyncio.sleep(0.01)
        assert b.queued_rows == 8
        with pytest.raises(QueueFull) as info:
            await b.submit(rows(100, 4), deadline)  # 8 + 4 > 10: independent of the batch size of 4
        assert info.value.status_code == 429 and info.value.headers["Retry-After"] == "1"
        gate.set()
        await asyncio.gather(running, *queued)
        await b.close()

    asyncio.run(main())


def test_timed_out_request_gets_timeout_and_its_rows_never_run() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    metrics = Metrics()

    async def main() -> None:
        b = make(rec, max_batch_size=4, metrics=metrics, labels=("m", "1"))  # type: ignore[arg-type]
        b.start()
        slow = asyncio.ensure_future(b.submit(rows(0, 4), time.perf_counter() + 10))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(Timeout):
            await b.submit(rows(500, 3), time.perf_counter() + 0.1)
        waited = time.perf_counter() - t0
        assert 0.095 <= waited < 1.0, waited  # neither early nor much late
        assert b.queued_rows == 0
        gate.set()
        await slow
        await b.close()

    asyncio.run(main())
    assert rec.batches == [4]
    assert not any((r[:, 0] >= 500).any() for r in rec.rows_seen)
    assert metrics.registry.get_sample_value("ensemble_queue_depth", {"model": "m", "version": "1"}) == 0


def test_inference_error_reaches_every_caller_of_the_batch() -> None:
    def boom(x: np.ndarray) -> Outputs:
        raise RuntimeError("kaput")

    async def main() -> None:
        b = make(boom)
        b.start()
        with pytest.raises(RuntimeError, match="kaput"):
            await b.submit(rows(0, 2), time.perf_counter() + 5)
        await b.close()

    asyncio.run(main())


def test_metrics_count_batches_and_rows() -> None:
    metrics = Metrics()

    async def main() -> None:
        b = make(Recorder(), metrics=metrics, labels=("m", "1"))  # type: ignore[arg-type]
        b.start()
        for n in (1, 2, 3):
            await b.submit(rows(0, n), time.perf_counter() + 5)
        await b.close()

    asyncio.run(main())
    labels = {"model": "m", "version": "1"}
    assert metrics.registry.get_sample_value("ensemble_inferred_rows_total", labels) == 6
    assert metrics.registry.get_sample_value("ensemble_batch_size_count", labels) == 3
    assert metrics.registry.get_sample_value("ensemble_batch_size_sum", labels) == 6


def test_a_dead_request_at_the_head_never_lets_a_batch_exceed_max_batch_size() -> None:
    """Queue: 2 live rows (taken), 1 row whose caller gave up, 3 live rows; max_batch_size 4."""
    from server.batching import _Item

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        b = make(Recorder(), max_batch_size=4)
        first, dead, big = (_Item(rows(i, n), loop.create_future()) for i, n in ((0, 2), (10, 1), (20, 3)))
        dead.future.cancel()  # timed out in the same turn that the worker assembles the batch
        b._queues[0].extend([dead, big])
        b._set_depth(0, 4)
        batch = [first]
        taken = b._take_more(batch, 2)
        return taken, len(batch), b.queued_rows

    taken, n_items, still_queued = asyncio.run(main())
    assert taken == 2 and n_items == 1  # the 3-row request waits for the next batch
    assert still_queued == 3  # the dead row left the queue (and the depth gauge)


def test_higher_priority_level_runs_first_and_batches_take_it_before_lower_levels() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def main() -> None:
        b = make(rec, max_batch_size=4, priority_levels=3)
        b.start()
        deadline = time.perf_counter() + 10
        running = asyncio.ensure_future(b.submit(rows(0, 4), deadline, level=1))
        await asyncio.sleep(0.05)  # the worker took it and is blocked on the gate
        low = asyncio.ensure_future(b.submit(rows(100, 4), deadline, level=2))
        mid = asyncio.ensure_future(b.submit(rows(200, 4), deadline, level=1))
        high = asyncio.ensure_future(b.submit(rows(300, 2), deadline, level=0))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(running, low, mid, high)
        await b.close()

    asyncio.run(main())
    firsts = [int(r[0, 0]) for r in rec.rows_seen]
    # level 0 first (2 rows; the 4-row level-1 request does not fit beside it), then level 1, then 2
    assert firsts == [0, 300, 200, 100], firsts


def test_admission_by_time_refuses_only_what_cannot_finish_before_its_deadline() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def main() -> None:
        # 1,000 rows/s measured (seed: 100 rows in 0.1 s); a cap far above what is queued here.
        b = make(rec, max_batch_size=100, seed_rate=(100, 0.1), max_queue_rows=100_000, priority_levels=2)
        b.start()
        far = time.perf_counter() + 30
        running = asyncio.ensure_future(b.submit(rows(0, 100), far))
        await asyncio.sleep(0.05)  # taken by the worker, blocked on the gate
        queued = [asyncio.ensure_future(b.submit(rows(1000 + 100 * i, 100), far, level=1)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert b.queued_rows == 500
        # 500 rows ahead at 1,000 rows/s need 0.5 s (plus its own 0.1 s): a 0.3 s deadline cannot be met...
        with pytest.raises(QueueFull, match="rows queued ahead") as info:
            await b.submit(rows(5000, 100), time.perf_counter() + 0.3, level=1)
        assert info.value.status_code == 429 and int(info.value.headers["Retry-After"]) >= 1
        # ...but the same request at the higher level has nothing ahead of it, and 2 s are plenty at its own.
        ahead = asyncio.ensure_future(b.submit(rows(6000, 10), time.perf_counter() + 0.3, level=0))
        ok = asyncio.ensure_future(b.submit(rows(7000, 100), time.perf_counter() + 2, level=1))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(running, *queued, ahead, ok)
        await b.close()

    asyncio.run(main())


def test_queue_cap_still_bounds_memory_whatever_the_deadline() -> None:
    gate = threading.Event()

    async def main() -> None:
        b = make(Recorder(gate=gate), max_batch_size=4, max_queue_rows=8, seed_rate=(4, 1e-6))
        b.start()
        far = time.perf_counter() + 30
        running = asyncio.ensure_future(b.submit(rows(0, 4), far))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(b.submit(rows(10 + 4 * i, 4), far)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue is full"):
            await b.submit(rows(100, 1), far)
        gate.set()
        await asyncio.gather(running, *queued)
        await b.close()

    asyncio.run(main())


def test_lone_small_request_runs_inline_and_company_still_batches() -> None:
    threads: list[str] = []

    def infer(x: np.ndarray) -> Outputs:
        threads.append(threading.current_thread().name)
        time.sleep(0.002)
        return {"double": x * 2}

    async def main() -> None:
        b = make(infer, inline_max_rows=4)
        b.start()
        await asyncio.sleep(0.01)  # the worker is waiting for work
        deadline = time.perf_counter() + 10
        out = await b.submit(rows(0, 2), deadline)  # alone: on the event loop's thread
        np.testing.assert_array_equal(out["double"], rows(0, 2) * 2)
        big = await b.submit(rows(0, 8), deadline)  # over inline_max_rows: the inference thread
        np.testing.assert_array_equal(big["double"], rows(0, 8) * 2)
        # Arriving together, they queue behind one another and batch on the inference thread.
        outs = await asyncio.gather(*(b.submit(rows(10 * i, 1), deadline) for i in range(8)))
        for i, o in enumerate(outs):
            np.testing.assert_array_equal(o["double"], rows(10 * i, 1) * 2)
        # Right after batches with company, a request alone for a moment still takes the thread: an idle
        # instant under load must not turn batching off.
        await b.submit(rows(0, 1), deadline)
        assert b.inline_runs == 1
        await b.close()

    main_thread = threading.current_thread().name
    asyncio.run(main())
    assert threads[0] == main_thread and threads[1].startswith("infer-")
    assert all(t.startswith("infer-") for t in threads[2:]) and len(threads) < 11, threads


def test_inline_run_counts_in_the_metrics_and_the_throughput() -> None:
    metrics = Metrics()

    async def main() -> Batcher:
        b = make(Recorder(), inline_max_rows=8, metrics=metrics, labels=("m", "1"))  # type: ignore[arg-type]
        b.start()
        await asyncio.sleep(0.01)
        await b.submit(rows(0, 3), time.perf_counter() + 5)
        await b.close()
        return b

    b = asyncio.run(main())
    labels = {"model": "m", "version": "1"}
    assert metrics.registry.get_sample_value("ensemble_inferred_rows_total", labels) == 3
    assert metrics.registry.get_sample_value("ensemble_batch_size_count", labels) == 1
    assert b.rows_per_s is not None and b.rows_per_s > 0


def test_64_clients_of_256_rows_queue_and_are_answered_with_the_default_settings() -> None:
    """Issue 13: the old fixed 4,096-row bound refused most of these; admission by time lets them queue."""
    from server.settings import Settings

    settings = Settings()
    rec = Recorder(delay_s=0.001)

    async def main() -> list[Outputs]:
        b = make(rec, max_batch_size=settings.max_batch_size, max_queue_rows=settings.max_queue_size,
                 max_request_rows=settings.max_request_rows, seed_rate=(256, 0.003))  # fmt: skip
        b.start()
        deadline = time.perf_counter() + settings.request_timeout_s
        outs = await asyncio.gather(*(b.submit(rows(256 * i, 256), deadline) for i in range(64)))
        await b.close()
        return outs

    outs = asyncio.run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["double"], rows(256 * i, 256) * 2)
    assert sum(rec.batches) == 64 * 256
