"""The simulator keeps the engine's New York calendar: a half day's 13:00 close expires day
orders and options, its clock and calendar endpoints show the early close, holidays are closed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import trio

from sim.broker import LegRequest, OrderRequest
from sim.scenario import parse_scenario
from sim.state import Simulator
from tests.sim.helpers import api, scenario_text, start_sim

NY = ZoneInfo("America/New_York")
PUT_650 = "SPY261127P00650000"
PUT_645 = "SPY261127P00645000"


def half_day(start: str = "12:58:00") -> str:
    """The base scenario moved to the day after Thanksgiving 2026 (XNYS closes at 13:00), with
    the spread expiring that day, SPY between its strikes (so it is worth about two dollars)."""
    text = scenario_text(points='{ at = "0s", price = 648.0 }')
    text = text.replace("2025-12-09T09:45:00", f"2026-11-27T{start}")
    text = text.replace("2025-12-19", "2026-11-27").replace("251219", "261127")
    return text.replace('duration = "30m"', 'duration = "2h"')


async def test_an_option_expiring_on_a_half_day_expires_at_13_00() -> None:
    simulator = Simulator(parse_scenario(half_day()))
    contract = simulator.market.contract(PUT_650)
    assert contract is not None
    assert contract.expires_at == dt.datetime(2026, 11, 27, 13, tzinfo=NY)


async def test_a_day_order_expires_at_the_early_close(autojump_clock: object) -> None:
    simulator = Simulator(parse_scenario(half_day()))
    request = OrderRequest(
        order_class="multileg",
        symbol="SPY",
        type="debit",
        duration="day",
        price=Decimal("0.01"),  # far below the natural: it never fills
        legs=(
            LegRequest(PUT_650, "buy_to_close", 2),
            LegRequest(PUT_645, "sell_to_close", 2),
        ),
    )
    placement = simulator.broker.place(request)
    assert placement.order_id is not None
    order = simulator.broker.orders[placement.order_id]
    statuses: list[tuple[dt.datetime, str]] = []
    while simulator.clock.now() < dt.datetime(2026, 11, 27, 13, 0, 30, tzinfo=NY):
        simulator.tick()
        statuses.append((simulator.clock.now(), order.status))
        await trio.sleep(1)
    before = [status for at, status in statuses if at < dt.datetime(2026, 11, 27, 13, tzinfo=NY)]
    after = [status for at, status in statuses if at >= dt.datetime(2026, 11, 27, 13, tzinfo=NY)]
    assert before and set(before) == {"open"}
    assert after and set(after) == {"expired"}


async def _clock_and_day(text: str, day: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, text)
            async with api(handle) as client:
                clock = (await client.get("/markets/clock")).json()["clock"]
                year, month = day[:4], day[5:7]
                answer = await client.get(
                    "/markets/calendar", params={"month": month, "year": year}
                )
            nursery.cancel_scope.cancel()
    days = answer.json()["calendar"]["days"]["day"]
    return clock, next(d for d in days if d["date"] == day)


async def test_the_clock_and_calendar_show_the_early_close() -> None:
    clock, day = await _clock_and_day(half_day("12:30:00"), "2026-11-27")
    assert clock["state"] == "open"
    assert (clock["next_change"], clock["next_state"]) == ("13:00", "postmarket")
    assert clock["description"] == "Market is open from 09:30 to 13:00"
    assert day["status"] == "open"
    assert day["open"] == {"start": "09:30", "end": "13:00"}
    assert day["postmarket"] == {"start": "13:00", "end": "17:00"}


async def test_a_holiday_is_closed_all_day() -> None:
    thanksgiving = half_day().replace("2026-11-27T12:58:00", "2026-11-26T11:00:00")
    clock, day = await _clock_and_day(thanksgiving, "2026-11-26")
    assert clock["state"] == "closed" and clock["description"] == "Market is closed"
    assert day == {"date": "2026-11-26", "status": "closed", "description": "Market is closed"}
