"""QuoteStream driven through its channels.

Most tests run a real WebSocket protocol (trio-websocket on both sides) over in-memory streams,
under the autojump clock: each ``connect()`` is a new session (``sess-1``, ``sess-2``...) whose
server end the test holds, reads subscription payloads from, sends frames on and closes. One
test uses a real trio-websocket server on 127.0.0.1 with the production ``open_market_socket``.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing
import trio_websocket

from actors import quote_stream
from actors.quote_stream import (
    FEED_KEY,
    QuoteFanout,
    QuoteMailbox,
    QuoteStreamConfig,
    trade_key,
)
from engine.brokers.tradier import wire
from engine.brokers.tradier.rest import TradierRest
from engine.brokers.tradier.stream import MarketSocket, open_market_socket
from engine.brokers.tradier.translate import quote_from_event, quote_from_rest, trade_from_event
from engine.clock import TrioMarketClock
from engine.errors import AuthFailed, BrokerUnavailable, RateLimited
from engine.log import Logger, LogSink
from engine.messages import (
    AuditRecord,
    EngineEventRecord,
    FeedState,
    FeedStatusChanged,
    Quote,
    ReleaseSymbols,
    SubscriptionCommand,
    TradePrint,
    WantSymbols,
)

START = dt.datetime(2025, 6, 2, 14, 0, tzinfo=dt.UTC)
FAST = QuoteStreamConfig(stale_after=30.0, reconnect_backoff_base=0.5)


# ---------------------------------------------------------------------------------------------
# The broker's side of the market stream, in memory
# ---------------------------------------------------------------------------------------------


class _ChannelSink:
    """The audit sink's never-blocking ``submit`` onto a channel the test can read."""

    def __init__(self, channel: trio.MemorySendChannel[AuditRecord]) -> None:
        self._channel = channel

    def submit(self, record: EngineEventRecord) -> None:
        self._channel.send_nowait(record)


@dataclass
class ServerConn:
    """The server end of one market-stream connection."""

    ws: trio_websocket.WebSocketConnection
    session_id: str

    async def subscription(self) -> dict[str, Any]:
        return json.loads(await self.ws.get_message())

    async def subscribed_symbols(self) -> list[str]:
        payload = await self.subscription()
        assert payload["sessionid"] == self.session_id
        return list(payload["symbols"])

    async def send(self, *events: dict[str, Any]) -> None:
        """One frame holding ``events`` (newline-separated, as with ``linebreak: true``)."""
        await self.ws.send_message("\n".join(json.dumps(e) for e in events))

    async def assert_no_message(self, seconds: float) -> None:
        with trio.move_on_after(seconds) as scope:
            message = await self.ws.get_message()
        assert scope.cancelled_caught, f"unexpected payload {message!r}"


class FakeMarket:
    """``connect`` for QuoteStream: every call is a fresh session over a fresh socket."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.sessions = 0
        self.attempts: list[float] = []  # trio time of every connect() call
        self.fail_next: list[Exception] = []  # what the next connect() calls raise instead
        self._accepted_send, self.accepted = trio.open_memory_channel[ServerConn](16)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[MarketSocket]:
        self.attempts.append(trio.current_time())
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.sessions += 1
        session_id = f"sess-{self.sessions}"
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self._serve, server_stream, session_id)
        ws = await trio_websocket.wrap_client_stream(
            self._nursery,
            client_stream,
            "ws.tradier.test",
            "/v1/markets/events",
        )
        try:
            yield MarketSocket(ws, session_id)
        finally:
            await ws.aclose()

    async def _serve(self, stream: trio.abc.Stream, session_id: str) -> None:
        request = await trio_websocket.wrap_server_stream(self._nursery, stream)
        ws = await request.accept()
        await self._accepted_send.send(ServerConn(ws, session_id))

    async def next_connection(self, within: float = 120.0) -> ServerConn:
        with trio.fail_after(within):
            return await self.accepted.receive()


@dataclass
class Harness:
    fanout: QuoteFanout
    market: FakeMarket
    commands: trio.MemorySendChannel[SubscriptionCommand]
    audit: trio.MemoryReceiveChannel[AuditRecord]
    logs: io.BytesIO
    audit_seen: list[EngineEventRecord] = field(default_factory=list)

    async def want(self, owner: str, *symbols: str) -> None:
        await self.commands.send(WantSymbols(owner=owner, symbols=frozenset(symbols)))

    async def release(self, owner: str) -> None:
        await self.commands.send(ReleaseSymbols(owner=owner))

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]

    def audit_kinds(self) -> list[str]:
        while True:
            try:
                record = self.audit.receive_nowait()
            except trio.WouldBlock:
                break
            assert isinstance(record, EngineEventRecord)
            self.audit_seen.append(record)
        return [r.kind for r in self.audit_seen]


def _fanout() -> tuple[QuoteFanout, io.BytesIO]:
    logs = io.BytesIO()
    log = Logger("quote_stream", sink=LogSink(stream=logs, level="debug"))
    return QuoteFanout(log=log), logs


@asynccontextmanager
async def running(
    config: QuoteStreamConfig = FAST, fail_connects: Sequence[Exception] = (), **kwargs: Any
) -> AsyncIterator[Harness]:
    fanout, logs = _fanout()
    async with trio.open_nursery() as nursery:
        market = FakeMarket(nursery)
        market.fail_next.extend(fail_connects)
        commands, inbox = trio.open_memory_channel[SubscriptionCommand](0)
        audit_send, audit_receive = trio.open_memory_channel[AuditRecord](100)
        await nursery.start(
            functools.partial(
                quote_stream.run,
                inbox=inbox,
                fanout=fanout,
                connect=market.connect,
                audit=_ChannelSink(audit_send),
                clock=TrioMarketClock(START),
                config=config,
                rng=random.Random(7),
                **kwargs,
            )
        )
        yield Harness(fanout, market, commands, audit_receive, logs)
        nursery.cancel_scope.cancel()


async def next_batch(box: QuoteMailbox, within: float = 1.0) -> dict[str, Any]:
    with trio.fail_after(within):
        return await box.get_batch()


async def next_value(box: QuoteMailbox, key: str, within: float = 1.0) -> Any:
    """The next value delivered under ``key`` (batches without it are skipped)."""
    with trio.fail_after(within):
        while key not in (batch := await box.get_batch()):
            pass
    return batch[key]


def quote(symbol: str, bid: str, ask: str, **extra: Any) -> dict[str, Any]:
    return {"type": "quote", "symbol": symbol, "bid": float(bid), "ask": float(ask), **extra}


def trade(symbol: str, price: str, size: str = "100") -> dict[str, Any]:
    return {"type": "trade", "symbol": symbol, "price": price, "size": size, "last": price}


# ---------------------------------------------------------------------------------------------
# Reconnects: a fresh session every time
# ---------------------------------------------------------------------------------------------


async def test_reconnects_with_a_fresh_session_after_a_dropped_socket(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY")
        first = await h.market.next_connection()
        while await first.subscribed_symbols() != ["SPY"]:
            pass
        await first.send(quote("SPY", "1.00", "1.05"))
        assert (await next_value(box, "SPY")).bid == Decimal("1.00")

        await first.ws.aclose()  # the broker drops the socket
        second = await h.market.next_connection(within=5)
        assert second.session_id == "sess-2"
        assert await second.subscribed_symbols() == ["SPY"]  # resubscribed at once
        await second.send(quote("SPY", "2.00", "2.05"))
        assert (await next_value(box, "SPY")).bid == Decimal("2.00")

        assert h.market.sessions == 2
        stats = h.fanout.statistics()
        assert stats.sessions == 2 and stats.reconnects == 1
        assert stats.feed_state is FeedState.CONNECTED
        assert h.audit_kinds() == [
            "quote_stream.connected",
            "quote_stream.disconnected",
            "quote_stream.connected",
        ]
        events = [e["event"] for e in h.log_events()]
        assert "quote_stream.reconnecting" in events


async def test_reconnects_with_a_fresh_session_after_a_stale_feed(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY")
        first = await h.market.next_connection()
        while await first.subscribed_symbols() != ["SPY"]:
            pass
        await first.send(quote("SPY", "1.00", "1.05"))
        await next_value(box, "SPY")
        last_frame = trio.current_time()

        # The socket stays open but goes silent: nothing may happen before stale_after...
        with trio.move_on_after(FAST.stale_after - 1.5):
            await h.market.accepted.receive()
            pytest.fail("reconnected before the feed was stale")
        assert h.fanout.feed_state is FeedState.CONNECTED
        # ...then it is declared stale and replaced by a new session.
        second = await h.market.next_connection(within=10)
        assert FAST.stale_after <= trio.current_time() - last_frame < FAST.stale_after + 1
        assert second.session_id == "sess-2"
        assert await second.subscribed_symbols() == ["SPY"]
        assert (await next_batch(box))[FEED_KEY].state is FeedState.CONNECTED

        stats = h.fanout.statistics()
        assert stats.stale_detections == 1 and stats.sessions == 2 and h.market.sessions == 2
        assert h.audit_kinds() == [
            "quote_stream.connected",
            "quote_stream.stale",
            "quote_stream.connected",
        ]


@pytest.mark.parametrize("case", ["market_closed", "nothing_subscribed"])
async def test_silence_is_not_stale_when_closed_or_unsubscribed(
    autojump_clock: trio.abc.Clock, case: str
) -> None:
    market_open = (lambda now: False) if case == "market_closed" else (lambda now: True)
    async with running(market_open=market_open) as h:
        if case == "market_closed":
            await h.want("trade:1", "SPY")
        first = await h.market.next_connection()
        await first.subscription()
        with trio.move_on_after(FAST.stale_after * 10):
            await h.market.accepted.receive()
            pytest.fail("a silent feed was reconnected")
        assert h.fanout.statistics().stale_detections == 0
        assert h.fanout.feed_state is FeedState.CONNECTED


async def test_connect_failures_back_off_exponentially_with_jitter(
    autojump_clock: trio.abc.Clock,
) -> None:
    failures = [RateLimited("too many sessions"), *(BrokerUnavailable("no") for _ in range(3))]
    async with running(fail_connects=failures) as h:
        conn = await h.market.next_connection(within=60)
        assert conn.session_id == "sess-1"
        await conn.subscription()
        await trio.testing.wait_all_tasks_blocked()
        attempts = h.market.attempts
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert len(gaps) == 4
        # base 0.5 doubling, each reduced by at most 20 % jitter
        for n, gap in enumerate(gaps):
            ceiling = 0.5 * 2**n
            assert ceiling * 0.8 <= gap <= ceiling + 1e-9, (n, gaps)
        assert h.fanout.feed_state is FeedState.CONNECTED
        assert h.fanout.statistics().reconnects == 4


async def test_a_connection_that_keeps_dropping_backs_off_until_one_lasts(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        await h.want("trade:1", "SPY")
        for _ in range(4):  # accepted, one quote, dropped at once
            conn = await h.market.next_connection(within=60)
            while await conn.subscribed_symbols() != ["SPY"]:
                pass
            await conn.send(quote("SPY", "1", "2"))
            await conn.ws.aclose()
        lasting = await h.market.next_connection(within=60)
        await lasting.subscription()
        await lasting.send(quote("SPY", "1", "2"))
        await trio.sleep(FAST.healthy_after)
        await lasting.ws.aclose()
        after_healthy = await h.market.next_connection(within=60)

        attempts = h.market.attempts
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        for n, gap in enumerate(gaps[:4]):  # short-lived: growing delays, 0.5 s doubling
            assert 0.8 * 0.5 * 2**n <= gap <= 0.5 * 2**n + 1e-9, gaps
        # after a connection that lasted, the delay is back to the base
        assert 0.4 <= gaps[4] - FAST.healthy_after <= 0.5 + 1e-9, gaps
        assert after_healthy.session_id == "sess-6"


# ---------------------------------------------------------------------------------------------
# The symbol set follows the watchers
# ---------------------------------------------------------------------------------------------


async def test_symbol_set_resent_when_watchers_come_and_go(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        conn = await h.market.next_connection()
        assert await conn.subscribed_symbols() == ["$empty$"]

        await h.want("trade:1", "X", "Y")
        assert await conn.subscribed_symbols() == ["X", "Y"]
        await h.want("trade:2", "Y", "Z")
        assert await conn.subscribed_symbols() == ["X", "Y", "Z"]
        await h.want("trade:3", "Y")  # the union does not change: nothing is re-sent
        await conn.assert_no_message(1.0)
        await h.release("trade:1")
        assert await conn.subscribed_symbols() == ["Y", "Z"]
        await h.want("trade:2", "Z")  # replaces trade:2's previous want; Y still held by 3
        await conn.assert_no_message(1.0)
        await h.release("trade:3")
        assert await conn.subscribed_symbols() == ["Z"]
        await h.release("trade:2")
        assert await conn.subscribed_symbols() == ["$empty$"]
        assert h.fanout.statistics().owners == 0


async def test_a_burst_of_changes_is_coalesced_into_one_payload(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        conn = await h.market.next_connection()
        assert await conn.subscribed_symbols() == ["$empty$"]
        sent_before = h.fanout.statistics().subscriptions_sent

        expected: set[str] = set()
        for i in range(20):  # a pool starting twenty watchers at once
            legs = (f"SPY2506{i:02d}P00500000", f"SPY2506{i:02d}P00495000", "SPY")
            expected.update(legs)
            await h.want(f"trade:{i}", *legs)

        assert await conn.subscribed_symbols() == sorted(expected)
        await conn.assert_no_message(2.0)
        assert h.fanout.statistics().subscriptions_sent == sent_before + 1
        assert h.fanout.statistics().subscribed_symbols == 41


# ---------------------------------------------------------------------------------------------
# Delivery: newest per symbol, never waiting on a watcher
# ---------------------------------------------------------------------------------------------


async def test_slow_watcher_gets_the_newest_quote_of_every_symbol(
    autojump_clock: trio.abc.Clock,
) -> None:
    symbols = ("SPY", "QQQ", "SPY250620P00500000")
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", *symbols)
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != sorted(symbols):
            pass
        await trio.testing.wait_all_tasks_blocked()
        await next_batch(box)  # the feed status: start from an empty mailbox
        assert h.fanout.statistics().conflated == box.statistics().conflated

        before = box.statistics()
        seen: dict[str, Any] = {}
        delivered = 0
        caught_up = trio.Event()
        final = Decimal("500.00")

        async def slow_watcher() -> None:
            nonlocal delivered
            while True:
                batch = await box.get_batch()
                delivered += len(batch)
                seen.update(batch)
                if all(s in seen and seen[s].bid == final for s in symbols) and (
                    seen.get(trade_key("SPY")) is not None and seen[trade_key("SPY")].last == final
                ):
                    caught_up.set()
                    return
                await trio.sleep(1.0)  # far slower than the feed

        frames_before = h.fanout.statistics().frames
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_watcher)
            for i in range(1, 501):
                price = f"{i}.00"
                await conn.send(*(quote(s, price, price) for s in symbols), trade("SPY", price))
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            # Every frame was taken while the watcher slept: the feed never waited for it.
            assert h.fanout.statistics().frames - frames_before == 500
            with trio.fail_after(2):  # the newest of every symbol reaches it
                await caught_up.wait()

        assert isinstance(seen[trade_key("SPY")], TradePrint)
        after = box.statistics()
        put = after.put - before.put
        assert put == 500 * len(symbols) + 500
        assert after.pending == 0 and delivered < 40  # few batches: it really was slow
        conflated = after.conflated - before.conflated
        assert conflated == put - delivered  # everything not delivered was superseded
        assert h.fanout.statistics().conflated == after.conflated  # its only mailbox


async def test_a_new_owner_of_a_streaming_symbol_gets_the_current_quote_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        first = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY")
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != ["SPY"]:
            pass
        await conn.send(quote("SPY", "500.10", "500.12"), trade("SPY", "500.11"))
        while "SPY" not in (batch := await next_batch(first)):
            pass
        assert batch["SPY"].bid == Decimal("500.10")

        second = h.fanout.mailbox("trade:2")
        await h.want("trade:2", "SPY")
        batch = await next_batch(second, within=0.001)  # no new frame needed
        assert batch["SPY"].bid == Decimal("500.10")
        assert batch[trade_key("SPY")].last == Decimal("500.11")
        assert batch[FEED_KEY].state is FeedState.CONNECTED
        await conn.assert_no_message(1.0)  # SPY was already subscribed: nothing re-sent
        assert h.fanout.latest_quote("SPY") == batch["SPY"]

        await conn.send(quote("SPY", "500.20", "500.22"))  # both owners get every new quote
        assert (await next_value(first, "SPY")).bid == Decimal("500.20")
        assert (await next_value(second, "SPY")).bid == Decimal("500.20")


async def test_released_owner_mailbox_is_closed_and_gets_nothing_more(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY")
        await h.want("trade:2", "SPY")
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != ["SPY"]:
            pass
        await h.release("trade:1")
        await conn.send(quote("SPY", "1.00", "1.01"))
        await trio.testing.wait_all_tasks_blocked()
        assert "SPY" not in await box.get_batch()  # only what was pending before the release
        with pytest.raises(trio.EndOfChannel):
            await box.get_batch()
        assert (await next_batch(h.fanout.mailbox("trade:2")))["SPY"].bid == Decimal("1.00")
        assert h.fanout.mailbox("trade:1") is not box  # a later owner of the key starts afresh


# ---------------------------------------------------------------------------------------------
# Decoding Tradier's mixed types, and frames that are not quotes
# ---------------------------------------------------------------------------------------------


async def test_tradier_mixed_types_are_decoded_exactly(autojump_clock: trio.abc.Clock) -> None:
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY")
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != ["SPY"]:
            pass
        await conn.ws.send_message(
            '{"type":"quote","symbol":"SPY","bid":281.84,"bidsz":60,"bidexch":"M",'
            '"biddate":"1557757189000","ask":281.85,"asksz":6,"askexch":"Z",'
            '"askdate":"1557757190000"}\n'
            '{"type":"trade","symbol":"SPY","exch":"J","price":"281.85","size":"100",'
            '"cvol":"27978993","date":"1557757190000","last":"281.85"}\n'
            '{"type":"tradex","symbol":"SPY","exch":"J","price":"281.86","size":"0",'
            '"cvol":"27978993","date":"1557757191000","last":"281.86"}\n'
            '{"type":"summary","symbol":"SPY","open":"282.42","high":"283.49",'
            '"low":"281.07","prevClose":"288.1"}\n'
            '{"type":"timesale","symbol":"SPY","exch":"Q","bid":"282.08","ask":"282.09",'
            '"last":"282.09","size":"100","date":"1557758874355","seq":352795,"flag":"",'
            '"cancel":false,"correction":false,"session":"normal"}\n'
            '{"type":"somethingnew","symbol":"SPY"}'
        )
        while "SPY" not in (batch := await next_batch(box)):
            pass
        q = batch["SPY"]
        assert isinstance(q, Quote)
        assert (q.bid, q.ask) == (Decimal("281.84"), Decimal("281.85"))
        assert str(q.bid) == "281.84"  # no float on the way
        assert (q.bid_size, q.ask_size) == (60, 6)
        assert (q.bid_at, q.ask_at) == (1557757189000, 1557757190000)
        t = batch[trade_key("SPY")]
        assert isinstance(t, TradePrint)
        # the tradex came last and is the newest print; its size "0" is a real print
        assert (t.last, t.size, t.traded_at) == (Decimal("281.86"), 0, 1557757191000)
        kinds = h.fanout.statistics().events_by_kind
        assert kinds == {
            "quote": 1,
            "trade": 1,
            "tradex": 1,
            "summary": 1,
            "timesale": 1,
            "error": 0,
        }


async def test_error_and_garbage_frames_do_not_kill_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        box = h.fanout.mailbox("trade:1")
        await h.want("trade:1", "SPY", "NOSUCH")
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != ["NOSUCH", "SPY"]:
            pass
        await conn.ws.send_message('{"error":"invalid symbol: NOSUCH"}')
        await conn.ws.send_message("this is not json")
        await conn.send(quote("SPY", "3.00", "3.10"))
        while "SPY" not in (batch := await next_batch(box)):
            pass
        assert batch["SPY"].bid == Decimal("3.00")

        stats = h.fanout.statistics()
        assert stats.events_by_kind["error"] == 1 and stats.bad_frames == 1
        assert stats.sessions == 1 and stats.reconnects == 0 and h.market.sessions == 1
        assert stats.feed_state is FeedState.CONNECTED
        logged = {e["event"]: e for e in h.log_events()}
        assert logged["quote_stream.error_frame"]["error"] == "invalid symbol: NOSUCH"
        assert "quote_stream.bad_frame" in logged


async def test_statistics_report_rate_kinds_and_subscriptions(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running() as h:
        await h.want("trade:1", "SPY", "QQQ")
        await h.want("trade:2", "SPY")
        conn = await h.market.next_connection()
        while await conn.subscribed_symbols() != ["QQQ", "SPY"]:
            pass
        for _ in range(100):
            await conn.send(quote("SPY", "1", "2"), quote("QQQ", "1", "2"), trade("SPY", "1"))
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        stats = h.fanout.statistics()
        assert stats.events_per_second == pytest.approx(300 / 10)  # 300 events, 10 s window
        assert stats.events_by_kind["quote"] == 200 and stats.events_by_kind["trade"] == 100
        assert stats.frames == 100 and stats.subscribed_symbols == 2 and stats.owners == 2
        await trio.sleep(30)
        assert h.fanout.statistics().events_per_second == 0


# ---------------------------------------------------------------------------------------------
# Polling fallback
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeQuotesEndpoint:
    calls: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)

    async def get_quotes(self, symbols: Sequence[str]) -> list[wire.RestQuote]:
        self.calls.append((trio.current_time(), tuple(symbols)))
        await trio.sleep(0.2)  # a round trip
        if self.failures:
            raise self.failures.pop(0)
        n = len(self.calls)
        return [
            wire.RestQuote(symbol=s, bid=Decimal(n), ask=Decimal(n) + 1, bid_date=n)
            for s in symbols
        ]


async def test_polling_mode_delivers_quotes_within_its_request_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    endpoint = FakeQuotesEndpoint()
    fanout, logs = _fanout()
    config = QuoteStreamConfig(stream_mode="poll", poll_requests_per_minute=6)
    commands, inbox = trio.open_memory_channel[SubscriptionCommand](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                quote_stream.run,
                inbox=inbox,
                fanout=fanout,
                rest_poll=endpoint.get_quotes,
                clock=TrioMarketClock(START),
                config=config,
            )
        )
        assert fanout.feed_state is FeedState.POLLING
        await trio.sleep(30)
        assert endpoint.calls == []  # nothing wanted: no request spent

        box = fanout.mailbox("trade:1")
        await commands.send(WantSymbols(owner="trade:1", symbols=frozenset({"SPY", "QQQ"})))
        start = trio.current_time()
        await trio.sleep(59)
        batch = await next_batch(box)
        nursery.cancel_scope.cancel()

    in_window = [t for t, _ in endpoint.calls if start <= t < start + 60]
    assert len(in_window) == 6  # 6 per minute, used in full and not exceeded
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(endpoint.calls)]
    assert min(gaps) >= 10 - 1e-9
    assert all(symbols == ("QQQ", "SPY") for _, symbols in endpoint.calls)  # one batch each
    assert batch["SPY"].bid == Decimal(len(endpoint.calls))  # the latest poll's quote
    assert batch[FEED_KEY].state is FeedState.POLLING
    assert fanout.statistics().polls == len(endpoint.calls)
    events = [json.loads(line) for line in logs.getvalue().splitlines()]
    polling = next(e for e in events if e["event"] == "quote_stream.polling")
    assert polling["level"] == "warning" and polling["interval_seconds"] == 10


async def test_polling_failures_say_so_and_respect_the_broker_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    endpoint = FakeQuotesEndpoint(
        failures=[BrokerUnavailable("HTTP 502"), RateLimited("slow down", retry_after=45)]
    )
    fanout, _ = _fanout()
    config = QuoteStreamConfig(stream_mode="poll", poll_requests_per_minute=6)
    commands, inbox = trio.open_memory_channel[SubscriptionCommand](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                quote_stream.run,
                inbox=inbox,
                fanout=fanout,
                rest_poll=endpoint.get_quotes,
                clock=TrioMarketClock(START),
                config=config,
            )
        )
        box = fanout.mailbox("trade:1")
        await commands.send(WantSymbols(owner="trade:1", symbols=frozenset({"SPY"})))
        await trio.sleep(1)
        assert fanout.feed_state is FeedState.DISCONNECTED  # the first poll failed
        assert (await next_batch(box))[FEED_KEY].state is FeedState.DISCONNECTED
        await trio.sleep(120)
        assert fanout.feed_state is FeedState.POLLING  # back once a poll succeeded
        nursery.cancel_scope.cancel()

    times = [t for t, _ in endpoint.calls]
    assert times[1] - times[0] >= 10 - 1e-9
    assert times[2] - times[1] >= 45 - 1e-9  # the broker's retry_after beats our interval
    assert fanout.feed_state is FeedState.DISCONNECTED  # stopped
    assert fanout.statistics().poll_failures == 2 and fanout.statistics().polls >= 3


# ---------------------------------------------------------------------------------------------
# Fatal: a refused token is never retried
# ---------------------------------------------------------------------------------------------


async def test_auth_failed_is_fatal_and_not_retried(autojump_clock: trio.abc.Clock) -> None:
    session_requests = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal session_requests
        session_requests += 1
        return httpx.Response(
            401, json={"fault": {"faultstring": "Invalid Access Token", "detail": {}}}
        )

    fanout, _ = _fanout()
    _, inbox = trio.open_memory_channel[SubscriptionCommand](0)
    async with TradierRest(
        base_url="http://api/v1", token="t", account_id="A", transport=httpx.MockTransport(handler)
    ) as rest:
        with trio.fail_after(60), pytest.RaisesGroup(AuthFailed):
            await quote_stream.run(
                inbox=inbox,
                fanout=fanout,
                connect=functools.partial(open_market_socket, rest, "ws://127.0.0.1:1/x"),
                clock=TrioMarketClock(START),
            )
    assert session_requests == 1
    assert fanout.feed_state is FeedState.DISCONNECTED


# ---------------------------------------------------------------------------------------------
# Pure translations
# ---------------------------------------------------------------------------------------------


def test_translations_keep_tradier_meanings() -> None:
    decode = msgspec.json.Decoder(wire.StreamEvent, strict=False).decode
    zero_bid = decode(b'{"type":"quote","symbol":"X","bid":0,"ask":0.05}')
    assert isinstance(zero_bid, wire.QuoteEvent)
    q = quote_from_event(zero_bid, 3.5)
    assert q.bid == Decimal(0) and q.bid is not None  # a zero bid is a real quote
    assert (q.bid_size, q.bid_at, q.received_at) == (0, None, 3.5)
    one_sided = quote_from_event(decode(b'{"type":"quote","symbol":"X","ask":1}'), 0.0)
    assert one_sided.bid is None

    last_only = decode(b'{"type":"trade","symbol":"X","last":"1.5","size":"3"}')
    assert isinstance(last_only, wire.TradeEvent)
    assert trade_from_event(last_only, 0.0) == TradePrint(
        symbol="X", last=Decimal("1.5"), size=3, received_at=0.0
    )
    no_price = decode(b'{"type":"trade","symbol":"X","size":"3"}')
    assert trade_from_event(no_price, 0.0) is None

    rest = wire.RestQuote(
        symbol="SPY", bid=Decimal("1.1"), ask=None, bidsize=5, bid_date=1557757189000
    )
    assert quote_from_rest(rest, 9.0) == Quote(
        symbol="SPY",
        bid=Decimal("1.1"),
        ask=None,
        bid_size=5,
        bid_at=1557757189000,
        received_at=9.0,
    )


def test_feed_status_is_in_a_new_mailbox_from_the_start() -> None:
    fanout, _ = _fanout()
    box = fanout.mailbox("trade:7")
    assert box is fanout.mailbox("trade:7")
    assert box.statistics().pending == 1
    assert fanout.feed_status == FeedStatusChanged(
        state=FeedState.DISCONNECTED, reason="not started", at=fanout.feed_status.at
    )


# ---------------------------------------------------------------------------------------------
# Against a real WebSocket server, with the production socket
# ---------------------------------------------------------------------------------------------


async def test_real_websocket_server_reconnect_uses_a_new_session() -> None:
    session_ids = iter(f"real-{i}" for i in range(1, 100))
    created: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/markets/events/session"
        created.append(next(session_ids))
        return httpx.Response(200, json={"stream": {"url": "x", "sessionid": created[-1]}})

    payloads: list[dict[str, Any]] = []
    connections = 0

    async def server(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        ws = await request.accept()
        while True:
            payloads.append(json.loads(await ws.get_message()))
            if payloads[-1]["symbols"] == ["SPY"]:
                break
        bid = 1.0 if mine == 1 else 2.0
        await ws.send_message(json.dumps(quote("SPY", str(bid), str(bid + 0.05))))
        if mine == 1:
            await ws.aclose()  # drop the first connection after one quote
        else:
            await trio.sleep_forever()

    fanout, _ = _fanout()
    commands, inbox = trio.open_memory_channel[SubscriptionCommand](0)
    config = QuoteStreamConfig(reconnect_backoff_base=0.01, reconnect_backoff_max=0.05)
    with trio.fail_after(10):
        async with (
            TradierRest(
                base_url="http://api/v1",
                token="t",
                account_id="A",
                transport=httpx.MockTransport(handler),
            ) as rest,
            trio.open_nursery() as nursery,
        ):
            ws_server = await nursery.start(
                trio_websocket.serve_websocket, server, "127.0.0.1", 0, None
            )
            url = f"ws://127.0.0.1:{ws_server.port}/v1/markets/events"
            box = fanout.mailbox("trade:1")
            await nursery.start(
                functools.partial(
                    quote_stream.run,
                    inbox=inbox,
                    fanout=fanout,
                    connect=functools.partial(open_market_socket, rest, url),
                    clock=TrioMarketClock(START),
                    config=config,
                )
            )
            await commands.send(WantSymbols(owner="trade:1", symbols=frozenset({"SPY"})))
            bids: list[Decimal] = []
            while Decimal("2.00") not in bids:
                batch = await box.get_batch()
                if "SPY" in batch:
                    bids.append(batch["SPY"].bid)
            nursery.cancel_scope.cancel()

    assert created[:2] == ["real-1", "real-2"] and connections == len(created) >= 2
    assert {p["sessionid"] for p in payloads} <= set(created)
    assert payloads[-1] == {
        "symbols": ["SPY"],
        "sessionid": "real-2",
        "filter": ["quote", "trade", "summary"],
        "linebreak": True,
        "validOnly": True,
        "advancedDetails": False,
    }
    assert fanout.statistics().sessions == 2
