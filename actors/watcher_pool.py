"""WatcherPool: one PositionWatcher task per managed open spread.

The pool is the only long-lived holder of a nursery (DESIGN section 2). It reads the spread
lifecycle from PortfolioMirror and order events from OrderRouter, starts a watcher when a managed
spread opens, forwards what concerns a watcher to it, and stops it when its spread closes.

**One inbox per watcher.** A watcher's quotes arrive in its :class:`ConflatingMailbox` (owned by
QuoteStream's fan-out, keyed by symbol: newest wins). The pool puts lifecycle and order events into
the *same* mailbox under keys that are never reused (``"#<n>"``, which no symbol can be), so they
are never conflated and keep their order, and the watcher waits on one thing only. Neither
QuoteStream nor the pool ever waits on a slow watcher.

**Crashes.** A watcher that crashes is restarted from its latest snapshot after a backoff (a cold
start: the persisted high-water mark and fired tiers come with the snapshot); its siblings are not
disturbed. After ``max_restarts`` crashes in a row the trade is left unwatched and the failure is
logged and recorded; the pool itself keeps running.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

import msgspec
import trio

from engine.conflate import ConflatingMailbox
from engine.errors import FatalError
from engine.log import get_logger
from engine.messages import (
    CloseTradeNow,
    ReleaseSymbols,
    RouterEvent,
    SpreadBackInSync,
    SpreadClosed,
    SpreadLifecycle,
    SpreadOpened,
    SpreadOutOfSync,
    SpreadQuantityChanged,
    SubscriptionCommand,
    TradeSnapshot,
    WantSymbols,
    WatcherEvent,
)

__all__ = ["EVENT_KEY_PREFIX", "MailboxSource", "PoolStatistics", "WatcherRunner", "run"]

EVENT_KEY_PREFIX = "#"

_log = get_logger("watcher_pool")


class MailboxSource(Protocol):
    """Where a watcher's quotes arrive (QuoteStream's fan-out)."""

    def mailbox(self, owner: str) -> ConflatingMailbox[str, Any]: ...


class WatcherRunner(Protocol):
    """Runs one PositionWatcher until its spread closes (or it is cancelled)."""

    def __call__(
        self, trade: TradeSnapshot, mailbox: ConflatingMailbox[str, Any]
    ) -> Awaitable[None]: ...


class PoolStatistics(msgspec.Struct, frozen=True):
    watchers: int
    started: int
    stopped: int
    crashes: int


@dataclass
class _Watch:
    trade: TradeSnapshot
    mailbox: ConflatingMailbox[str, Any]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


def owner_key(trade_id: int) -> str:
    return f"trade:{trade_id}"


class _Pool:
    """State owned by the pool's task (and its children only through ``put``)."""

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        fanout: MailboxSource,
        subscriptions: trio.MemorySendChannel[SubscriptionCommand],
        runner: WatcherRunner,
        restart_delay: float,
        max_restarts: int,
    ) -> None:
        self._nursery = nursery
        self._fanout = fanout
        self._subscriptions = subscriptions
        self._runner = runner
        self._restart_delay = restart_delay
        self._max_restarts = max_restarts
        self._watches: dict[int, _Watch] = {}
        self._event_seq = itertools.count()
        # An operator's close for a trade not watched yet (asked while the engine was down, read
        # at start before the mirror announced the trade): kept until its watcher starts.
        self._pending_closes: dict[int, CloseTradeNow] = {}
        self.started = self.stopped = self.crashes = 0

    @property
    def watching(self) -> int:
        return len(self._watches)

    async def on_lifecycle(self, message: SpreadLifecycle) -> None:
        match message:
            case SpreadOpened(trade=trade):
                await self._start(trade)
            case SpreadClosed(trade_id=trade_id):
                self._deliver(trade_id, message)
                await self._stop(trade_id)
            case SpreadQuantityChanged() | SpreadOutOfSync() | SpreadBackInSync():
                self._deliver(message.trade_id, message)
            case _:
                assert_never(message)

    def deliver(self, trade_id: int, event: WatcherEvent) -> None:
        self._deliver(trade_id, event)

    def _deliver(self, trade_id: int, event: WatcherEvent) -> None:
        watch = self._watches.get(trade_id)
        if watch is None and isinstance(event, CloseTradeNow):
            self._pending_closes[trade_id] = event
            _log.info("watcher_pool.close_pending", trade_id=trade_id)
            return
        if watch is None:
            _log.debug("watcher_pool.undeliverable", trade_id=trade_id, kind=type(event).__name__)
            return
        watch.mailbox.put(f"{EVENT_KEY_PREFIX}{next(self._event_seq)}", event)

    async def _start(self, trade: TradeSnapshot) -> None:
        if trade.trade_id in self._watches or not trade.managed:
            return
        owner = owner_key(trade.trade_id)
        watch = _Watch(trade=trade, mailbox=self._fanout.mailbox(owner))
        self._watches[trade.trade_id] = watch
        symbols = frozenset(leg.occ for leg in trade.legs) | {trade.underlying}
        await self._subscriptions.send(WantSymbols(owner=owner, symbols=symbols))
        pending = self._pending_closes.pop(trade.trade_id, None)
        if pending is not None:
            self._deliver(trade.trade_id, pending)
        self._nursery.start_soon(self._supervise, watch, name=f"watcher:{trade.trade_id}")
        self.started += 1
        _log.info("watcher_pool.watching", trade_id=trade.trade_id, strategy=trade.strategy)

    async def _stop(self, trade_id: int) -> None:
        watch = self._watches.pop(trade_id, None)
        if watch is None:
            return
        watch.scope.cancel()
        await self._subscriptions.send(ReleaseSymbols(owner=owner_key(trade_id)))
        self.stopped += 1
        _log.info("watcher_pool.stopped", trade_id=trade_id)

    async def _supervise(self, watch: _Watch) -> None:
        trade_id = watch.trade.trade_id
        failures = 0
        with watch.scope:
            while True:
                try:
                    await self._runner(watch.trade, watch.mailbox)
                    return
                except FatalError as exc:
                    # A bad exit plan cannot heal by retrying: leave the trade unwatched, loudly.
                    self.crashes += 1
                    _log.critical(
                        "watcher_pool.watcher_abandoned", trade_id=trade_id, error=str(exc)
                    )
                    return
                except Exception as exc:  # one watcher's bug must not take the others down
                    failures += 1
                    self.crashes += 1
                    _log.error(
                        "watcher_pool.watcher_crashed",
                        trade_id=trade_id,
                        error=repr(exc),
                        failures=failures,
                    )
                    if failures > self._max_restarts:
                        _log.critical("watcher_pool.watcher_abandoned", trade_id=trade_id)
                        return
                await trio.sleep(self._restart_delay * 2 ** (failures - 1))


async def run(
    *,
    lifecycle: trio.MemoryReceiveChannel[SpreadLifecycle],
    order_events: trio.MemoryReceiveChannel[RouterEvent] | None = None,
    commands: trio.MemoryReceiveChannel[CloseTradeNow] | None = None,
    subscriptions: trio.MemorySendChannel[SubscriptionCommand],
    fanout: MailboxSource,
    runner: WatcherRunner,
    restart_delay: float = 1.0,
    max_restarts: int = 5,
    on_statistics: Callable[[Callable[[], PoolStatistics]], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the pool until cancelled (or until the lifecycle channel ends).

    ``order_events`` carry a ``trade_id``; each is forwarded to that trade's watcher, as are
    ``commands`` (CloseTradeNow from the operator). A SpreadClosed among the router's events
    (its exit filled) stops the watcher as one from the mirror would.
    """
    async with trio.open_nursery() as nursery:
        pool = _Pool(
            nursery=nursery,
            fanout=fanout,
            subscriptions=subscriptions,
            runner=runner,
            restart_delay=restart_delay,
            max_restarts=max_restarts,
        )
        if on_statistics is not None:
            on_statistics(
                lambda: PoolStatistics(
                    watchers=pool.watching,
                    started=pool.started,
                    stopped=pool.stopped,
                    crashes=pool.crashes,
                )
            )
        if order_events is not None:
            nursery.start_soon(_forward, order_events, pool)
        if commands is not None:
            nursery.start_soon(_forward, commands, pool)
        task_status.started()
        async with lifecycle:
            async for message in lifecycle:
                await pool.on_lifecycle(message)
        nursery.cancel_scope.cancel()


async def _forward(
    channel: trio.MemoryReceiveChannel[RouterEvent] | trio.MemoryReceiveChannel[CloseTradeNow],
    pool: _Pool,
) -> None:
    async with channel:
        async for event in channel:
            if isinstance(event, SpreadClosed):
                await pool.on_lifecycle(event)
            else:
                pool.deliver(event.trade_id, event)
