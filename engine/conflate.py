"""A conflating mailbox: the channel that carries *state* (quotes) rather than *events*.

DESIGN section 2: a watcher that falls behind may skip intermediate quotes, but the newest quote
per symbol is never lost, and the producer (QuoteStream) never waits on a slow consumer. A trio
memory channel cannot promise both at once (a full buffer either blocks the sender or drops the
newest item), so quotes travel through this instead: ``put`` overwrites the pending value for its
key and wakes the single consumer; ``get_batch`` hands over everything pending at once.

Memory is bounded by the number of distinct keys (symbols), never by the quote rate.
Events (orders, fills, intents, audit records) never go through here: they must not conflate.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec
import trio

__all__ = ["ConflatingMailbox", "MailboxStatistics"]

K = TypeVar("K")
V = TypeVar("V")


class MailboxStatistics(msgspec.Struct, frozen=True):
    delivered_batches: int
    put: int
    conflated: int
    pending: int
    closed: bool


class ConflatingMailbox(Generic[K, V]):
    """Single-consumer mailbox keeping the newest value per key.

    Invariants: ``_pending`` holds at most one value per key, the newest put since the last
    batch; ``put`` never blocks and never raises while open; exactly one task calls
    ``get_batch`` at a time.
    """

    __slots__ = ("_closed", "_conflated", "_delivered", "_pending", "_put", "_waiter")

    def __init__(self) -> None:
        self._pending: dict[K, V] = {}
        # The consumer while it sleeps in get_batch. One waiter, woken by rescheduling it
        # directly: a ParkingLot's general machinery cost more than the rest of a put.
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False
        self._put = 0
        self._conflated = 0
        self._delivered = 0

    def put(self, key: K, value: V) -> None:
        """Store ``value`` as the newest for ``key``; never blocks. Ignored once closed."""
        if self._closed:
            return
        pending = self._pending
        self._put += 1
        if key in pending:
            self._conflated += 1
        pending[key] = value
        if self._waiter is not None:
            self._wake()

    async def get_batch(self) -> dict[K, V]:
        """Wait until something is pending, then return all of it (newest per key).

        Raises ``trio.EndOfChannel`` once closed and drained.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._pending:
            await trio.lowlevel.cancel_shielded_checkpoint()
        elif not self._closed:
            # Sleeping is the schedule point: no second trip through the scheduler first.
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is already taking batches")
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        if not self._pending:
            raise trio.EndOfChannel  # woken by close() with nothing left
        batch, self._pending = self._pending, {}
        self._delivered += 1
        return batch

    def _abort_wait(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def close(self) -> None:
        """No more puts; the consumer drains what is pending, then gets EndOfChannel."""
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            delivered_batches=self._delivered,
            put=self._put,
            conflated=self._conflated,
            pending=len(self._pending),
            closed=self._closed,
        )
