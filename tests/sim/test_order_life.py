"""A whole order life over real HTTP and WebSocket connections: a multileg close placed through
REST fills in two lots as the market moves; positions, cash and account events follow."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import trio

from tests.sim.helpers import (
    SPY_PUT_645,
    SPY_PUT_650,
    account_socket,
    api,
    messages_until,
    scenario_text,
    start_sim,
)

# SPY rallies from 660 to 700 over 10 minutes: the put spread gets cheaper to buy back.
RALLY = '{ at = "0s", price = 660.0 }, { at = "10m", price = 700.0 }'


async def test_multileg_close_fills_in_two_lots_as_the_market_moves(autojump_clock: object) -> None:
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, scenario_text(
                points=RALLY, broker='fill_lot = 1\nfill_interval = "30s"'))
            market = handle.market
            start_natural = (market.quote(SPY_PUT_650).ask - market.quote(SPY_PUT_645).bid)
            # A net debit limit well under today's natural: it fills only after the rally.
            limit = Decimal(start_natural) / 100 / 2
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client, account_socket(handle) as events:
                placed = await client.post(f"{account}/orders", data={
                    "class": "multileg", "symbol": "SPY", "type": "debit", "duration": "day",
                    "price": str(limit.quantize(Decimal("0.01"))), "tag": "exit-T1-1",
                    "option_symbol[0]": SPY_PUT_650, "side[0]": "buy_to_close",
                    "quantity[0]": "2",
                    "option_symbol[1]": SPY_PUT_645, "side[1]": "sell_to_close",
                    "quantity[1]": "2",
                })
                assert placed.status_code == 200
                order_id = placed.json()["order"]["id"]
                assert placed.json()["order"]["status"] == "ok"

                seen = await messages_until(
                    events, lambda e: e.get("id") == order_id and e["status"] == "filled")
                statuses = [e["status"] for e in seen
                            if e.get("id") == order_id and e["event"] == "order"]
                assert statuses == ["pending", "open", "partially_filled", "filled"]
                partial = next(e for e in seen if e.get("id") == order_id
                               and e["status"] == "partially_filled")
                assert partial["exec_quantity"] == 1.0
                assert partial["remaining_quantity"] == 1.0
                assert partial["tag"] == "exit-T1-1"
                assert partial["account"] == handle.account_id
                # A multileg event is followed by one event per leg.
                filled_legs: list[int] = []

                def both_legs_filled(event: dict[str, object]) -> bool:
                    if event.get("parent_id") == order_id and event["status"] == "filled":
                        filled_legs.append(int(str(event["id"])))
                    return len(filled_legs) == 2

                seen += await messages_until(events, both_legs_filled)
                leg_events = [e for e in seen if e.get("parent_id") == order_id]
                assert [e["status"] for e in leg_events] == [
                    "pending", "pending", "open", "open", "partially_filled",
                    "partially_filled", "filled", "filled"]

                order = (await client.get(f"{account}/orders/{order_id}",
                                          params={"includeTags": "true"})).json()["order"]
                assert order["status"] == "filled"
                assert order["exec_quantity"] == 2.0
                assert order["tag"] == "exit-T1-1"
                assert [leg["exec_quantity"] for leg in order["leg"]] == [2.0, 2.0]
                assert order["avg_fill_price"] <= float(limit)

                positions = (await client.get(f"{account}/positions")).json()
                assert positions == {"positions": "null"}
                balances = (await client.get(f"{account}/balances")).json()["balances"]

            fills = handle.broker.orders[order_id].fills
            assert [f.quantity for f in fills] == [1, 1]
            assert fills[1].at - fills[0].at >= dt.timedelta(seconds=30)
            paid = sum((f.price * f.quantity * 100 for f in fills), Decimal(0))
            assert Decimal(str(balances["total_cash"])) == Decimal("10000") - paid
            # Opened for 0.50 credit per spread (1.50 short, 1.00 long) x 2 spreads x 100.
            assert handle.broker.realized_pnl == Decimal("100") - paid
            nursery.cancel_scope.cancel()
