from __future__ import annotations

import datetime as dt

import pytest
import trio

from engine.clock import NEW_YORK, TrioMarketClock

START = dt.datetime(2026, 11, 20, 14, 30, tzinfo=dt.UTC)


async def test_market_time_follows_trio_time_at_speed(autojump_clock: trio.abc.Clock) -> None:
    clock = TrioMarketClock(START, speed=60)
    await trio.sleep(10)
    assert clock.now() == START + dt.timedelta(minutes=10)
    assert clock.now().astimezone(NEW_YORK).hour == 9  # 14:40 UTC is 09:40 in New York


async def test_resync_reanchors(autojump_clock: trio.abc.Clock) -> None:
    clock = TrioMarketClock(START)
    await trio.sleep(5)
    later = START + dt.timedelta(hours=1)
    clock.resync(later)
    await trio.sleep(2)
    assert clock.now() == later + dt.timedelta(seconds=2)


async def test_naive_start_and_bad_speed_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TrioMarketClock(dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        TrioMarketClock(START, speed=0)
