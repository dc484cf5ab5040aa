"""Tradier's WebSockets (market events and account events) over trio-websocket.

Each connection is one session: create the session over REST, connect, send the subscription
payload. There is no subscribe verb: changing the symbol set means re-sending the whole payload
on the same socket. Reconnecting (with a *fresh* session) is the caller's business: QuoteStream
and OrderRouter own their retry policies. Connection failures come out of here as
:class:`BrokerUnavailable`; session refusals as :class:`BrokerError` with Tradier's words.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import msgspec
import trio
import trio_websocket

from engine.brokers.tradier import wire
from engine.brokers.tradier.rest import TradierRest
from engine.errors import BrokerUnavailable

__all__ = ["AccountSocket", "MarketSocket", "open_account_socket", "open_market_socket"]

# Tradier documents no symbol-less subscription; a public client sends this placeholder.
EMPTY_SYMBOL = "$empty$"
DEFAULT_FILTER = ("quote", "trade", "summary")

_encoder = msgspec.json.Encoder()


class MarketSocket:
    """One market-data WebSocket with its session id. Not restartable: reconnect = new socket."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, session_id: str) -> None:
        self._ws = ws
        self.session_id = session_id

    async def subscribe(
        self,
        symbols: Iterable[str],
        *,
        kinds: Sequence[str] = DEFAULT_FILTER,
        linebreak: bool = True,
    ) -> None:
        """Send the full subscription payload (the whole new symbol set)."""
        payload = {
            "symbols": sorted(symbols) or [EMPTY_SYMBOL],
            "sessionid": self.session_id,
            "filter": list(kinds),
            "linebreak": linebreak,
            "validOnly": True,
            "advancedDetails": False,
        }
        try:
            await self._ws.send_message(_encoder.encode(payload).decode())
        except trio_websocket.ConnectionClosed as exc:
            raise BrokerUnavailable(f"market stream closed while subscribing: {exc}") from exc

    async def receive(self) -> str | bytes:
        """The next frame; BrokerUnavailable when the socket closes."""
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise BrokerUnavailable(f"market stream closed: {exc.reason}") from exc


class AccountSocket:
    def __init__(self, ws: trio_websocket.WebSocketConnection, session_id: str) -> None:
        self._ws = ws
        self.session_id = session_id

    async def subscribe(self) -> None:
        payload = {"events": ["order"], "sessionid": self.session_id, "excludeAccounts": []}
        try:
            await self._ws.send_message(_encoder.encode(payload).decode())
        except trio_websocket.ConnectionClosed as exc:
            raise BrokerUnavailable(f"account stream closed while subscribing: {exc}") from exc

    async def receive(self) -> wire.AccountEvent | None:
        try:
            frame = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise BrokerUnavailable(f"account stream closed: {exc.reason}") from exc
        return wire.decode_account_frame(frame)


@asynccontextmanager
async def _open_ws(
    url: str, *, connect_timeout: float, what: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    context = ssl.create_default_context() if url.startswith("wss://") else None
    try:
        async with trio_websocket.open_websocket_url(
            url,
            context,
            connect_timeout=connect_timeout,
            disconnect_timeout=2,
            # Frames with linebreak=true can carry thousands of events.
            max_message_size=16 * 1024 * 1024,
            # A small queue: the reader drains continuously; backpressure is TCP's.
            message_queue_size=64,
        ) as ws:
            yield ws
    except (trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
        raise BrokerUnavailable(f"{what}: cannot connect to {url}: {exc!r}") from exc


@asynccontextmanager
async def open_market_socket(
    rest: TradierRest, ws_url: str, *, connect_timeout: float = 10.0
) -> AsyncIterator[MarketSocket]:
    """A fresh market session and a connected socket for it."""
    session = await rest.create_market_session()
    async with _open_ws(ws_url, connect_timeout=connect_timeout, what="market stream") as ws:
        yield MarketSocket(ws, session.sessionid)


@asynccontextmanager
async def open_account_socket(
    rest: TradierRest, ws_url: str, *, connect_timeout: float = 10.0
) -> AsyncIterator[AccountSocket]:
    session = await rest.create_account_session()
    async with _open_ws(ws_url, connect_timeout=connect_timeout, what="account stream") as ws:
        socket = AccountSocket(ws, session.sessionid)
        await socket.subscribe()
        yield socket
