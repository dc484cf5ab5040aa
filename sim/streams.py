"""The two WebSockets: market data (``/v1/markets/events``) and account events
(``/v1/accounts/events``), and the stream sessions that open them.

Sessions are connection-level, so they run on real (trio) time: a session id is good for
300 s after it was issued and may open more than one socket in that time.

Each connection has one writer task; everything else (the market model, the broker, the reader
of the client's payloads, faults) only puts lines into the connection's pending buffer and wakes
the writer. Quotes are state, so a newer quote for a symbol replaces one still waiting; every
other event is kept in order.

A benchmark may *mark* a market line (``MarketHub.publish(..., mark=...)``): when the writer
hands the frame carrying it to the socket, ``MarketHub.emitted_ns[mark]`` gets
``time.perf_counter_ns()`` (this process's clock, the one the order endpoint stamps receipts
with). A marked quote replaced by a newer one before it was sent is never stamped: it never left.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
import trio

from sim.asgi import Receive, Send
from sim.market import Market

__all__ = ["AccountHub", "MarketHub", "SessionStore"]

SESSION_TTL = 300.0  # real seconds
_KINDS = frozenset({"quote", "trade", "summary", "timesale", "tradex"})
_DEFAULT_KINDS = _KINDS  # Tradier: no `filter` means every kind, tradex included
_FRAME_LINES = 2000  # events per frame with linebreak: keeps frames well under 1 MiB
_DROP = object()


class SessionStore:
    def __init__(self) -> None:
        self._issued: dict[str, tuple[str, float]] = {}

    def create(self, kind: str) -> str:
        session_id = str(uuid.uuid4())
        now = trio.current_time()
        self._issued = {k: v for k, v in self._issued.items() if now - v[1] < SESSION_TTL}
        self._issued[session_id] = (kind, now)
        return session_id

    def valid(self, kind: str, session_id: object) -> bool:
        issued = self._issued.get(session_id) if isinstance(session_id, str) else None
        return (issued is not None and issued[0] == kind
                and trio.current_time() - issued[1] < SESSION_TTL)


class _Connection:
    """One socket's outgoing buffer. Keys are ("q", symbol) for quotes, ints otherwise.
    ``marks`` names the pending lines a benchmark marked (key -> mark); ``emitted_ns`` is where
    their send times go."""

    def __init__(self, emitted_ns: dict[str, int] | None = None) -> None:
        self.pending: dict[object, str] = {}
        self.marks: dict[object, str] = {}
        self.emitted_ns = emitted_ns
        self.wake = trio.Event()
        self.close_code: int | None = None
        self._seq = itertools.count()

    def push(self, line: str, key: object = None, mark: str | None = None) -> None:
        if key is None:
            key = next(self._seq)
        else:
            self.pending.pop(key, None)  # the newest quote goes to the back of the line
            if self.marks:
                self.marks.pop(key, None)
        self.pending[key] = line
        if mark is not None:
            self.marks[key] = mark
        self.wake.set()

    def close(self, code: int) -> None:
        self.close_code = code
        self.wake.set()

    def take(self) -> tuple[list[str], dict[int, str]]:
        """Every pending line in order, and the marked ones' positions among them."""
        marked = {}
        if self.marks:
            marked = {i: self.marks[key] for i, key in enumerate(self.pending)
                      if key in self.marks}
            self.marks.clear()
        lines = list(self.pending.values())
        self.pending.clear()
        self.wake = trio.Event()
        return lines, marked

    def stamp(self, marked: dict[int, str], first: int, end: int) -> None:
        """Record now as the send time of the marked lines ``first <= i < end``."""
        if self.emitted_ns is None:
            return
        now = time.perf_counter_ns()
        for i, mark in marked.items():
            if first <= i < end:
                self.emitted_ns[mark] = now


async def _write_loop(conn: _Connection, send: Send, linebreak: Any) -> None:
    """The connection's only sender. ``linebreak`` is read each time: a re-sent payload may
    change it."""
    while True:
        await conn.wake.wait()
        lines, marked = conn.take()
        if linebreak():
            for start in range(0, len(lines), _FRAME_LINES):
                end = start + _FRAME_LINES
                text = "\n".join(lines[start:end])
                if marked:
                    conn.stamp(marked, start, end)
                await send({"type": "websocket.send", "text": text})
        else:
            for i, line in enumerate(lines):
                if marked:
                    conn.stamp(marked, i, i + 1)
                await send({"type": "websocket.send", "text": line})
        if conn.close_code is not None:
            await send({"type": "websocket.close", "code": conn.close_code})
            return


class _Subscription(msgspec.Struct):
    symbols: frozenset[str] = frozenset()
    kinds: frozenset[str] = _DEFAULT_KINDS
    linebreak: bool = False


class _MarketPayload(msgspec.Struct):
    symbols: list[str]
    sessionid: str
    filter: list[str] | None = None
    linebreak: bool = False
    validOnly: bool = True
    advancedDetails: bool = False


_market_payload = msgspec.json.Decoder(_MarketPayload)


class MarketHub:
    """Fans the market's events out to the sockets that asked for them (a MarketFeed)."""

    def __init__(self, market: Market, sessions: SessionStore) -> None:
        self.market = market
        self.sessions = sessions
        self._subs: dict[str, dict[_Connection, _Subscription]] = {}
        self._connections: set[_Connection] = set()
        self.emitted_ns: dict[str, int] = {}  # mark -> when its frame was sent (see above)

    def wanted(self) -> Iterable[str]:
        return self._subs.keys()

    def publish(self, symbol: str, kind: str, line: str, mark: str | None = None) -> None:
        subscribers = self._subs.get(symbol)
        if not subscribers:
            return
        for conn, sub in subscribers.items():
            if kind in sub.kinds:
                conn.push(line, ("q", symbol) if kind == "quote" else None, mark)

    def drop_all(self) -> int:
        for conn in self._connections:
            conn.close(1001)
        return len(self._connections)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _set(self, conn: _Connection, sub: _Subscription) -> None:
        self._unset(conn)
        for symbol in sub.symbols:
            self._subs.setdefault(symbol, {})[conn] = sub

    def _unset(self, conn: _Connection) -> None:
        for symbol in [s for s, subs in self._subs.items() if conn in subs]:
            del self._subs[symbol][conn]
            if not self._subs[symbol]:
                del self._subs[symbol]

    def _apply(self, conn: _Connection, text: str, current: _Subscription) -> _Subscription | None:
        try:
            payload = _market_payload.decode(text)
        except msgspec.DecodeError:
            conn.push('{"error":"invalid payload: symbols and sessionid are required"}')
            return None
        if not self.sessions.valid("market", payload.sessionid):
            conn.push('{"error":"invalid session: unknown or expired session id"}')
            conn.close(1008)
            return None
        kinds = _KINDS & frozenset(payload.filter) if payload.filter else _DEFAULT_KINDS
        symbols = set()
        for symbol in payload.symbols:
            if self.market.is_known(symbol):
                symbols.add(symbol)
            elif symbol != "$empty$" and not payload.validOnly:
                conn.push(msgspec.json.encode({"error": f"invalid symbol: {symbol}"}).decode())
        sub = _Subscription(frozenset(symbols), kinds, payload.linebreak)
        self._set(conn, sub)
        for symbol in sorted(sub.symbols - current.symbols):
            for kind, line in self.market.snapshot_lines(symbol, kinds):
                conn.push(line, ("q", symbol) if kind == "quote" else None)
        return sub

    async def serve(self, receive: Receive, send: Send) -> None:
        """One market-data socket, from accept to close."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        conn = _Connection(self.emitted_ns)
        sub = _Subscription()
        self._connections.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                async def write() -> None:
                    await _write_loop(conn, send, lambda: sub.linebreak)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(write)
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        nursery.cancel_scope.cancel()
                        return
                    text = message.get("text") or (message.get("bytes") or b"").decode()
                    new = self._apply(conn, text, sub)
                    if new is not None:
                        sub = new
        finally:
            self._connections.discard(conn)
            self._unset(conn)


class _AccountPayload(msgspec.Struct):
    sessionid: str
    events: list[str] = msgspec.field(default_factory=lambda: ["order"])
    excludeAccounts: list[str] = msgspec.field(default_factory=list)


_account_payload = msgspec.json.Decoder(_AccountPayload)


class AccountHub:
    """Order events to every subscribed account socket, heartbeats, and the lost-events fault."""

    def __init__(self, sessions: SessionStore, account_id: str, heartbeat_interval: float,
                 clock_iso: Any) -> None:
        self.sessions = sessions
        self.account_id = account_id
        self.heartbeat_interval = heartbeat_interval
        self._clock_iso = clock_iso
        self._subscribed: set[_Connection] = set()
        self._connections: set[_Connection] = set()
        self.lose_until: float = float("-inf")  # market offset; set by the fault
        self.lost: int = 0

    def publish(self, line: str, offset: float) -> None:
        if offset < self.lose_until:
            self.lost += 1
            return
        for conn in self._subscribed:
            conn.push(line)

    def drop_all(self) -> int:
        for conn in self._connections:
            conn.close(1001)
        return len(self._connections)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _apply(self, conn: _Connection, text: str) -> None:
        try:
            payload = _account_payload.decode(text)
        except msgspec.DecodeError:
            conn.push('{"error":"invalid payload: sessionid is required"}')
            return
        if not self.sessions.valid("account", payload.sessionid):
            conn.push('{"error":"invalid session: unknown or expired session id"}')
            conn.close(1008)
            return
        wants_orders = bool({"order", "orders"} & set(payload.events))
        if wants_orders and self.account_id not in payload.excludeAccounts:
            self._subscribed.add(conn)
        else:
            self._subscribed.discard(conn)

    async def _heartbeats(self, conn: _Connection) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            conn.push('{"event":"heartbeat","status":"active","timestamp":"'
                      + self._clock_iso() + '"}')

    async def serve(self, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        conn = _Connection()
        self._connections.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                async def write() -> None:
                    await _write_loop(conn, send, lambda: False)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(write)
                nursery.start_soon(self._heartbeats, conn)
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        nursery.cancel_scope.cancel()
                        return
                    self._apply(conn, message.get("text") or
                                (message.get("bytes") or b"").decode())
        finally:
            self._connections.discard(conn)
            self._subscribed.discard(conn)
