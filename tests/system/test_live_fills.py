"""System tests: exit orders through partial fills, rejections, expiry, lost events, cancel races
and ambiguous sends (issue 5, "Must show").

Each test runs the simulator and the whole engine over real HTTP and WebSockets on a fresh
embedded database, on the real clock (see :mod:`tests.system.live`), and asserts on both the
**simulator's** record of what it received (orders, legs, modifications, fills, statuses) and
the engine's database (orders, fills, trades). Scenario comments say how each market is shaped
so the engine's decisions fall where the test needs them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import trio

from engine.messages import CancelOrder, RepriceOrder
from sim.broker import Order
from sim.scenario import HttpErrors
from tests.system.live import Live, live_engine, load, sim_orders, wait_for

pytestmark = pytest.mark.system

BUDGET = 60.0  # real seconds per test, start-up included: generous, the machine is shared
ENTRY = Decimal("1.30")  # the scenarios' entry credit per spread
SHORT, LONG = "SPY251219P00670000", "SPY251219P00665000"
CLOSING_LEGS = {(SHORT, "buy_to_close"), (LONG, "sell_to_close")}


# -- helpers ------------------------------------------------------------------------------------


async def _status(live: Live, trade_id: int) -> str:
    row = await live.trade(trade_id)
    return str(row["status"])


async def _wait_closed(live: Live, trade_id: int, within: float = 45) -> None:
    async def closed() -> bool:
        return await _status(live, trade_id) == "CLOSED"

    await wait_for(closed, timeout=within, what="the trade to close")


async def _snapshot(live: Live, trade_id: int) -> tuple[str, tuple[str, ...]]:
    """The trade's status and its orders' statuses, read in one query (one instant)."""
    row = await live.db.fetchrow(
        """
        SELECT t.status, coalesce(
            (SELECT array_agg(o.status ORDER BY o.order_id) FROM orders o
             WHERE o.trade_id = t.trade_id), '{}') AS orders
        FROM trades t WHERE t.trade_id = $1
        """,
        trade_id,
    )
    assert row is not None
    return str(row["status"]), tuple(row["orders"])


async def _record_snapshots(
    live: Live, trade_id: int, into: list[tuple[str, tuple[str, ...]]]
) -> None:
    """Sample the trade and its orders every 20 ms until cancelled, keeping each change."""
    while True:
        snapshot = await _snapshot(live, trade_id)
        if not into or into[-1] != snapshot:
            into.append(snapshot)
        await trio.sleep(0.02)


def _final_at(order: Order) -> Any:
    """When a final order became final (the broker stamps every status change)."""
    assert order.is_final, (order.id, order.tag, order.status)
    return order.transaction_date


def _assert_never_two_working(orders: list[Order]) -> None:
    """Each order was final before the next one was created: never two exits at once."""
    for earlier, later in itertools.pairwise(orders):
        assert _final_at(earlier) <= later.create_date, (
            f"order {earlier.id} ({earlier.tag}, {earlier.status} at {_final_at(earlier)}) "
            f"overlaps order {later.id} ({later.tag}) created {later.create_date}"
        )


def _engine_log(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The engine's JSON log records written so far (stdout, one object per line)."""
    records = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def _events(records: list[dict[str, Any]], event: str, **fields: Any) -> Iterator[dict[str, Any]]:
    for record in records:
        if record["event"] == event and all(record.get(k) == v for k, v in fields.items()):
            yield record


async def _fills(live: Live, order_id: int) -> list[Any]:
    return await live.db.fetch("SELECT * FROM fills WHERE order_id = $1 ORDER BY fill_id", order_id)


# -- 1. partial fills ---------------------------------------------------------------------------


async def test_partial_fills_in_two_lots_with_a_reprice_between(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_a_partial.toml")) as live:
            (trade_id,) = live.trade_ids
            await _wait_closed(live, trade_id)
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            db_orders = await live.orders(trade_id)
            fills = await _fills(live, db_orders[0]["order_id"])
    log = _engine_log(capsys)

    # One order at the broker, for both spreads, filled one spread at a time.
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.quantity == 2 and order.status == "filled" and order.exec_quantity == 2
    assert {(leg.option_symbol, leg.side, leg.quantity) for leg in order.legs} == {
        (SHORT, "buy_to_close", 2),
        (LONG, "sell_to_close", 2),
    }
    first, second = order.fills  # two lots, nothing more
    assert (first.quantity, second.quantity) == (1, 1)
    # The limit was walked between the lots: the remainder re-priced on the same order (at the
    # broker the order still says 2 spreads, 1 executed), nothing re-sent.
    between = [m for m in order.modifications if first.at < m.at < second.at]
    assert between, (first.at, second.at, [m.at for m in order.modifications])
    prices = [m.price or Decimal(0) for m in order.modifications]
    assert prices == sorted(prices) and len(set(prices)) == len(prices)
    # The engine's own account of those re-prices: after the first lot, the remainder of 1.
    repriced = list(_events(log, "order_router.repriced", client_order_id=order.tag))
    assert [Decimal(r["limit_price"]) for r in repriced] == prices
    remainder = [Decimal(r["limit_price"]) for r in repriced if r["remaining_quantity"] == 1]
    assert remainder and set(remainder) <= {m.price for m in between}, (remainder, between)

    # The engine's record: the same one order, both lots as fill rows, the trade closed with
    # the P&L of each lot at its own price.
    (db_order,) = db_orders
    assert db_order["client_order_id"] == order.tag
    assert db_order["broker_order_id"] == str(order.id)
    assert db_order["status"] == "FILLED" and db_order["filled_quantity"] == 2
    assert db_order["attempts"] == 1 + len(prices)
    assert sorted((f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills) == sorted(
        [(SHORT, "buy_to_close", 1), (LONG, "sell_to_close", 1)] * 2
    )
    lots_pnl = [(ENTRY - lot.price) * lot.quantity * 100 for lot in order.fills]
    assert trade["status"] == "CLOSED" and trade["quantity"] == 0
    assert trade["close_reason"] == "STOP_LOSS"
    assert first.price != second.price  # the rebound went on between the lots
    assert trade["realized_pnl"] == sum(lots_pnl, Decimal(0))


# -- 2. rejections ------------------------------------------------------------------------------


async def test_a_rejected_exit_puts_the_trade_back_and_is_decided_again() -> None:
    snapshots: list[tuple[str, tuple[str, ...]]] = []
    with trio.fail_after(BUDGET):
        # 30 market seconds between a failed exit and the next decision: 1 s real at 30x.
        async with live_engine(load("live_a_reject.toml"), exit_retry_seconds=30) as live:
            (trade_id,) = live.trade_ids
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_record_snapshots, live, trade_id, snapshots)
                await _wait_closed(live, trade_id)
                nursery.cancel_scope.cancel()
            snapshots.append(await _snapshot(live, trade_id))  # the recorder may lag a sample
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            db_orders = await live.orders(trade_id)
            fills = await _fills(live, db_orders[-1]["order_id"])

    # The broker saw three orders, one after the other: refused at placement, accepted then
    # rejected, filled. Each was final before the next was created.
    assert [o.status for o in orders] == ["rejected", "rejected", "filled"], orders
    refused, rejected, filled = orders
    assert refused.id is None and "injected at placement" in (refused.reason_description or "")
    assert rejected.id is not None and rejected.reason_description == (
        "Order rejected: injected after acceptance"
    )
    _assert_never_two_working(orders)
    tags = [o.tag for o in orders]
    assert all(tags) and len(set(tags)) == 3, tags  # each a new decision's client order id
    for order in orders:
        assert {(leg.option_symbol, leg.side) for leg in order.legs} == CLOSING_LEGS
        assert order.quantity == 2
    assert filled.exec_quantity == 2

    # The engine's record matches, order for order.
    assert [r["client_order_id"] for r in db_orders] == tags
    assert [r["status"] for r in db_orders] == ["REJECTED", "REJECTED", "FILLED"]
    assert db_orders[0]["broker_order_id"] is None
    assert "injected at placement" in db_orders[0]["status_reason"]
    assert db_orders[1]["broker_order_id"] == str(rejected.id)
    assert db_orders[2]["broker_order_id"] == str(filled.id)
    assert [r["filled_quantity"] for r in db_orders] == [0, 0, 2]
    assert {(f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills} == {
        (SHORT, "buy_to_close", 2),
        (LONG, "sell_to_close", 2),
    }
    # After each rejection the trade was OPEN again (legs still held) before the next decision.
    assert ("OPEN", ("REJECTED",)) in snapshots, snapshots
    assert ("OPEN", ("REJECTED", "REJECTED")) in snapshots, snapshots
    assert snapshots[-1] == ("CLOSED", ("REJECTED", "REJECTED", "FILLED"))
    assert trade["quantity"] == 0 and trade["close_reason"] == "STOP_LOSS"
    assert trade["realized_pnl"] == (ENTRY - filled.avg_fill_price) * 2 * 100


# -- 3. expiry ----------------------------------------------------------------------------------


async def test_an_exit_expired_at_the_close_puts_the_trade_back() -> None:
    snapshots: list[tuple[str, tuple[str, ...]]] = []
    scenario = load("live_a_expire.toml")
    with trio.fail_after(BUDGET):
        async with live_engine(scenario, exit_retry_seconds=60) as live:
            (trade_id,) = live.trade_ids
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_record_snapshots, live, trade_id, snapshots)

                async def first_expired() -> bool:
                    return (await _snapshot(live, trade_id))[1][:1] == ("EXPIRED",)

                await wait_for(first_expired, timeout=30, what="the first exit order to expire")
                # Then watch what the engine does after the close for two retry periods, and
                # stop at a moment when no order works (an order sent after the close lives
                # two broker ticks).
                await wait_for(
                    lambda: live.sim.clock.now().time() >= dt.time(16, 2, 30),
                    timeout=20,
                    what="16:02:30",
                )

                async def quiet() -> bool:
                    status, _ = await _snapshot(live, trade_id)
                    return status == "OPEN" and not live.sim.broker.open_orders()

                await wait_for(quiet, timeout=10, what="no exit order working")
                nursery.cancel_scope.cancel()
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            db_orders = await live.orders(trade_id)
            held = {h.symbol: h.quantity for h in live.sim.broker.holdings.values()}
            fill_rows = await live.db.fetch("SELECT * FROM fills")

    close = dt.datetime.combine(scenario.start_time.date(), dt.time(16), scenario.start_time.tzinfo)
    first, *after_close = orders
    # The exit went in before the close at the mark, was never walked (a one-rung ladder) and
    # the broker expired it at 16:00 with nothing filled.
    assert first.create_date < close <= first.transaction_date
    assert first.status == "expired" and first.exec_quantity == 0 and not first.modifications
    assert db_orders[0]["client_order_id"] == first.tag
    assert db_orders[0]["status"] == "EXPIRED" and db_orders[0]["filled_quantity"] == 0
    # The trade went back to OPEN with both spreads still held.
    assert ("OPEN", ("EXPIRED",)) in snapshots, snapshots
    assert trade["status"] == "OPEN" and trade["quantity"] == 2 and trade["realized_pnl"] is None
    assert held == {SHORT: -2, LONG: 2}
    # After the close the engine sends nothing (the market calendar: a day order would only
    # expire); the engine's orders are the broker's, one for one.
    assert after_close == [], [(o.tag, o.create_date, o.status) for o in after_close]
    _assert_never_two_working(orders)
    assert [r["client_order_id"] for r in db_orders] == [o.tag for o in orders]
    assert len({o.tag for o in orders}) == len(orders)
    assert {r["status"] for r in db_orders} == {"EXPIRED"}
    assert not fill_rows


# -- 4. lost account events ---------------------------------------------------------------------


async def test_a_fill_is_recorded_with_the_account_events_lost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_a_lost_events.toml")) as live:
            (trade_id,) = live.trade_ids

            def filled_at_broker() -> bool:
                return any(o.status == "filled" for o in sim_orders(live.sim))

            await wait_for(filled_at_broker, timeout=40, what="the broker to fill the exit")
            filled_real = trio.current_time()
            await _wait_closed(live, trade_id, within=15)
            recorded_after = trio.current_time() - filled_real
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            db_orders = await live.orders(trade_id)
            fills = await _fills(live, db_orders[0]["order_id"])
            lost = live.sim.simulator.account_hub.lost
            fault_kinds = [f.kind for f in live.sim.faults.log]
    log = _engine_log(capsys)

    # Every order event the broker published was lost (and the socket dropped on top), yet
    # the engine recorded the fill from its polling of the broker's orders (every 2 s real),
    # not from the ladder's next step (3 s real later: a cancel that would find it filled).
    assert fault_kinds == ["lose_account_events", "drop_account_socket"]
    assert lost > 0
    (order,) = orders
    assert recorded_after < 2.9, f"the fill took {recorded_after:.2f} s real to be recorded"
    for probe in ("order_router.cancel_too_late", "order_router.reprice_too_late"):
        assert not list(_events(log, probe, client_order_id=order.tag)), probe
    assert order.status == "filled" and order.exec_quantity == 2
    (db_order,) = db_orders
    assert db_order["client_order_id"] == order.tag
    assert db_order["status"] == "FILLED" and db_order["filled_quantity"] == 2
    assert db_order["avg_fill_price"] == order.avg_fill_price
    assert {(f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills} == {
        (SHORT, "buy_to_close", 2),
        (LONG, "sell_to_close", 2),
    }
    assert trade["status"] == "CLOSED" and trade["quantity"] == 0
    assert trade["realized_pnl"] == (ENTRY - order.avg_fill_price) * 2 * 100


# -- 5. a cancel racing a fill ------------------------------------------------------------------


async def test_a_cancel_that_races_a_fill_finds_it_filled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_a_cancel_race.toml")) as live:
            (trade_id,) = live.trade_ids
            await wait_for(
                lambda: any(o.status == "open" for o in sim_orders(live.sim)),
                timeout=30,
                what="the exit order to work at the broker",
            )
            # Blind the engine's polling (account events are lost all along): from here on it
            # can only learn of the fill by reading the order itself.
            live.sim.faults.inject(
                HttpErrors(
                    status=500,
                    path=f"/v1/accounts/{live.sim.account_id}/orders",
                    method="GET",
                    count=10_000,
                )
            )
            (order,) = sim_orders(live.sim)
            await wait_for(
                lambda: order.status == "filled", timeout=20, what="the fill", every=0.005
            )
            (before,) = await live.orders(trade_id)
            await live.engine.commands.send(
                CancelOrder(client_order_id=order.tag or "", trade_id=trade_id, reason="test")
            )
            await _wait_closed(live, trade_id, within=15)
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            (db_order,) = await live.orders(trade_id)
            fills = await _fills(live, db_order["order_id"])
    log = _engine_log(capsys)

    # The race was real: the broker had filled the order and the engine had not read it when
    # the cancel went out.
    assert before["status"] in {"PENDING", "OPEN"} and before["filled_quantity"] == 0
    # The broker refused the cancel (already final); the engine read the order and kept the
    # fill. One order at the broker, nothing re-sent, nothing cancelled.
    assert orders == [order] and order.status == "filled" and order.exec_quantity == 2
    assert order.reason_description is None  # a successful cancel would have set it
    too_late = list(_events(log, "order_router.cancel_too_late", client_order_id=order.tag))
    assert [r["state"] for r in too_late] == ["filled"], too_late
    assert not list(_events(log, "order_router.cancel_sent", client_order_id=order.tag))
    assert db_order["client_order_id"] == order.tag
    assert db_order["status"] == "FILLED" and db_order["filled_quantity"] == 2
    assert db_order["avg_fill_price"] == order.avg_fill_price
    assert {(f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills} == {
        (SHORT, "buy_to_close", 2),
        (LONG, "sell_to_close", 2),
    }
    assert trade["status"] == "CLOSED" and trade["quantity"] == 0
    assert trade["close_reason"] == "STOP_LOSS"
    assert trade["realized_pnl"] == (ENTRY - order.avg_fill_price) * 2 * 100


# -- 6. an ambiguous send -----------------------------------------------------------------------


async def test_an_ambiguous_send_is_found_by_its_tag_not_resent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_a_ambiguous.toml")) as live:
            (trade_id,) = live.trade_ids
            await _wait_closed(live, trade_id)
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            (db_order,) = await live.orders(trade_id)
            fills = await _fills(live, db_order["order_id"])
    log = _engine_log(capsys)

    # The broker took the order and answered 500; the engine found it by its tag and followed
    # it to its fill. Exactly one order reached the broker: nothing was sent again.
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.status == "filled" and order.exec_quantity == 2
    cid = db_order["client_order_id"]
    assert order.tag == cid
    assert [r["error"] for r in _events(log, "order_router.send_ambiguous", client_order_id=cid)]
    found = list(_events(log, "order_router.found_by_tag", client_order_id=cid))
    assert [r["broker_order_id"] for r in found] == [str(order.id)]
    assert db_order["broker_order_id"] == str(order.id)
    assert db_order["status"] == "FILLED" and db_order["filled_quantity"] == 2
    assert db_order["attempts"] == 1 + len(order.modifications)  # one send, then re-prices
    assert {(f["leg_symbol"], f["leg_side"], f["quantity"]) for f in fills} == {
        (SHORT, "buy_to_close", 2),
        (LONG, "sell_to_close", 2),
    }
    assert trade["status"] == "CLOSED" and trade["quantity"] == 0
    assert trade["realized_pnl"] == (ENTRY - order.avg_fill_price) * 2 * 100


async def test_an_operator_reprice_moves_the_working_order() -> None:
    # The expire scenario's order stays at the mark (a one-rung ladder): only a RepriceOrder
    # command can move it, and it moves the same order at the broker (no second order).
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_a_expire.toml"), exit_retry_seconds=60) as live:
            (trade_id,) = live.trade_ids

            def working() -> bool:
                return any(o.status == "open" for o in sim_orders(live.sim))

            await wait_for(working, timeout=30, what="an exit order working at the broker")
            (order,) = sim_orders(live.sim)
            assert order.price is not None
            target = order.price + Decimal("0.01")
            (row,) = await live.orders(trade_id)
            await live.engine.commands.send(
                RepriceOrder(
                    client_order_id=row["client_order_id"], trade_id=trade_id, limit_price=target
                )
            )

            async def moved() -> bool:
                (now,) = await live.orders(trade_id)
                return bool(now["limit_price"] == target)

            await wait_for(moved, timeout=10, what="the order's recorded limit to move")
            (after,) = await live.orders(trade_id)

    (order,) = [o for o in sim_orders(live.sim) if o.tag == row["client_order_id"]]
    assert [m.price for m in order.modifications] == [target]
    assert after["attempts"] == 2  # the send and this one modification
