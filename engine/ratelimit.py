"""Token buckets with priorities: how the OrderRouter stays within a broker's rate limits.

Tradier counts requests per limit group (trading: place/modify/cancel; standard: account and
order reads) in fixed one-minute windows that start at a group's first request. A plain bucket
of ``limit`` tokens refilled at ``limit`` per minute can spend ``2 x limit`` in one window (a full
bucket, then a minute of refill), so :class:`TokenBucket` keeps ``burst`` tokens (half the limit
by default) and refills the rest over the window: whatever the window's alignment, at most
``burst + (limit - burst) = limit`` requests fall in it.

Waiters are served by priority, then in arrival order: the router gives stop losses the highest
priority (0), other exits after them, so when exits compete for the last tokens of a window the
stop goes first. ``time_scale`` is market seconds per trio second: a simulator running at 10x
counts its windows in market time, so the bucket refills 10x faster in trio time.
"""

from __future__ import annotations

import heapq
import itertools

import msgspec
import trio

__all__ = ["BucketStatistics", "TokenBucket"]


class BucketStatistics(msgspec.Struct, frozen=True):
    acquired: int
    waited: int
    waiting: int
    tokens: float


class TokenBucket:
    """At most ``limit`` acquisitions in any ``window`` seconds (see the module docstring).

    Invariants: ``0 <= _tokens <= burst``; ``_waiters`` is a heap of ``[priority, seq, event]``
    and only its head may take a token while others wait (so a low-priority caller that
    arrives when a token is free cannot jump a queue of waiters).
    """

    def __init__(
        self,
        *,
        limit: int,
        window: float = 60.0,
        burst: int | None = None,
        time_scale: float = 1.0,
    ) -> None:
        if limit < 1 or window <= 0 or time_scale <= 0:
            raise ValueError("limit, window and time_scale must be positive")
        self.burst = max(1, limit // 2) if burst is None else burst
        if not 1 <= self.burst <= limit:
            raise ValueError(f"burst must be within [1, {limit}], got {self.burst}")
        # Refill the rest of the window's budget evenly; a burst equal to the limit refills
        # nothing until a whole window has passed.
        self._rate = max(limit - self.burst, 0) / window or (limit / window / 1000.0)
        self._time_scale = time_scale
        self._tokens = float(self.burst)
        self._stamp = self._now()
        self._waiters: list[list[object]] = []
        self._seq = itertools.count()
        self._acquired = 0
        self._waited = 0

    def _now(self) -> float:
        return trio.current_time() * self._time_scale

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def statistics(self) -> BucketStatistics:
        self._refill()
        return BucketStatistics(
            acquired=self._acquired,
            waited=self._waited,
            waiting=len(self._waiters),
            tokens=self._tokens,
        )

    async def acquire(self, priority: int = 0) -> None:
        """Take one token, waiting behind higher priorities (lower numbers) and earlier
        arrivals of the same priority."""
        self._refill()
        if not self._waiters and self._tokens >= 1:
            self._tokens -= 1
            self._acquired += 1
            await trio.lowlevel.checkpoint()
            return
        self._waited += 1
        entry: list[object] = [priority, next(self._seq), trio.Event()]
        heapq.heappush(self._waiters, entry)
        try:
            await self._wait_turn(entry)
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
                self._wake_head()
            raise

    async def _wait_turn(self, entry: list[object]) -> None:
        while True:
            event = entry[2]
            assert isinstance(event, trio.Event)
            if self._waiters[0] is not entry:
                await event.wait()
                entry[2] = trio.Event()
                continue
            self._refill()
            if self._tokens >= 1:
                heapq.heappop(self._waiters)
                self._tokens -= 1
                self._acquired += 1
                self._wake_head()
                return
            wait = (1.0 - self._tokens) / self._rate / self._time_scale
            # Woken early when someone ahead of us arrives or leaves; then look again.
            with trio.move_on_after(wait):
                await event.wait()
            entry[2] = trio.Event()

    def _wake_head(self) -> None:
        if self._waiters:
            event = self._waiters[0][2]
            assert isinstance(event, trio.Event)
            event.set()
