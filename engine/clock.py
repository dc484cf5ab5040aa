"""Market time, injectable.

Two clocks exist in spreadwatch and must not be confused:

* **trio's clock** (``trio.current_time()``) measures durations: timeouts, backoff, debounce
  windows, quote ages, latency. Tests drive it with the autojump clock.
* **market time** (a :class:`MarketClock`) answers "what time is it in New York?" for the DTE,
  expiration-day and days-in-trade rules. In production it is the wall clock; in simulation
  it follows the simulator's clock, which may run faster than real time.

A :class:`TrioMarketClock` maps trio time onto market time (``start + speed * elapsed``), so in
tests and in simulation both clocks advance together and the autojump clock drives market time.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol
from zoneinfo import ZoneInfo

import trio

__all__ = ["NEW_YORK", "MarketClock", "SystemMarketClock", "TrioMarketClock"]

NEW_YORK = ZoneInfo("America/New_York")


class MarketClock(Protocol):
    def now(self) -> dt.datetime:
        """The current market time, timezone-aware (UTC)."""
        ...


class SystemMarketClock:
    """The wall clock: production."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class TrioMarketClock:
    """Market time that advances with trio's clock at ``speed`` market seconds per second.

    ``start`` is the market time at the trio instant the clock was created (or ``anchor``).
    Use ``resync`` when a broker reports its own time (the simulator's clock endpoint).
    """

    def __init__(self, start: dt.datetime, *, speed: float = 1.0, anchor: float | None = None):
        if start.tzinfo is None:
            raise ValueError("market clock start must be timezone-aware")
        if speed <= 0:
            raise ValueError("market clock speed must be positive")
        self._start = start.astimezone(dt.UTC)
        self._speed = speed
        self._anchor = trio.current_time() if anchor is None else anchor

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> dt.datetime:
        elapsed = (trio.current_time() - self._anchor) * self._speed
        return self._start + dt.timedelta(seconds=elapsed)

    def resync(self, market_now: dt.datetime) -> None:
        """Re-anchor so that ``now()`` returns ``market_now`` at this trio instant."""
        self._start = market_now.astimezone(dt.UTC)
        self._anchor = trio.current_time()
