"""Tradier's REST quirks as the simulator reproduces them, over real HTTP."""

from __future__ import annotations

import trio

from tests.sim.helpers import SPY_PUT_645, SPY_PUT_650, api, scenario_text, start_sim

CLOSE_650 = {"class": "option", "symbol": "SPY", "option_symbol": SPY_PUT_650,
             "side": "buy_to_close", "quantity": "1", "type": "limit", "duration": "day",
             "price": "0.05"}


async def test_lists_collapse_and_empty_answers_are_null_strings() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client:
                both = (await client.get(f"{account}/positions")).json()
                assert isinstance(both["positions"]["position"], list)
                assert len(both["positions"]["position"]) == 2
                assert (await client.get(f"{account}/orders")).json() == {"orders": "null"}

                handle.broker.manual_close([SPY_PUT_645])
                handle.simulator.tick()
                one = (await client.get(f"{account}/positions")).json()
                position = one["positions"]["position"]
                assert isinstance(position, dict)  # one element: a bare object
                assert position["symbol"] == SPY_PUT_650
                assert position["quantity"] == -2.0
                assert position["cost_basis"] == -300.0
                orders = (await client.get(f"{account}/orders")).json()["orders"]["order"]
                assert isinstance(orders, dict)
                assert orders["status"] == "filled"
                assert "tag" not in orders

                chains = await client.get("/markets/options/chains",
                                          params={"symbol": "SPY", "expiration": "2026-01-16"})
                assert chains.json() == {"options": None}
                dates = (await client.get("/markets/options/expirations",
                                          params={"symbol": "SPY"})).json()
                assert dates == {"expirations": {"date": "2025-12-19"}}
                assert (await client.get("/markets/options/expirations",
                                         params={"symbol": "QQQ"})).json() == {
                    "expirations": None}
            nursery.cancel_scope.cancel()


async def test_quotes_with_greeks_and_unmatched_symbols() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with api(handle) as client:
                answer = (await client.get("/markets/quotes", params={
                    "symbols": f"SPY,{SPY_PUT_650},NOPE", "greeks": "true"})).json()["quotes"]
                assert answer["unmatched_symbols"] == {"symbol": "NOPE"}
                spy, put = answer["quote"]
                assert spy["symbol"] == "SPY" and spy["type"] == "etf"
                assert put["option_type"] == "put" and put["strike"] == 650
                assert put["expiration_date"] == "2025-12-19"
                assert put["underlying"] == "SPY" and put["contract_size"] == 100
                assert isinstance(put["bid_date"], int) and put["bid"] < put["ask"]
                greeks = put["greeks"]
                assert -1 < greeks["delta"] < 0 and greeks["gamma"] > 0
                assert greeks["smv_vol"] == 0.2
                assert greeks["mid_iv"] is not None
                # POST with a form body works too; one symbol collapses.
                posted = (await client.post("/markets/quotes",
                                            data={"symbols": "SPY"})).json()["quotes"]
                assert posted["quote"]["symbol"] == "SPY"
                clock = (await client.get("/markets/clock")).json()["clock"]
                assert clock["state"] == "open" and clock["date"] == "2025-12-09"
                assert clock["next_state"] == "postmarket"
                calendar = (await client.get("/markets/calendar",
                                             params={"month": "12", "year": "2025"})).json()
                days = calendar["calendar"]["days"]["day"]
                assert days[5]["status"] == "closed"  # 2025-12-06 is a Saturday
                assert days[8]["open"] == {"start": "09:30", "end": "16:00"}
            nursery.cancel_scope.cancel()


async def test_auth_accept_and_tag_validation() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            async with api(handle, Authorization="Bearer wrong") as client:
                answer = await client.get(f"{account}/positions")
                assert answer.status_code == 401
                assert answer.json()["fault"]["detail"]["errorcode"] == \
                    "keymanagement.service.invalid_access_token"
            async with api(handle, Accept="application/xml") as client:
                answer = await client.get(f"{account}/positions")
                assert answer.status_code == 406
            async with api(handle) as client:
                for bad in ("has space", "x" * 256, "under_score"):
                    answer = await client.post(f"{account}/orders", data=CLOSE_650 | {"tag": bad})
                    assert answer.status_code == 400, bad
                    assert "tag" in answer.text
                assert handle.broker.orders == {}
                good = await client.post(f"{account}/orders",
                                         data=CLOSE_650 | {"tag": "a" * 254 + "-"})
                assert good.json()["order"]["status"] == "ok"
                one = (await client.get(f"{account}/orders/{good.json()['order']['id']}",
                                        params={"includeTags": "true"})).json()["order"]
                assert one["tag"] == "a" * 254 + "-"
                assert one["quantity"] == 1.0 and one["class"] == "option"
            nursery.cancel_scope.cancel()


async def test_rejections_are_http_200_with_errors_and_cancel_of_finished_is_400() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client:
                too_many = await client.post(f"{account}/orders",
                                             data=CLOSE_650 | {"quantity": "3"})
                assert too_many.status_code == 200
                assert "only 2 available" in too_many.json()["errors"]["error"]
                wrong_way = await client.post(f"{account}/orders", data=CLOSE_650 | {
                    "side": "sell_to_close"})
                assert "no long position" in wrong_way.json()["errors"]["error"]
                mismatched = await client.post(f"{account}/orders", data={
                    "class": "multileg", "symbol": "SPY", "type": "credit", "duration": "day",
                    "price": "1.00", "option_symbol[0]": SPY_PUT_650, "side[0]": "buy_to_close",
                    "quantity[0]": "1", "option_symbol[1]": SPY_PUT_645,
                    "side[1]": "buy_to_close", "quantity[1]": "1"})
                errors = mismatched.json()["errors"]["error"]
                assert isinstance(errors, list) and len(errors) == 2
                assert handle.broker.orders == {}
                assert len(handle.broker.rejected) == 3

                # Parameters on the query string of a POST are read too.
                market = await client.post(f"{account}/orders", params=CLOSE_650 | {
                    "type": "market"})
                order_id = market.json()["order"]["id"]
                handle.simulator.tick()
                handle.simulator.tick()
                assert handle.broker.orders[order_id].status == "filled"
                cancel = await client.delete(f"{account}/orders/{order_id}")
                assert cancel.status_code == 400
                assert cancel.text == "order already in finalized state: filled"
                # The one unit still open can be closed; a second close is over-committed.
                first = await client.post(f"{account}/orders", data=CLOSE_650)
                second = await client.post(f"{account}/orders", data=CLOSE_650)
                assert "errors" in second.json()
                first_id = first.json()["order"]["id"]
                modified = await client.put(f"{account}/orders/{first_id}",
                                            data={"price": "0.07"})
                assert modified.json() == {"order": {"id": first_id, "status": "ok"}}
                cancelled = await client.delete(f"{account}/orders/{first_id}")
                assert cancelled.json() == {"order": {"id": first_id, "status": "ok"}}
                again = await client.delete(f"{account}/orders/{first_id}")
                assert again.text == "order already in finalized state: canceled"
                record = handle.broker.orders[first_id]
                assert [str(m.price) for m in record.modifications] == ["0.07"]
                preview = await client.post(f"{account}/orders",
                                            data=CLOSE_650 | {"preview": "true"})
                assert preview.json()["order"]["result"] is True
                assert first_id + 1 not in handle.broker.orders
            nursery.cancel_scope.cancel()


async def test_rate_limits_count_per_group_and_refuse_with_429(autojump_clock: object) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, scenario_text(
                broker="rate_limits = { standard = 3, market_data = 2, trading = 1 }"))
            account = f"/accounts/{handle.account_id}"
            async with api(handle) as client:
                answers = [await client.get(f"{account}/balances") for _ in range(4)]
                assert [a.status_code for a in answers] == [200, 200, 200, 429]
                first = answers[0].headers
                assert first["X-Ratelimit-Allowed"] == "3"
                assert first["X-Ratelimit-Used"] == "1"
                assert first["X-Ratelimit-Available"] == "2"
                # Expiry: the window's end in market epoch milliseconds.
                expiry = int(first["X-Ratelimit-Expiry"])
                assert 59_000 < expiry - handle.clock.epoch_ms() <= 60_000
                assert answers[3].json()["fault"]["faultstring"] == "Rate limit quota violation"
                # Another group has its own window.
                assert (await client.get("/markets/clock")).status_code == 200
                # A new window opens after 60 market seconds.
                await trio.sleep(61)
                assert (await client.get(f"{account}/balances")).status_code == 200
            nursery.cancel_scope.cancel()
