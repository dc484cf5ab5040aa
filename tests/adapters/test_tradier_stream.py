"""Tradier WebSockets against a real local trio-websocket server (127.0.0.1, port 0)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio_websocket

from engine.brokers.tradier import wire
from engine.brokers.tradier.rest import TradierRest
from engine.brokers.tradier.stream import open_account_socket, open_market_socket
from engine.errors import BrokerUnavailable


def _rest() -> TradierRest:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"stream": {"url": "x", "sessionid": "sess-9"}})

    return TradierRest(
        base_url="http://api/v1", token="t", account_id="A", transport=httpx.MockTransport(handler)
    )


async def _serve(handler, nursery: trio.Nursery) -> int:  # type: ignore[no-untyped-def]
    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return int(server.port)


async def test_market_socket_sends_whole_payload_and_receives_frames() -> None:
    received: list[dict[str, object]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        received.append(json.loads(await ws.get_message()))
        await ws.send_message('{"type":"quote","symbol":"SPY","bid":1.5,"ask":1.6}')
        received.append(json.loads(await ws.get_message()))
        await ws.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(handler, nursery)
            async with (
                _rest() as rest,
                open_market_socket(rest, f"ws://127.0.0.1:{port}/v1/markets/events") as sock,
            ):
                await sock.subscribe({"SPY", "AAA"})
                (event,) = wire.decode_market_frame(await sock.receive())
                assert isinstance(event, wire.QuoteEvent) and event.symbol == "SPY"
                await sock.subscribe(set())
                with pytest.raises(BrokerUnavailable, match="market stream closed"):
                    await sock.receive()
            nursery.cancel_scope.cancel()

    first, second = received
    assert first["symbols"] == ["AAA", "SPY"] and first["sessionid"] == "sess-9"
    assert first["linebreak"] is True and "quote" in first["filter"]  # type: ignore[operator]
    assert second["symbols"] == ["$empty$"]


async def test_account_socket_subscribes_to_order_events() -> None:
    received: list[dict[str, object]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        received.append(json.loads(await ws.get_message()))
        await ws.send_message('{"event":"heartbeat","status":"active","timestamp":"x"}')
        await ws.send_message('{"id":5,"event":"order","status":"filled","exec_quantity":2.0}')
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(handler, nursery)
            async with (
                _rest() as rest,
                open_account_socket(rest, f"ws://127.0.0.1:{port}/v1/accounts/events") as sock,
            ):
                assert isinstance(await sock.receive(), wire.Heartbeat)
                event = await sock.receive()
                assert isinstance(event, wire.OrderEvent) and event.status == "filled"
            nursery.cancel_scope.cancel()
    assert received == [{"events": ["order"], "sessionid": "sess-9", "excludeAccounts": []}]


async def test_unreachable_socket_is_broker_unavailable() -> None:
    with trio.fail_after(10):
        async with _rest() as rest:
            with pytest.raises(BrokerUnavailable, match="cannot connect"):
                async with open_market_socket(rest, "ws://127.0.0.1:1/v1/markets/events"):
                    pass
