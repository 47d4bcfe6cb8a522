import asyncio
import time

import pytest

from server import timers


def test_deadlines_fire_in_order_never_early_and_cancelled_ones_never() -> None:
    async def main() -> list[tuple[str, float]]:
        fired: list[tuple[str, float]] = []
        t0 = time.perf_counter()

        def note(name: str) -> None:
            fired.append((name, time.perf_counter() - t0))

        timers.call_later(0.06, note, "late")
        timers.call_later(0.02, note, "early")
        gone = timers.call_later(0.01, note, "cancelled")
        gone.cancel()
        timers.call_later(0.04, note, "middle")
        await asyncio.sleep(0.12)
        return fired

    fired = asyncio.run(main())
    assert [name for name, _ in fired] == ["early", "middle", "late"]
    for (_, at), due in zip(fired, (0.02, 0.04, 0.06), strict=True):
        assert due - 0.002 <= at < due + 0.05, (at, due)  # libuv / asyncio clocks may differ by ~1 ms


@pytest.mark.parametrize("n", [5000])
def test_many_cancelled_deadlines_do_not_pile_up(n: int) -> None:
    async def main() -> int:
        for _ in range(n):
            timers.call_later(30, print).cancel()
        loop = asyncio.get_running_loop()
        return len(timers._wheels[loop].heap)

    assert asyncio.run(main()) < n // 2


def test_a_failing_callback_does_not_stop_the_others() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))

        def boom() -> None:
            raise RuntimeError("kaput")

        timers.call_later(0.01, boom)
        timers.call_later(0.01, seen.append, "after")
        await asyncio.sleep(0.05)
        assert errors and isinstance(errors[0]["exception"], RuntimeError)
        return seen

    assert asyncio.run(main()) == ["after"]
