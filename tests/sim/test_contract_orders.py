"""Contract tests for the simulator's order endpoints: placement answers, read-back fields,
multileg records, tag validation, ``errors`` on HTTP 200, modify, cancel and the 400 plain text
for a finished order. Assertions come from ``shared/reference/tradier-api.md``; real HTTP and
the real account WebSocket on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection

from tests.sim.contract_support import (
    ACCOUNT,
    PUT_645,
    PUT_650,
    PUT_655,
    account_stream,
    client,
    contract_sim,
    is_iso_utc,
    is_json_number,
    is_occ,
)

ORDERS = f"/accounts/{ACCOUNT}/orders"
STATUSES = {"open", "partially_filled", "filled", "expired", "canceled", "pending", "rejected",
            "calculated", "accepted_for_bidding", "error", "held"}
ORDER_FIELDS = {"id", "type", "symbol", "side", "quantity", "status", "duration", "avg_fill_price",
                "exec_quantity", "last_fill_price", "last_fill_quantity", "remaining_quantity",
                "create_date", "transaction_date", "class"}
# A buy-to-close limit far under the market: it rests open.
RESTING = {"class": "option", "symbol": "SPY", "option_symbol": PUT_650,
           "side": "buy_to_close", "quantity": "1", "type": "limit", "duration": "day",
           "price": "0.01"}
SPREAD_CLOSE = {"class": "multileg", "symbol": "SPY", "type": "debit", "duration": "gtc",
                "price": "0.01",
                "option_symbol[0]": PUT_650, "side[0]": "buy_to_close", "quantity[0]": "2",
                "option_symbol[1]": PUT_645, "side[1]": "sell_to_close", "quantity[1]": "2"}


async def _place(http: httpx.AsyncClient, params: dict[str, str]) -> int:
    answer = await http.post(ORDERS, data=params)
    assert answer.status_code == 200, answer.text
    order = answer.json()["order"]
    # "ok" is the placement answer, not an order state.
    assert order["status"] == "ok"
    assert isinstance(order["id"], int) and not isinstance(order["id"], bool)
    return int(order["id"])


async def _event(ws: WebSocketConnection, order_id: int, status: str) -> dict[str, Any]:
    while True:
        event = json.loads(await ws.get_message())
        if event.get("id") == order_id and event.get("status") == status:
            return dict(event)


def _check_order_record(order: dict[str, Any]) -> None:
    assert set(order) >= ORDER_FIELDS, ORDER_FIELDS - set(order)
    assert order["status"] in STATUSES
    for field in ("quantity", "exec_quantity", "remaining_quantity", "last_fill_quantity"):
        assert isinstance(order[field], float), field  # quantities are floats
    for field in ("avg_fill_price", "last_fill_price"):
        assert is_json_number(order[field]), field
    assert is_iso_utc(order["create_date"]) and is_iso_utc(order["transaction_date"])


async def test_option_order_placed_read_back_and_listed() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                assert (await http.get(ORDERS)).json() == {"orders": "null"}
                first = await _place(http, {**RESTING, "tag": "exit-T1-1"})

                listed = (await http.get(ORDERS)).json()["orders"]["order"]
                assert isinstance(listed, dict)  # one order: a bare object
                assert listed["id"] == first
                assert "tag" not in listed  # tags only with includeTags=true

                answer = await http.get(f"{ORDERS}/{first}", params={"includeTags": "true"})
                order = answer.json()["order"]
                _check_order_record(order)
                assert order["class"] == "option"
                assert order["type"] == "limit" and order["duration"] == "day"
                assert order["symbol"] == "SPY" and order["option_symbol"] == PUT_650
                assert order["side"] == "buy_to_close"
                assert order["quantity"] == 1.0 and order["remaining_quantity"] == 1.0
                assert order["exec_quantity"] == 0.0
                assert order["price"] == 0.01 and is_json_number(order["price"])
                assert order["tag"] == "exit-T1-1"
                assert order["status"] in {"pending", "open"}

                second = await _place(http, {**RESTING, "price": "0.02"})
                both = (await http.get(ORDERS, params={"includeTags": "true"})).json()
                orders = both["orders"]["order"]
                assert isinstance(orders, list)
                assert {o["id"] for o in orders} == {first, second}
                tags = {o["id"]: o.get("tag") for o in orders}
                assert tags == {first: "exit-T1-1", second: None}
            nursery.cancel_scope.cancel()


async def test_multileg_order_read_back() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                order_id = await _place(http, {**SPREAD_CLOSE, "tag": "tp-1"})
                answer = await http.get(f"{ORDERS}/{order_id}", params={"includeTags": "true"})
                order = answer.json()["order"]
                _check_order_record(order)
                assert order["class"] == "multileg"
                assert order["num_legs"] == 2
                assert isinstance(order["strategy"], str)
                assert order["type"] == "debit" and order["duration"] == "gtc"
                assert order["price"] == 0.01
                assert order["tag"] == "tp-1"
                legs = order["leg"]
                assert isinstance(legs, list) and len(legs) == 2
                assert [(leg["option_symbol"], leg["side"], leg["quantity"]) for leg in legs] == [
                    (PUT_650, "buy_to_close", 2.0), (PUT_645, "sell_to_close", 2.0)]
                for leg in legs:
                    assert isinstance(leg["quantity"], float)
                    assert is_occ(leg["option_symbol"])
                    assert leg["status"] in STATUSES
                    assert isinstance(leg["id"], int)
            nursery.cancel_scope.cancel()


async def test_order_parameters_in_the_query_string_are_read() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                answer = await http.post(ORDERS, params=RESTING)
                assert answer.status_code == 200, answer.text
                order_id = answer.json()["order"]["id"]
                order = (await http.get(f"{ORDERS}/{order_id}")).json()["order"]
                assert order["option_symbol"] == PUT_650
            nursery.cancel_scope.cancel()


async def test_tag_validation_refuses_rather_than_truncates() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                for bad in ("exit_T1", "exit T1", "exit.1", "x" * 256, "tag/1"):
                    answer = await http.post(ORDERS, data={**RESTING, "tag": bad})
                    assert answer.status_code == 400, bad
                # Refused, not placed (nor truncated).
                assert (await http.get(ORDERS)).json() == {"orders": "null"}
                longest = "a-1" * 85  # 255 characters of letters, digits and '-'
                order_id = await _place(http, {**RESTING, "tag": longest})
                order = (await http.get(f"{ORDERS}/{order_id}",
                                        params={"includeTags": "true"})).json()["order"]
                assert order["tag"] == longest
            nursery.cancel_scope.cancel()


async def test_rejected_orders_are_http_200_with_errors() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                not_held = {**RESTING, "option_symbol": PUT_655}
                more_than_held = {**RESTING, "quantity": "5"}
                spread_not_held = {**SPREAD_CLOSE, "option_symbol[1]": PUT_655}
                for params in (not_held, more_than_held, spread_not_held):
                    answer = await http.post(ORDERS, data=params)
                    assert answer.status_code == 200
                    body = answer.json()
                    assert "order" not in body
                    errors = body["errors"]["error"]  # a string or a list of strings
                    for error in errors if isinstance(errors, list) else [errors]:
                        assert isinstance(error, str) and error
                assert (await http.get(ORDERS)).json() == {"orders": "null"}
            nursery.cancel_scope.cancel()


async def test_preview_validates_without_placing() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                answer = await http.post(ORDERS, data={**SPREAD_CLOSE, "preview": "true"})
                assert answer.status_code == 200
                assert "order" in answer.json()
                refused = await http.post(ORDERS, data={**RESTING, "option_symbol": PUT_655,
                                                        "preview": "true"})
                assert refused.status_code == 200 and "errors" in refused.json()
                assert (await http.get(ORDERS)).json() == {"orders": "null"}
            nursery.cancel_scope.cancel()


async def test_modify_changes_price_not_quantity() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http, account_stream(http, handle, ["order"]) as ws:
                order_id = await _place(http, RESTING)
                await _event(ws, order_id, "open")
                answer = await http.put(f"{ORDERS}/{order_id}",
                                        data={"price": "0.02", "quantity": "2"})
                assert answer.status_code == 200
                assert answer.json() == {"order": {"id": order_id, "status": "ok"}}
                order = (await http.get(f"{ORDERS}/{order_id}")).json()["order"]
                assert order["price"] == 0.02
                assert order["quantity"] == 1.0  # quantity cannot change
            nursery.cancel_scope.cancel()


async def test_cancel_answers_and_finalized_orders_are_400_plain_text() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http, account_stream(http, handle, ["order"]) as ws:
                resting = await _place(http, RESTING)
                await _event(ws, resting, "open")
                answer = await http.delete(f"{ORDERS}/{resting}")
                assert answer.status_code == 200
                assert answer.json() == {"order": {"id": resting, "status": "ok"}}
                await _event(ws, resting, "canceled")
                order = (await http.get(f"{ORDERS}/{resting}")).json()["order"]
                assert order["status"] == "canceled"
                again = await http.delete(f"{ORDERS}/{resting}")
                assert again.status_code == 400
                assert again.headers["content-type"].startswith("text/plain")
                assert again.text == "order already in finalized state: canceled"

                market = await _place(http, {**RESTING, "type": "market", "price": ""})
                await _event(ws, market, "filled")
                finished = await http.delete(f"{ORDERS}/{market}")
                assert finished.status_code == 400
                assert finished.headers["content-type"].startswith("text/plain")
                assert finished.text == "order already in finalized state: filled"
            nursery.cancel_scope.cancel()


async def test_multileg_needs_two_to_four_legs_and_a_positive_net_price() -> None:
    five_legs = {**SPREAD_CLOSE, "quantity[0]": "1", "quantity[1]": "1"}
    for i, (symbol, side) in enumerate([(PUT_655, "buy_to_open"), ("SPY251219P00660000",
                                        "sell_to_open"), ("SPY251219P00665000",
                                        "buy_to_open")], start=2):
        five_legs.update({f"option_symbol[{i}]": symbol, f"side[{i}]": side,
                          f"quantity[{i}]": "1"})
    one_leg = {k: v for k, v in SPREAD_CLOSE.items() if not k.endswith("[1]")}
    without_price = {k: v for k, v in SPREAD_CLOSE.items() if k != "price"}
    negative = {**SPREAD_CLOSE, "price": "-0.10"}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                for name, params in (("five legs", five_legs), ("one leg", one_leg),
                                     ("debit without price", without_price),
                                     ("negative net price", negative)):
                    answer = await http.post(ORDERS, data=params)
                    refused = answer.status_code == 400 or (
                        answer.status_code == 200 and "errors" in answer.json())
                    assert refused, (name, answer.status_code, answer.text)
                # None of them was placed (a five-leg order is not cut to four).
                assert (await http.get(ORDERS)).json() == {"orders": "null"}
            nursery.cancel_scope.cancel()
