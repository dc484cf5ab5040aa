"""System tests: the engine sends closing orders to the simulator (issue 5, "Must show").

Each test runs the simulator and the whole engine over real HTTP and WebSockets on a fresh
embedded database, on the real clock, and asserts on the **simulator's** record of what it
received (orders, their legs, modifications and fills) as well as on the engine's database.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from tests.system.live import live_engine, load, sim_orders, wait_for

pytestmark = pytest.mark.system

BUDGET = 90.0  # real seconds per test, start-up included: generous, the machine is shared


async def test_a_stop_becomes_one_debit_order_walked_and_filled() -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_stop.toml")) as live:
            (trade_id,) = live.trade_ids

            async def closed() -> bool:
                row = await live.trade(trade_id)
                return row["status"] == "CLOSED"

            await wait_for(closed, timeout=60, what="the trade to close")
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            db_orders = await live.orders(trade_id)
            fills = await live.db.fetch("SELECT * FROM fills ORDER BY fill_id")

    # Exactly one order reached the broker: multileg, debit, closing both legs, 2 spreads.
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.order_class == "multileg" and order.type == "debit"
    assert order.duration == "day"
    assert {(leg.option_symbol, leg.side, leg.quantity) for leg in order.legs} == {
        ("SPY251219P00670000", "buy_to_close", 2),
        ("SPY251219P00665000", "sell_to_close", 2),
    }
    assert order.tag is not None and order.tag.startswith(f"sw-{trade_id}-")
    assert order.status == "filled" and order.exec_quantity == 2
    # Walked toward the natural price: every modification raised the limit.
    prices = [m.price for m in order.modifications]
    assert prices, "the limit was never walked"
    assert prices == sorted(prices) and len(set(prices)) == len(prices)
    # The engine's record agrees with the broker's, and the trade is closed with its P&L.
    (db_order,) = db_orders
    assert db_order["client_order_id"] == order.tag
    assert db_order["broker_order_id"] == str(order.id)
    assert db_order["status"] == "FILLED" and db_order["filled_quantity"] == 2
    assert db_order["attempts"] == 1 + len(prices)
    assert trade["quantity"] == 0 and trade["close_reason"] == "STOP_LOSS"
    fill_price = order.avg_fill_price
    assert db_order["avg_fill_price"] == fill_price
    # Entry credit 1.30, closed for a debit of fill_price per spread, 2 spreads of 100 shares.
    assert trade["realized_pnl"] == (Decimal("1.30") - fill_price) * 2 * 100
    assert {(f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills} == {
        ("SPY251219P00670000", "buy_to_close", 2),
        ("SPY251219P00665000", "sell_to_close", 2),
    }
    # Positions are gone at the broker.
    assert not any(
        h.quantity for h in live.sim.broker.holdings.values() if h.symbol.startswith("SPY2512")
    )


async def test_paper_trading_fills_against_the_live_quotes_and_sends_nothing() -> None:
    # broker.kind = paper: the simulator is only the quote source (and the starting positions);
    # the paper book takes the order and fills it by the same rules against those quotes.
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_stop.toml"), broker_kind="paper") as live:
            (trade_id,) = live.trade_ids

            async def closed() -> bool:
                row = await live.trade(trade_id)
                return row["status"] == "CLOSED"

            await wait_for(closed, timeout=60, what="the paper trade to close")
            trade = await live.trade(trade_id)
            (db_order,) = await live.orders(trade_id)

    assert sim_orders(live.sim) == []  # nothing reached the real (simulated) broker
    assert db_order["status"] == "FILLED" and db_order["broker_order_id"].startswith("paper-")
    assert trade["close_reason"] == "STOP_LOSS"
    assert trade["realized_pnl"] == (Decimal("1.30") - db_order["avg_fill_price"]) * 2 * 100
    # The simulator's account still holds the spread: only the paper book closed it.
    assert live.sim.broker.holdings["SPY251219P00670000"].quantity == -2
