"""Injected faults, at scenario times and through ``/sim/faults``, seen over real connections."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.sim.helpers import (
    SPY_PUT_645,
    SPY_PUT_650,
    account_socket,
    api,
    market_socket,
    scenario_text,
    start_sim,
)

CLOSE_650 = {"class": "option", "symbol": "SPY", "option_symbol": SPY_PUT_650,
             "side": "buy_to_close", "quantity": "1", "type": "limit", "duration": "gtc",
             "price": "0.05", "tag": "t-1"}


async def _inject(handle: object, fault: dict[str, object]) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=handle.base_url) as client:  # type: ignore[attr-defined]
        answer = await client.post("/sim/faults", content=json.dumps(fault))
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["injected"])


async def test_scheduled_socket_drops_close_both_streams(autojump_clock: object) -> None:
    faults = """
[[faults]]
at = "30s"
kind = "drop_market_socket"
[[faults]]
at = "40s"
kind = "drop_account_socket"
"""
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, scenario_text(extra=faults))
            async with market_socket(handle, ["SPY"], filter=["quote"]) as market, \
                    account_socket(handle) as account:
                await market.get_message()
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await market.get_message()
                assert closed.value.reason.code == 1001
                assert 30 <= handle.clock.elapsed() < 31
                with pytest.raises(ConnectionClosed):
                    while True:
                        await account.get_message()
                assert 40 <= handle.clock.elapsed() < 41
            kinds = [record.kind for record in handle.faults.log]
            assert kinds == ["drop_market_socket", "drop_account_socket"]
            nursery.cancel_scope.cancel()


async def test_http_error_burst_counts_and_can_apply_the_request() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            await _inject(handle, {"kind": "http_errors", "status": 503,
                                   "path": "/v1/accounts/*/positions", "count": 2})
            async with api(handle) as client:
                codes = [(await client.get(f"{account}/positions")).status_code
                         for _ in range(3)]
                assert codes == [503, 503, 200]
                assert (await client.get("/markets/clock")).status_code == 200
                await _inject(handle, {"kind": "http_errors", "status": 500, "method": "POST",
                                       "path": "/v1/accounts/*/orders", "apply": True})
                answer = await client.post(f"{account}/orders", data=CLOSE_650)
                assert answer.status_code == 500
                assert answer.json()["fault"]["faultstring"] == "Datastore Error"
                # The order went in anyway: the client must read orders to find out.
                orders = (await client.get(f"{account}/orders",
                                            params={"includeTags": "true"})).json()
                assert orders["orders"]["order"]["tag"] == "t-1"
            nursery.cancel_scope.cancel()


async def test_latency_delays_matching_answers_for_a_while(autojump_clock: object) -> None:
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            await _inject(handle, {"kind": "latency", "ms": 2500, "duration": "1m",
                                   "path": "/v1/markets/*"})
            async with api(handle) as client:
                started = trio.current_time()
                await client.get("/markets/clock")
                assert trio.current_time() - started == pytest.approx(2.5, abs=0.2)
                started = trio.current_time()
                await client.get(f"/accounts/{handle.account_id}/balances")
                assert trio.current_time() - started < 0.2
                await trio.sleep(60)
                started = trio.current_time()
                await client.get("/markets/clock")
                assert trio.current_time() - started < 0.2
            nursery.cancel_scope.cancel()


async def test_lost_account_events_and_one_null_positions_answer(autojump_clock: object) -> None:
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client, account_socket(handle) as events:
                await _inject(handle, {"kind": "lose_account_events", "duration": "10s"})
                lost = await client.post(f"{account}/orders", data=CLOSE_650)
                await trio.sleep(11)
                kept = await client.post(f"{account}/orders", data=CLOSE_650 | {"tag": "t-2"})
                event = json.loads(await events.get_message())
                assert event["id"] == kept.json()["order"]["id"]  # nothing of the lost one
                assert lost.json()["order"]["id"] != event["id"]
                assert handle.simulator.account_hub.lost >= 2  # its pending and open events

                await _inject(handle, {"kind": "null_positions"})
                assert (await client.get(f"{account}/positions")).json() == {
                    "positions": "null"}
                again = (await client.get(f"{account}/positions")).json()
                assert len(again["positions"]["position"]) == 2
            nursery.cancel_scope.cancel()


async def test_stale_crossed_and_zero_bid_quotes(autojump_clock: object) -> None:
    moving = '{ at = "0s", price = 680.0 }, { at = "10m", price = 700.0 }'
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, points=moving)
            market = handle.market
            async with market_socket(handle, [SPY_PUT_650], filter=["quote"]) as ws:
                await ws.get_message()
                await _inject(handle, {"kind": "stale_quotes", "symbol": SPY_PUT_650,
                                       "duration": "60s"})
                frozen = market.quote(SPY_PUT_650)
                assert frozen is not None
                with trio.move_on_after(50):
                    while True:  # only quotes already on their way before the freeze arrive
                        in_flight = json.loads(await ws.get_message())
                        assert int(in_flight["biddate"]) <= frozen.at_ms
                assert market.quote(SPY_PUT_650) == frozen
                assert market.true_quote(SPY_PUT_650) != frozen
                thawed = json.loads(await ws.get_message())
                assert 60 <= handle.clock.elapsed() < 62
                assert thawed["bid"] != frozen.bid / 100

                await _inject(handle, {"kind": "crossed_quote", "symbol": SPY_PUT_650,
                                       "duration": "5s"})
                handle.simulator.tick()
                crossed = json.loads(await ws.get_message())
                assert crossed["bid"] > crossed["ask"]
                await _inject(handle, {"kind": "zero_bid", "symbol": SPY_PUT_645,
                                       "duration": "5s"})
                async with api(handle) as client:
                    quote = (await client.get("/markets/quotes", params={
                        "symbols": SPY_PUT_645})).json()["quotes"]["quote"]
                assert quote["bid"] == 0 and quote["bidsize"] == 0
            nursery.cancel_scope.cancel()


async def test_rejections_manual_close_and_broker_cancel(autojump_clock: object) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client, account_socket(handle) as events:
                await _inject(handle, {"kind": "reject_orders", "reason": "no buying power"})
                refused = await client.post(f"{account}/orders", data=CLOSE_650)
                assert refused.status_code == 200
                assert refused.json() == {"errors": {"error": "no buying power"}}

                await _inject(handle, {"kind": "reject_orders", "after_accept": True})
                accepted = (await client.post(f"{account}/orders", data=CLOSE_650)).json()
                order_id = accepted["order"]["id"]
                pending = json.loads(await events.get_message())
                rejected = json.loads(await events.get_message())
                assert (pending["status"], rejected["status"]) == ("pending", "rejected")
                assert rejected["id"] == order_id

                resting = (await client.post(f"{account}/orders", data=CLOSE_650)).json()
                resting_id = resting["order"]["id"]
                await _inject(handle, {"kind": "broker_cancel", "tag": "t-1"})
                record = (await client.get(f"{account}/orders/{resting_id}")).json()["order"]
                assert record["status"] == "canceled"
                assert record["reason_description"] == "Canceled by broker"

                async with httpx.AsyncClient(base_url=handle.base_url) as control:
                    closed = await control.post("/sim/close", content=json.dumps(
                        {"symbols": [SPY_PUT_650, SPY_PUT_645]}))
                    manual_id = closed.json()["order_id"]
                    await trio.sleep(0.5)
                    positions = (await control.get("/sim/positions")).json()
                    orders = (await control.get("/sim/orders")).json()["orders"]
                assert positions == {"positions": []}
                manual = next(o for o in orders if o["id"] == manual_id)
                assert manual["status"] == "filled" and manual["tag"] is None
                assert manual["origin"] == "manual"
                assert [o["status"] for o in orders] == [
                    "rejected", "rejected", "canceled", "filled"]
            nursery.cancel_scope.cancel()


async def test_bad_injected_fault_is_a_400() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with httpx.AsyncClient(base_url=handle.base_url) as client:
                answer = await client.post("/sim/faults", content=b'{"kind": "meteor"}')
                assert answer.status_code == 400
            nursery.cancel_scope.cancel()
