"""TokenBucket: never more than the limit in any window, priorities first."""

from __future__ import annotations

import pytest
import trio

from engine.ratelimit import TokenBucket


def _max_in_window(times: list[float], window: float) -> int:
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window - 1e-9))
    return best


async def test_no_window_holds_more_than_the_limit(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(limit=60, window=60.0)
    times: list[float] = []

    async def caller() -> None:
        await bucket.acquire()
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(caller)
    assert len(times) == 200
    assert _max_in_window(sorted(times), 60.0) <= 60
    # ... and it is not needlessly slow: 200 requests take about (200 - 30) / 0.5 s.
    assert trio.current_time() == pytest.approx(340.0, abs=3.0)


async def test_a_burst_goes_at_once(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(limit=60, window=60.0)
    start = trio.current_time()
    for _ in range(30):
        await bucket.acquire()
    assert trio.current_time() == start


async def test_higher_priority_waiters_go_first(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(limit=2, window=10.0, burst=1)
    await bucket.acquire()  # the bucket is empty now
    order: list[str] = []

    async def caller(name: str, priority: int) -> None:
        await bucket.acquire(priority)
        order.append(name)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(caller, f"profit{i}", 2)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(caller, "stop", 0)
    assert order[0] == "stop"
    assert order[1:] == ["profit0", "profit1", "profit2"]


async def test_time_scale_counts_market_time(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(limit=60, window=60.0, time_scale=10.0)
    for _ in range(31):
        await bucket.acquire()
    # The 31st token came from the refill: 2 market seconds at 10x are 0.2 trio seconds.
    assert trio.current_time() == pytest.approx(0.2, abs=0.01)


async def test_a_cancelled_waiter_leaves_the_queue(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(limit=2, window=10.0, burst=1)
    await bucket.acquire()
    with trio.move_on_after(1.0):
        await bucket.acquire()
    assert bucket.statistics().waiting == 0
    await bucket.acquire()  # the next caller is not stuck behind the cancelled one
