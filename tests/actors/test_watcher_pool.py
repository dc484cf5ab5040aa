"""WatcherPool driven through its channels under the autojump clock."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import trio
import trio.testing

from actors import watcher_pool
from engine.conflate import ConflatingMailbox
from engine.domain.spread import Leg
from engine.domain.strategy import Strategy
from engine.messages import (
    CloseReason,
    CloseTradeNow,
    OrderFilled,
    ReleaseSymbols,
    RouterEvent,
    SpreadClosed,
    SpreadLifecycle,
    SpreadOpened,
    SpreadOutOfSync,
    SubscriptionCommand,
    TradeOrigin,
    TradeSnapshot,
    WantSymbols,
)

NOW = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)


def _trade(trade_id: int, *, managed: bool = True) -> TradeSnapshot:
    legs = (
        Leg.from_position("SPY261218P00480000", -1),
        Leg.from_position("SPY261218P00475000", 1),
    )
    return TradeSnapshot(
        trade_id=trade_id,
        account_id="VA1",
        underlying="SPY",
        strategy=Strategy.BULL_PUT_CREDIT,
        legs=legs,
        quantity=1,
        opening_quantity=1,
        entry_price=Decimal("1.50"),
        origin=TradeOrigin.ENGINE,
        managed=managed,
        opened_at=NOW,
    )


class _Mailboxes:
    def __init__(self) -> None:
        self.boxes: dict[str, ConflatingMailbox[str, Any]] = {}

    def mailbox(self, owner: str) -> ConflatingMailbox[str, Any]:
        return self.boxes.setdefault(owner, ConflatingMailbox())


class _Recorder:
    """A watcher runner that records what each trade's mailbox delivers while it runs."""

    def __init__(self) -> None:
        self.seen: dict[int, list[object]] = {}
        self.running: set[int] = set()

    async def __call__(self, trade: TradeSnapshot, mailbox: ConflatingMailbox[str, Any]) -> None:
        self.running.add(trade.trade_id)
        try:
            while True:
                batch = await mailbox.get_batch()
                self.seen.setdefault(trade.trade_id, []).extend(batch.values())
        finally:
            self.running.discard(trade.trade_id)


async def test_watchers_start_receive_events_and_stop(autojump_clock: trio.abc.Clock) -> None:
    lifecycle_send, lifecycle = trio.open_memory_channel[SpreadLifecycle](0)
    subs_send, subs = trio.open_memory_channel[SubscriptionCommand](10)
    fanout = _Mailboxes()
    runner = _Recorder()
    seen, running = runner.seen, runner.running

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watcher_pool.run(
                lifecycle=lifecycle,
                subscriptions=subs_send,
                fanout=fanout,
                runner=runner,
                task_status=task_status,
            )
        )
        await lifecycle_send.send(SpreadOpened(trade=_trade(1)))
        await lifecycle_send.send(SpreadOpened(trade=_trade(2)))
        await lifecycle_send.send(SpreadOpened(trade=_trade(3, managed=False)))
        await lifecycle_send.send(SpreadOpened(trade=_trade(1)))  # already watched: ignored
        await trio.testing.wait_all_tasks_blocked()
        assert running == {1, 2}

        out_of_sync = SpreadOutOfSync(trade_id=2, missing_symbols=frozenset({"X"}), at=NOW)
        await lifecycle_send.send(out_of_sync)
        closed = SpreadClosed(trade_id=1, reason="profit_target", realized_pnl_dollars=None, at=NOW)
        await lifecycle_send.send(closed)
        await trio.testing.wait_all_tasks_blocked()
        assert running == {2}
        assert seen[2] == [out_of_sync]
        nursery.cancel_scope.cancel()

    commands = [subs.receive_nowait() for _ in range(3)]
    assert commands[0] == WantSymbols(
        owner="trade:1",
        symbols=frozenset({"SPY261218P00480000", "SPY261218P00475000", "SPY"}),
    )
    assert isinstance(commands[1], WantSymbols) and commands[1].owner == "trade:2"
    assert commands[2] == ReleaseSymbols(owner="trade:1")


async def test_a_crashing_watcher_is_restarted_and_siblings_untouched(
    autojump_clock: trio.abc.Clock,
) -> None:
    lifecycle_send, lifecycle = trio.open_memory_channel[SpreadLifecycle](0)
    subs_send, _subs = trio.open_memory_channel[SubscriptionCommand](10)
    starts: dict[int, int] = {}
    stats: list[Any] = []

    async def runner(trade: TradeSnapshot, mailbox: ConflatingMailbox[str, Any]) -> None:
        starts[trade.trade_id] = starts.get(trade.trade_id, 0) + 1
        if trade.trade_id == 1:
            raise RuntimeError("bug in one watcher")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watcher_pool.run(
                lifecycle=lifecycle,
                subscriptions=subs_send,
                fanout=_Mailboxes(),
                runner=runner,
                restart_delay=1.0,
                max_restarts=3,
                on_statistics=stats.append,
                task_status=task_status,
            )
        )
        await lifecycle_send.send(SpreadOpened(trade=_trade(1)))
        await lifecycle_send.send(SpreadOpened(trade=_trade(2)))
        await trio.sleep(60)
        nursery.cancel_scope.cancel()

    assert starts == {1: 4, 2: 1}  # first run + 3 restarts, then abandoned; sibling ran once
    assert stats[0]().crashes == 4 and stats[0]().watchers == 2


async def test_a_fatal_watcher_error_is_not_retried(autojump_clock: trio.abc.Clock) -> None:
    from engine.errors import ConfigError

    lifecycle_send, lifecycle = trio.open_memory_channel[SpreadLifecycle](0)
    subs_send, _subs = trio.open_memory_channel[SubscriptionCommand](10)
    starts: list[int] = []

    async def runner(trade: TradeSnapshot, mailbox: ConflatingMailbox[str, Any]) -> None:
        starts.append(trade.trade_id)
        raise ConfigError("unknown exit plan override 'x'")

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watcher_pool.run(
                lifecycle=lifecycle,
                subscriptions=subs_send,
                fanout=_Mailboxes(),
                runner=runner,
                task_status=task_status,
            )
        )
        await lifecycle_send.send(SpreadOpened(trade=_trade(1)))
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    assert starts == [1]


async def test_router_events_reach_the_watcher_and_a_close_waits_for_its_trade(
    autojump_clock: trio.abc.Clock,
) -> None:
    lifecycle_send, lifecycle = trio.open_memory_channel[SpreadLifecycle](0)
    subs_send, _subs = trio.open_memory_channel[SubscriptionCommand](10)
    events_send, events = trio.open_memory_channel[RouterEvent](10)
    closes_send, closes = trio.open_memory_channel[CloseTradeNow](10)
    runner = _Recorder()
    seen, running = runner.seen, runner.running

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watcher_pool.run(
                lifecycle=lifecycle,
                order_events=events,
                commands=closes,
                subscriptions=subs_send,
                fanout=_Mailboxes(),
                runner=runner,
                task_status=task_status,
            )
        )
        # A close asked before the trade is announced is kept, then delivered to its watcher.
        close = CloseTradeNow(trade_id=7, reason="operator", requested_at=NOW)
        await closes_send.send(close)
        await trio.testing.wait_all_tasks_blocked()
        await lifecycle_send.send(SpreadOpened(trade=_trade(7)))
        await trio.testing.wait_all_tasks_blocked()
        assert seen[7] == [close]
        # The router's accounting reaches the watcher in order, and its SpreadClosed stops it.
        filled = OrderFilled(
            client_order_id="sw-7-a-1",
            broker_order_id="1",
            trade_id=7,
            filled_quantity=1,
            avg_fill_price=Decimal("1.00"),
            at=NOW,
        )
        closed = SpreadClosed(
            trade_id=7, reason=CloseReason.MANUAL, realized_pnl_dollars=Decimal("50"), at=NOW
        )
        await events_send.send(closed)
        await events_send.send(filled)
        await trio.testing.wait_all_tasks_blocked()
        assert running == set()
        assert seen[7] == [close, closed]
        nursery.cancel_scope.cancel()
