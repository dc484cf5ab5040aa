"""The simulator's market clock.

Market time starts at the scenario's start and runs at ``speed`` market seconds per real second.
"Real" is trio's clock, so a test's autojump clock drives market time too.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import trio

__all__ = ["ClockStatistics", "SimClock"]


class ClockStatistics(msgspec.Struct, frozen=True):
    market_time: dt.datetime
    start: dt.datetime
    speed: float
    elapsed_market_seconds: float


class SimClock:
    """Market time as a function of trio time. Invariant: ``now()`` never goes backwards."""

    def __init__(self, start: dt.datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("SimClock needs an aware start time")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.start = start
        self.speed = speed
        self._origin = trio.current_time()

    def elapsed(self) -> float:
        """Market seconds since the start."""
        return (trio.current_time() - self._origin) * self.speed

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.elapsed())

    def epoch_ms(self) -> int:
        """Market time as Unix epoch milliseconds (the stream's ``biddate`` etc.)."""
        return int(self.start.timestamp() * 1000 + self.elapsed() * 1000)

    def real_seconds_until(self, offset: float) -> float:
        """Real seconds until market time reaches ``offset`` seconds after the start (>= 0)."""
        return max(0.0, (offset - self.elapsed()) / self.speed)

    async def sleep_until_offset(self, offset: float) -> None:
        await trio.sleep_until(self._origin + offset / self.speed)

    def statistics(self) -> ClockStatistics:
        return ClockStatistics(
            market_time=self.now(),
            start=self.start,
            speed=self.speed,
            elapsed_market_seconds=self.elapsed(),
        )
