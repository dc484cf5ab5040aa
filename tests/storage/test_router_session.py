"""OrderRouter and the New York session, on a real PostgreSQL (the router records orders there)
with the in-process paper broker: outside the session an exit intent is declined as
``market_closed`` (logged, audited, reported to the watcher) and nothing reaches the broker;
inside it the same intent becomes an order."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import trio

from actors import order_router
from engine.brokers import BrokerPosition
from engine.brokers.paper import PaperBroker
from engine.calendar import MarketCalendar
from engine.clock import TrioMarketClock
from engine.domain.spread import Leg, Spread
from engine.messages import (
    AuditRecord,
    EngineEventRecord,
    ExitAction,
    ExitIntent,
    ExitIntentDeclined,
    OrderAccepted,
    OrderSubmitted,
    RefreshPositions,
    RouterCommand,
    RouterEvent,
    TradeOrigin,
)
from storage import Database, apply_migrations
from storage.orders import PgOrderStore
from storage.trades import PgTradeStore

pytestmark = pytest.mark.storage

NY = ZoneInfo("America/New_York")
ACCOUNT = "VA1"
SHORT, LONG = "SPY261127P00650000", "SPY261127P00645000"


class _Audit:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def submit(self, record: AuditRecord) -> None:
        self.records.append(record)


def _intent(trade_id: int, intent_id: str, at: dt.datetime) -> ExitIntent:
    return ExitIntent(
        intent_id=intent_id,
        trade_id=trade_id,
        action=ExitAction.FULL,
        quantity=2,
        rule="expiration_day",
        rules_fired=("expiration_day",),
        mark_close_price=Decimal("2.40"),
        natural_close_price=Decimal("2.50"),
        decided_at=at,
        dry_run=False,
    )


async def test_an_exit_outside_the_session_is_declined_and_nothing_is_sent(db: Database) -> None:
    await apply_migrations(db)
    trades = PgTradeStore(db)
    spread = Spread.from_legs([Leg.from_position(SHORT, -2), Leg.from_position(LONG, 2)])
    trade = await trades.insert_trade(
        account_id=ACCOUNT,
        spread=spread,
        entry_price=Decimal("2.50"),
        origin=TradeOrigin.ENGINE,
        managed=True,
    )
    after_close = dt.datetime(2026, 11, 27, 13, 5, tzinfo=NY)  # a half day: closed at 13:00
    clock = TrioMarketClock(after_close)
    paper = PaperBroker(
        account_id=ACCOUNT,
        positions=[
            BrokerPosition(symbol=SHORT, quantity=-2, cost_basis=Decimal("-600")),
            BrokerPosition(symbol=LONG, quantity=2, cost_basis=Decimal("100")),
        ],
        clock=clock.now,
    )
    audit = _Audit()
    commands_send, commands_recv = trio.open_memory_channel[RouterCommand](4)
    events_send, events_recv = trio.open_memory_channel[RouterEvent](16)
    refresh_send, refresh_recv = trio.open_memory_channel[RefreshPositions](16)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: order_router.run(
                    inbox=commands_recv,
                    events=events_send,
                    refresh=refresh_send,
                    broker=paper,
                    orders=PgOrderStore(db),
                    trades=trades,
                    audit=audit,
                    account_id=ACCOUNT,
                    clock=clock,
                    calendar=MarketCalendar.load(after_close),
                    task_status=task_status,
                )
            )
            await commands_send.send(_intent(trade.trade_id, "closed", after_close))
            declined = await events_recv.receive()
            assert await paper.get_orders() == []

            # In the session (before the early close) the same intent becomes an order.
            clock.resync(dt.datetime(2026, 11, 27, 12, 55, tzinfo=NY))
            await commands_send.send(_intent(trade.trade_id, "open", clock.now()))
            seen: list[RouterEvent] = [await events_recv.receive()]
            while not isinstance(seen[-1], OrderAccepted | ExitIntentDeclined):
                seen.append(await events_recv.receive())
            placed = await paper.get_orders()
            nursery.cancel_scope.cancel()
    refresh_recv.close()

    assert isinstance(declined, ExitIntentDeclined) and declined.intent_id == "closed"
    assert declined.reason.startswith(order_router.MARKET_CLOSED)
    assert "opens 2026-11-30 09:30 ET" in declined.reason  # after Thanksgiving and a weekend
    (event,) = [
        r
        for r in audit.records
        if isinstance(r, EngineEventRecord) and r.kind == "order_router.market_closed"
    ]
    assert event.trade_id == trade.trade_id
    submitted = seen[0]
    assert isinstance(submitted, OrderSubmitted), seen
    assert isinstance(seen[-1], OrderAccepted), seen
    assert len(placed) == 1 and placed[0].client_order_id == submitted.client_order_id
