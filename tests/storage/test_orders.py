"""PgOrderStore on a real PostgreSQL: an exit order's record, its fills and the trade accounting
they drive, each read applied in one transaction."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.brokers import BrokerOrder, BrokerOrderLeg, BrokerOrderStatus
from engine.domain.orders import ExitOrder, OrderClass
from engine.domain.spread import Leg, Spread
from engine.messages import ExitAction, OrderLeg, OrderLegSide, OrderType, TradeOrigin
from storage import Database, apply_migrations
from storage.orders import PgOrderStore, StoredOrder
from storage.trades import PgTradeStore

pytestmark = pytest.mark.storage

SP500 = "SPY240621P00500000"
LP495 = "SPY240621P00495000"
BTC, STC = OrderLegSide.BUY_TO_CLOSE, OrderLegSide.SELL_TO_CLOSE


def bull_put(quantity: int) -> Spread:
    return Spread.from_legs(
        [Leg.from_position(SP500, -quantity), Leg.from_position(LP495, quantity)]
    )


def exit_order(quantity: int, limit: str = "1.00") -> ExitOrder:
    return ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT,
        quantity=quantity,
        limit_price=Decimal(limit),
        legs=(
            OrderLeg(option_symbol=SP500, side=BTC, quantity=quantity),
            OrderLeg(option_symbol=LP495, side=STC, quantity=quantity),
        ),
    )


def read(
    status: BrokerOrderStatus,
    quantity: int,
    filled: int,
    *,
    short_avg: str | None = None,
    long_avg: str | None = None,
    net: str | None = None,
    reason: str | None = None,
    broker_order_id: str = "1001",
) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=broker_order_id,
        client_order_id="sw-1-i-1",
        status=status,
        multileg=True,
        order_type=OrderType.DEBIT,
        underlying="SPY",
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=quantity - filled,
        avg_fill_price=None if net is None else Decimal(net),
        limit_price=Decimal("1.00"),
        legs=(
            BrokerOrderLeg(
                option_symbol=SP500,
                side=BTC,
                quantity=quantity,
                filled_quantity=filled,
                avg_fill_price=None if short_avg is None else Decimal(short_avg),
            ),
            BrokerOrderLeg(
                option_symbol=LP495,
                side=STC,
                quantity=quantity,
                filled_quantity=filled,
                avg_fill_price=None if long_avg is None else Decimal(long_avg),
            ),
        ),
        reason=reason,
    )


async def _setup(db: Database, quantity: int = 2) -> tuple[PgOrderStore, int]:
    await apply_migrations(db)
    trade = await PgTradeStore(db).insert_trade(
        account_id="VA1",
        spread=bull_put(quantity),
        entry_price=Decimal("0.45"),
        origin=TradeOrigin.ENGINE,
        managed=True,
    )
    return PgOrderStore(db), trade.trade_id


async def _record(
    store: PgOrderStore, trade_id: int, quantity: int, cid: str = "sw-1-i-1"
) -> StoredOrder:
    stored = await store.record_exit_order(
        client_order_id=cid,
        account_id="VA1",
        trade_id=trade_id,
        order=exit_order(quantity),
        action=ExitAction.FULL if quantity == 2 else ExitAction.PARTIAL,
        rule="stop_loss",
    )
    assert stored is not None
    return stored


async def test_recording_moves_the_trade_to_closing_and_refuses_a_second_exit(
    db: Database,
) -> None:
    store, trade_id = await _setup(db)
    stored = await _record(store, trade_id, 2)
    assert stored.status == "NEW" and stored.quantity == 2
    assert await db.fetchval("SELECT status FROM trades WHERE trade_id = $1", trade_id) == (
        "CLOSING"
    )
    # A second exit while the first is not final: refused, nothing written.
    second = await store.record_exit_order(
        client_order_id="sw-1-j-1",
        account_id="VA1",
        trade_id=trade_id,
        order=exit_order(2),
        action=ExitAction.FULL,
        rule="profit_target",
    )
    assert second is None
    assert await db.fetchval("SELECT count(*) FROM orders") == 1


async def test_a_full_fill_closes_the_trade_with_its_pnl_and_the_deciding_rule(
    db: Database,
) -> None:
    store, trade_id = await _setup(db)
    stored = await _record(store, trade_id, 2)
    await store.mark_submitted(stored.order_id)
    await store.mark_accepted(stored.order_id, "1001")
    filled = read(BrokerOrderStatus.FILLED, 2, 2, short_avg="1.60", long_avg="0.45", net="1.15")
    applied = await store.apply_read(stored.order_id, filled)
    assert applied.progress.newly_filled == 2 and applied.progress.is_final
    assert applied.trade_status == "CLOSED" and applied.trade_quantity == 0
    # Entry credit 0.45, closed for a 1.15 debit: (0.45 - 1.15) x 2 x 100.
    assert applied.realized_pnl == Decimal("-140.00")
    trade = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
    assert trade["status"] == "CLOSED" and trade["close_reason"] == "STOP_LOSS"
    assert trade["realized_pnl"] == Decimal("-140.00") and trade["closed_at"] is not None
    fills = await db.fetch("SELECT * FROM fills ORDER BY leg_symbol")
    assert [(f["leg_symbol"], f["leg_side"], f["quantity"], f["price"]) for f in fills] == [
        (LP495, "sell_to_close", 2, Decimal("0.4500")),
        (SP500, "buy_to_close", 2, Decimal("1.6000")),
    ]
    # The same read again (stream and polling both saw it): nothing changes, nothing doubles.
    again = await store.apply_read(stored.order_id, filled)
    assert again.fills == () and again.progress.newly_filled == 0
    assert await db.fetchval("SELECT count(*) FROM fills") == 2
    assert await db.fetchval("SELECT realized_pnl FROM trades") == Decimal("-140.00")


async def test_partial_fills_reduce_the_trade_then_a_cancel_reopens_it(db: Database) -> None:
    store, trade_id = await _setup(db, quantity=3)
    stored = await _record(store, trade_id, 2)  # a PARTIAL exit of 2 of 3
    await store.mark_accepted(stored.order_id, "1001")
    one = read(
        BrokerOrderStatus.PARTIALLY_FILLED, 2, 1, short_avg="1.50", long_avg="0.40", net="1.10"
    )
    applied = await store.apply_read(stored.order_id, one)
    assert applied.trade_quantity == 2 and applied.trade_status == "CLOSING"
    assert applied.trade_legs == bull_put(2).legs
    # A stale read (nothing filled yet) arriving late moves nothing backwards.
    stale = await store.apply_read(stored.order_id, read(BrokerOrderStatus.OPEN, 2, 0))
    assert stale.order.filled_quantity == 1 and stale.order.status == "PARTIALLY_FILLED"
    cancelled = read(
        BrokerOrderStatus.CANCELLED,
        2,
        1,
        short_avg="1.50",
        long_avg="0.40",
        net="1.10",
        reason="canceled by request",
    )
    applied = await store.apply_read(stored.order_id, cancelled)
    assert applied.progress.is_final and applied.order.status == "CANCELLED"
    # One spread closed: the trade holds 2 and is OPEN again; P&L counts the closed spread only.
    trade = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
    assert (trade["status"], trade["quantity"]) == ("OPEN", 2)
    assert trade["realized_pnl"] == Decimal("-65.00")  # (0.45 - 1.10) x 1 x 100
    assert trade["close_reason"] is None
    # The next exit of the rest closes it; P&L sums over both exits.
    nxt = await _record(store, trade_id, 2, cid="sw-1-k-1")
    done = read(
        BrokerOrderStatus.FILLED,
        2,
        2,
        short_avg="1.30",
        long_avg="0.30",
        net="1.00",
        broker_order_id="1002",
    )
    applied = await store.apply_read(nxt.order_id, done)
    assert applied.trade_status == "CLOSED"
    assert applied.realized_pnl == Decimal("-65.00") + Decimal("-110.00")


async def test_a_rejected_order_puts_the_trade_back_to_open(db: Database) -> None:
    store, trade_id = await _setup(db)
    stored = await _record(store, trade_id, 2)
    await store.mark_submitted(stored.order_id)
    applied = await store.end_unsent(stored.order_id, status="REJECTED", reason="no margin")
    assert applied.order.status == "REJECTED" and applied.trade_status == "OPEN"
    row = await db.fetchrow("SELECT * FROM orders WHERE order_id = $1", stored.order_id)
    assert row["status_reason"] == "no margin" and row["finalized_at"] is not None
    assert await store.unfinished_orders("VA1") == []


async def test_unfinished_orders_are_found_after_a_restart(db: Database) -> None:
    store, trade_id = await _setup(db)
    stored = await _record(store, trade_id, 2)
    await store.mark_submitted(stored.order_id)
    (found,) = await PgOrderStore(db).unfinished_orders("VA1")
    assert found.client_order_id == "sw-1-i-1" and found.status == "SUBMITTED"
    assert found.attempts == 1 and found.broker_order_id is None
