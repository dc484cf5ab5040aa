"""System test: on a half day (XNYS closes at 13:00) the expiration-day exit moves to before the
early close (issue 7, "Must show").

The simulator and the whole engine run over real HTTP and WebSockets on a fresh embedded
database, on the real clock. Both sides use the New York calendar of ``engine.calendar``; the
default plan's 15:50 cutoff (ten minutes before a regular close) becomes 12:50.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import trio

from tests.system.live import live_engine, load, sim_orders, wait_for

pytestmark = pytest.mark.system

BUDGET = 90.0  # real seconds, start-up included: generous, the machine is shared
NY = ZoneInfo("America/New_York")
CUTOFF = dt.datetime(2026, 11, 27, 12, 50, tzinfo=NY)
EARLY_CLOSE = dt.datetime(2026, 11, 27, 13, 0, tzinfo=NY)


async def test_an_expiring_spread_is_closed_from_12_50_on_a_half_day() -> None:
    scenario = load("half_day_expiration.toml")
    with trio.fail_after(BUDGET):
        async with live_engine(scenario) as live:
            (trade_id,) = live.trade_ids

            async def closed() -> bool:
                return (await live.trade(trade_id))["status"] == "CLOSED"

            # 13 market minutes after the start is 26 s real at 30x: the trade must be closed
            # well before that, or the cutoff did not move.
            await wait_for(closed, timeout=40, what="the trade to close")
            trade = await live.trade(trade_id)
            decisions = await live.db.fetch(
                "SELECT decided_at, rule, inputs FROM decisions"
                " WHERE trade_id = $1 AND kind IN ('EXIT', 'PARTIAL_EXIT') ORDER BY decided_at",
                trade_id,
            )
            orders = sim_orders(live.sim)

    # Every exit was decided by the expiration-day rule, the first at 12:50 (promptly, not by
    # luck near 13:00), all before the early close.
    assert decisions and {d["rule"] for d in decisions} == {"expiration_day"}, decisions
    first = decisions[0]["decided_at"]
    assert CUTOFF <= first < CUTOFF + dt.timedelta(minutes=1), first
    assert all(d["decided_at"] < EARLY_CLOSE for d in decisions)
    # The closing orders reached the broker before the early close, one after another (a
    # limit the market walked away from is cancelled a step after its cap and decided again),
    # and together closed both spreads.
    assert orders and all(CUTOFF <= o.create_date < EARLY_CLOSE for o in orders)
    assert all(o.status in {"filled", "canceled"} for o in orders), orders
    assert sum(o.exec_quantity for o in orders) == 2
    assert trade["close_reason"] == "EXPIRATION_DAY" and trade["quantity"] == 0


async def test_after_the_early_close_no_exit_is_sent() -> None:
    # The same spread, the engine started at 13:05: the cutoff has passed, but a day order sent
    # now would only expire. Nothing is sent; the exit waits for the next session.
    scenario = load("half_day_expiration.toml", start=dt.datetime(2026, 11, 27, 13, 5))
    with trio.fail_after(BUDGET):
        async with live_engine(scenario) as live:
            (trade_id,) = live.trade_ids
            await wait_for(
                lambda: live.engine.fanout.statistics().events_by_kind.get("quote", 0) > 100,
                timeout=20,
                what="quotes to reach the watcher",
            )
            await wait_for(
                lambda: live.sim.clock.now() >= EARLY_CLOSE + dt.timedelta(minutes=10),
                timeout=30,
                what="13:10",
            )
            trade = await live.trade(trade_id)
            decisions = await live.db.fetch(
                "SELECT kind FROM decisions WHERE trade_id = $1 AND kind <> 'SNAPSHOT'", trade_id
            )
            orders = sim_orders(live.sim)

    assert orders == []
    assert decisions == []
    assert trade["status"] == "OPEN" and trade["quantity"] == 2
