"""Contract tests for the simulator's two WebSockets (market data and account events), each
assertion written from ``shared/reference/tradier-api.md``; real sockets, real clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.sim.contract_support import (
    ACCOUNT,
    CALL_700,
    PUT_645,
    PUT_650,
    PUT_655,
    account_stream,
    client,
    contract_sim,
    frames_until,
    is_epoch_ms_text,
    is_iso_utc,
    is_json_number,
    session_id,
)

ORDERS = f"/accounts/{ACCOUNT}/orders"
ALL_KINDS = {"quote", "trade", "summary", "timesale", "tradex"}
ORDER_EVENT_FIELDS = {"id", "event", "status", "type", "price", "stop_price", "avg_fill_price",
                      "exec_quantity", "last_fill_quantity", "remaining_quantity",
                      "transaction_date", "create_date", "account"}
STATUSES = {"open", "partially_filled", "filled", "expired", "canceled", "pending", "rejected",
            "calculated", "accepted_for_bidding", "error", "held"}


async def _subscribe(ws: WebSocketConnection, session: str, symbols: list[str],
                     **options: Any) -> None:
    await ws.send_message(json.dumps({"symbols": symbols, "sessionid": session, **options}))


def _until_seen(field: str, wanted: set[str]) -> Callable[[dict[str, Any]], bool]:
    """A ``frames_until`` predicate: true once ``event[field]`` has taken every wanted value."""
    seen: set[str] = set()

    def done(event: dict[str, Any]) -> bool:
        seen.add(event[field])
        return seen >= wanted

    return done


def _check_quote(event: dict[str, Any]) -> None:
    assert set(event) >= {"type", "symbol", "bid", "bidsz", "bidexch", "biddate", "ask",
                          "asksz", "askexch", "askdate"}
    for field in ("bid", "ask"):
        assert is_json_number(event[field]), field  # numbers, not strings
    for field in ("bidsz", "asksz"):
        assert isinstance(event[field], int) and not isinstance(event[field], bool), field
    for field in ("bidexch", "askexch"):
        assert isinstance(event[field], str) and len(event[field]) <= 1, field
    for field in ("biddate", "askdate"):
        assert is_epoch_ms_text(event[field]), field  # epoch ms as strings


def _check_strings(event: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        assert isinstance(event[field], str), (event["type"], field)


async def test_unknown_session_gets_error_frame_and_close() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, "00000000-0000-0000-0000-000000000000", ["SPY"])
                error = json.loads(await ws.get_message())
                assert set(error) == {"error"} and isinstance(error["error"], str)
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            nursery.cancel_scope.cancel()


async def test_quote_filter_and_linebreak_share_frames() -> None:
    symbols = ["SPY", PUT_645, PUT_650, PUT_655, CALL_700]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, session, symbols, filter=["quote"], linebreak=True)
                frames, events = await frames_until(ws, _until_seen("symbol", set(symbols)))
                assert any("\n" in frame for frame in frames)  # several events per frame
                assert all(not frame.endswith("\n") for frame in frames)
                for event in events:
                    assert event["type"] == "quote"  # the filter holds
                    assert event["symbol"] in symbols
                    _check_quote(event)
            nursery.cancel_scope.cancel()


async def test_without_linebreak_one_event_per_frame() -> None:
    symbols = ["SPY", PUT_650, CALL_700]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, session, symbols, filter=["quote"])
                for _ in range(6):
                    frame = await ws.get_message()
                    assert isinstance(frame, str) and "\n" not in frame
                    _check_quote(json.loads(frame))
            nursery.cancel_scope.cancel()


async def test_trade_summary_timesale_values_are_strings() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, session, ["SPY"], linebreak=True,
                                 filter=["trade", "tradex", "summary", "timesale"])
                _, events = await frames_until(
                    ws, _until_seen("type", {"trade", "tradex", "summary", "timesale"}))
            nursery.cancel_scope.cancel()
        first: dict[str, dict[str, Any]] = {}
        for event in events:
            first.setdefault(event["type"], event)
        assert set(first) == {"trade", "tradex", "summary", "timesale"}  # the filter holds
        for kind in ("trade", "tradex"):
            trade = first[kind]
            assert trade["symbol"] == "SPY"
            _check_strings(trade, ("exch", "price", "size", "cvol", "date", "last"))
            assert is_epoch_ms_text(trade["date"])
            float(trade["price"])
            int(trade["size"])
        summary = first["summary"]
        _check_strings(summary, ("open", "high", "low", "prevClose"))  # camelCase prevClose
        timesale = first["timesale"]
        _check_strings(timesale, ("exch", "bid", "ask", "last", "size", "date", "flag",
                                  "session"))
        assert is_epoch_ms_text(timesale["date"])
        assert isinstance(timesale["seq"], int)
        assert timesale["cancel"] is False and timesale["correction"] is False


async def test_no_filter_means_every_kind() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, session, ["SPY"], linebreak=True)
                await frames_until(ws, _until_seen("type", ALL_KINDS))
            nursery.cancel_scope.cancel()


async def test_resent_payload_replaces_the_symbol_set() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                await _subscribe(ws, session, ["SPY"], filter=["quote", "trade"])
                await frames_until(ws, lambda e: e["symbol"] == "SPY")
                # The whole payload again, with the full new list.
                await _subscribe(ws, session, ["QQQ"], filter=["quote", "trade"])
                await frames_until(ws, lambda e: e["symbol"] == "QQQ")
                # Both underlyings keep moving; from here on only QQQ may arrive.
                count = 0

                def enough(event: dict[str, Any]) -> bool:
                    nonlocal count
                    assert event["symbol"] == "QQQ", event
                    count += 1
                    return count == 10

                await frames_until(ws, enough)
            nursery.cancel_scope.cancel()


async def test_invalid_symbol_error_and_empty_placeholder() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http:
                session = await session_id(http, "markets")
            async with open_websocket_url(handle.market_ws_url) as ws:
                # validOnly true (the default): the placeholder "$empty$" is accepted quietly.
                await _subscribe(ws, session, ["$empty$"])
                # validOnly false: an unknown symbol is reported as an error frame (the
                # simulator's choice for validOnly, per sim/README.md).
                await _subscribe(ws, session, ["NOSUCH", "SPY"], validOnly=False,
                                 filter=["quote"])
                _, events = await frames_until(ws, lambda e: e.get("symbol") == "SPY")
                errors = [e for e in events if "error" in e]
                assert len(errors) == 1 and set(errors[0]) == {"error"}
                assert "NOSUCH" in errors[0]["error"]
                assert events.index(errors[0]) == 0  # nothing came for "$empty$" before it
            nursery.cancel_scope.cancel()


async def test_order_events_carry_the_documented_fields() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http, account_stream(http, handle, ["order"]) as ws:
                placed = await http.post(ORDERS, data={
                    "class": "option", "symbol": "SPY", "option_symbol": PUT_650,
                    "side": "buy_to_close", "quantity": "1", "type": "market",
                    "duration": "day", "tag": "exit-T9-1"})
                order_id = placed.json()["order"]["id"]
                _, events = await frames_until(
                    ws, lambda e: e.get("id") == order_id and e["status"] == "filled")
            nursery.cancel_scope.cancel()
        mine = [e for e in events if e.get("id") == order_id]
        assert mine[0]["status"] in {"pending", "open"}
        assert len({e["status"] for e in mine}) == len(mine)  # one event per status change
        for event in mine:
            assert set(event) >= ORDER_EVENT_FIELDS, ORDER_EVENT_FIELDS - set(event)
            assert event["event"] == "order" and event["status"] in STATUSES
            assert event["type"] == "market" and event["account"] == ACCOUNT
            assert event["tag"] == "exit-T9-1"
            for field in ("price", "stop_price", "avg_fill_price", "exec_quantity",
                          "last_fill_quantity", "remaining_quantity"):
                assert is_json_number(event[field]), field
            assert is_iso_utc(event["transaction_date"]) and is_iso_utc(event["create_date"])
        filled = mine[-1]
        assert filled["exec_quantity"] == 1.0 and filled["remaining_quantity"] == 0.0
        assert filled["avg_fill_price"] > 0


async def test_multileg_leg_events_name_their_parent() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with client(handle) as http, account_stream(http, handle, ["order"]) as ws:
                placed = await http.post(ORDERS, data={
                    "class": "multileg", "symbol": "SPY", "type": "market", "duration": "day",
                    "option_symbol[0]": PUT_650, "side[0]": "buy_to_close", "quantity[0]": "1",
                    "option_symbol[1]": PUT_645, "side[1]": "sell_to_close",
                    "quantity[1]": "1"})
                order_id = placed.json()["order"]["id"]
                legs: set[int] = set()

                def both_legs_filled(event: dict[str, Any]) -> bool:
                    if event.get("parent_id") == order_id and event["status"] == "filled":
                        legs.add(event["id"])
                    return len(legs) == 2

                _, events = await frames_until(ws, both_legs_filled)
            nursery.cancel_scope.cancel()
        assert order_id not in legs
        assert any(e.get("id") == order_id and e["status"] == "filled" for e in events)
        for event in events:
            if event.get("parent_id") == order_id:
                assert set(event) >= ORDER_EVENT_FIELDS


async def test_order_and_orders_are_both_accepted() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with (client(handle) as http,
                        account_stream(http, handle, ["order"]) as singular,
                        account_stream(http, handle, ["orders"]) as plural):
                placed = await http.post(ORDERS, data={
                    "class": "option", "symbol": "SPY", "option_symbol": PUT_650,
                    "side": "buy_to_close", "quantity": "1", "type": "limit",
                    "duration": "day", "price": "0.01"})
                order_id = placed.json()["order"]["id"]
                for ws in (singular, plural):
                    await frames_until(ws, lambda e: e.get("id") == order_id)
            nursery.cancel_scope.cancel()


async def test_heartbeat_shape() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # Heartbeats come about every 60 s; a short interval keeps the test fast.
            handle = await contract_sim(nursery, heartbeat_interval=0.1)
            async with client(handle) as http, account_stream(http, handle, ["order"]) as ws:
                beat = json.loads(await ws.get_message())
            nursery.cancel_scope.cancel()
        assert set(beat) == {"event", "status", "timestamp"}
        assert beat["event"] == "heartbeat" and beat["status"] == "active"
        assert is_iso_utc(beat["timestamp"])
        assert beat["timestamp"].startswith("2025-12-09T")


async def test_account_stream_unknown_session_gets_error_and_close() -> None:
    # The reference documents this for the market stream; sim/README.md applies it to the
    # account stream too.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await contract_sim(nursery)
            async with open_websocket_url(handle.account_ws_url) as ws:
                await ws.send_message(json.dumps({"events": ["order"], "sessionid": "nope",
                                                  "excludeAccounts": []}))
                assert "error" in json.loads(await ws.get_message())
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            nursery.cancel_scope.cancel()
