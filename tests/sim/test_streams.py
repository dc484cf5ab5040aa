"""The market-data and account-event WebSockets, over real connections."""

from __future__ import annotations

import itertools
import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.sim.helpers import (
    SPY_PUT_650,
    account_socket,
    api,
    market_socket,
    messages_until,
    scenario_text,
    start_sim,
)

MOVING = '{ at = "0s", price = 680.0 }, { at = "10m", price = 690.0 }'


async def test_unknown_session_gets_an_error_frame_and_a_close() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with market_socket(handle, ["SPY"], session="not-a-session") as ws:
                error = json.loads(await ws.get_message())
                assert "error" in error and "session" in error["error"]
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            nursery.cancel_scope.cancel()


async def test_session_expires_after_five_minutes(autojump_clock: object) -> None:
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with api(handle) as client:
                answer = (await client.post("/markets/events/session")).json()["stream"]
            assert answer["url"].endswith("/v1/markets/events")
            await trio.sleep(301)
            async with market_socket(handle, ["SPY"], session=answer["sessionid"]) as ws:
                assert "error" in json.loads(await ws.get_message())
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            nursery.cancel_scope.cancel()


async def test_quote_shapes_filter_and_linebreak(autojump_clock: object) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, points=MOVING)
            async with market_socket(handle, ["SPY", SPY_PUT_650], linebreak=True,
                                     filter=["quote"]) as ws:
                frame = await ws.get_message()
                lines = frame.split("\n")
                assert len(lines) == 2  # both current quotes in one frame
                quotes = [json.loads(line) for line in lines]
                assert {q["symbol"] for q in quotes} == {"SPY", SPY_PUT_650}
                for quote in quotes:
                    assert quote["type"] == "quote"
                    assert isinstance(quote["bid"], float | int)
                    assert isinstance(quote["bidsz"], int)
                    assert isinstance(quote["biddate"], str) and quote["biddate"].isdigit()
                    assert isinstance(quote["askdate"], str)
                    assert len(quote["bidexch"]) == 1
                seen = await messages_until(ws, lambda e: e["symbol"] == "SPY")
                assert all(e["type"] == "quote" for e in seen)
            nursery.cancel_scope.cancel()


async def test_all_kinds_and_string_typed_trades(autojump_clock: object) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, points=MOVING)
            async with market_socket(handle, ["SPY"]) as ws:
                summary = json.loads(await ws.get_message())  # no linebreak: one per frame
                assert summary["type"] == "summary"
                assert isinstance(summary["prevClose"], str)
                seen = await messages_until(ws, lambda e: e["type"] == "timesale")
                trade = next(e for e in seen if e["type"] == "trade")
                for field in ("price", "size", "cvol", "date", "last"):
                    assert isinstance(trade[field], str), field
                assert isinstance(seen[-1]["seq"], int)
                assert seen[-1]["cancel"] is False
                assert any(e["type"] == "tradex" for e in seen)  # no filter: all kinds
            nursery.cancel_scope.cancel()


async def test_resent_payload_changes_the_symbol_set(autojump_clock: object) -> None:
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, points=MOVING)
            async with api(handle) as client:
                session = (await client.post("/markets/events/session")).json()[
                    "stream"]["sessionid"]
            async with market_socket(handle, ["SPY"], session=session, filter=["quote"]) as ws:
                await messages_until(ws, lambda e: e["symbol"] == "SPY")
                await ws.send_message(json.dumps({"symbols": [SPY_PUT_650],
                                                  "sessionid": session, "filter": ["quote"]}))
                await messages_until(ws, lambda e: e["symbol"] == SPY_PUT_650)
                # From now on only the option streams.
                for _ in range(5):
                    event = json.loads(await ws.get_message())
                    assert event["symbol"] == SPY_PUT_650
                await ws.send_message(json.dumps({"symbols": ["$empty$", "BOGUS"],
                                                  "sessionid": session, "validOnly": False}))
                seen = await messages_until(ws, lambda e: "error" in e)
                assert seen[-1] == {"error": "invalid symbol: BOGUS"}
                assert handle.simulator.market_hub.connection_count == 1
                assert list(handle.simulator.market_hub.wanted()) == []
            nursery.cancel_scope.cancel()


async def test_account_heartbeats_and_orders_spelling(autojump_clock: object) -> None:
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with account_socket(handle, events=("orders",)) as ws:
                before = trio.current_time()
                beat = json.loads(await ws.get_message())
                assert beat["event"] == "heartbeat" and beat["status"] == "active"
                assert beat["timestamp"].startswith("2025-12-09T14:4")
                assert beat["timestamp"].endswith("Z")
                assert trio.current_time() - before == pytest.approx(60, abs=1)
                handle.broker.manual_close([SPY_PUT_650], 1)
                event = json.loads(await ws.get_message())
                assert event["event"] == "order" and event["status"] == "open"
                assert event["remaining_quantity"] == 1.0
                assert isinstance(event["exec_quantity"], float)
            # A bad account session: error frame and close.
            async with open_websocket_url(handle.account_ws_url) as ws:
                await ws.send_message(json.dumps({"events": ["order"], "sessionid": "x"}))
                assert "error" in json.loads(await ws.get_message())
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            nursery.cancel_scope.cancel()


async def test_quote_rate_cap_sends_at_most_one_quote_per_interval(autojump_clock: object) -> None:
    text = scenario_text(points=MOVING).replace("quote_interval_ms = 0",
                                                "quote_interval_ms = 1000")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery, text)
            async with market_socket(handle, ["SPY"], filter=["quote"]) as ws:
                await ws.get_message()
                times = []
                for _ in range(4):
                    await ws.get_message()
                    times.append(trio.current_time())
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert all(gap >= 0.999 for gap in gaps), gaps
            nursery.cancel_scope.cancel()
