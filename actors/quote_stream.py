"""QuoteStream: the market-data connection, and the fan-out of quotes to watchers by symbol.

**Fan-out.** A :class:`QuoteFanout` is created by the composition root and handed to both
QuoteStream (which owns and mutates it) and WatcherPool (whose watchers only *read* from it).
A watcher calls ``fanout.mailbox(owner)`` to get its :class:`~engine.conflate.ConflatingMailbox`
and sends :class:`~engine.messages.WantSymbols` / :class:`~engine.messages.ReleaseSymbols` on
QuoteStream's inbox; the routing table (symbol -> mailboxes) changes only when QuoteStream's
task receives those. A mailbox holds the newest value per key:

==============================  ==========================================================
key                             value
==============================  ==========================================================
``symbol``                      the newest :class:`Quote` of that symbol
``trade_key(symbol)``           the newest :class:`TradePrint` (``"trade:" + symbol``): a
                                separate key so that a print never hides a pending quote
``FEED_KEY`` (``"__feed__"``)   the newest :class:`FeedStatusChanged`: feed health is
                                *state*, so it conflates like a quote (newest wins)
==============================  ==========================================================

A new mailbox starts with the current feed status in it, and an owner that starts wanting a
symbol already streaming gets that symbol's latest quote (and print) at once. ReleaseSymbols
closes and forgets the owner's mailbox (its consumer drains it, then sees EndOfChannel). One
owner key belongs to one watcher at a time: a restarted watcher should use a fresh key (a
Release still queued for the old key would otherwise close the mailbox the new one just got).

The routing table lives in the fanout, not in :func:`run`, so it survives a restart of
QuoteStream: a restarted incarnation resubscribes to what the watchers already asked for.

**Hot path.** frame -> :func:`~engine.brokers.tradier.wire.decode_market_frame` -> per event,
one dict lookup; symbols nobody wants cost no message; a wanted quote becomes one
:class:`Quote` put into each owner's mailbox. ``put`` never blocks, so a slow watcher never
slows the feed; nothing is logged per event.

**Connection** (``stream_mode = "websocket"``): ``connect()`` opens a fresh session and socket
(in production ``functools.partial(open_market_socket, rest, ws_url)``); QuoteStream sends the
union of all wants, and re-sends the whole list when it changes, coalescing a burst of changes
into one payload (``resubscribe_debounce`` after the first change). No frame for
``stale_after`` seconds while symbols are subscribed and ``market_open(now)`` says so is a stale
feed. A stale feed, a closed socket or any :class:`BrokerError` ends the connection; QuoteStream
waits a jittered exponential backoff (reset by a connection that delivered frames for
``healthy_after`` seconds) and
connects again with a fresh session. :class:`AuthFailed` is fatal and propagates (inside the
nursery's exception group; the supervisor finds it there). ``{"error": ...}`` frames (a bad
symbol) and undecodable frames are logged and counted; the feed goes on.

**Polling** (``stream_mode = "poll"``, for Tradier's sandbox, which has no market stream): one
REST request for all subscribed symbols every ``60 / poll_requests_per_minute`` seconds, into
the same fan-out; the feed state says POLLING and a warning is logged at start.

**Feed state** changes are logged, put into every mailbox under ``FEED_KEY``, and sent to
``audit`` as :class:`EngineEventRecord` (``quote_stream.connected`` / ``.stale`` /
``.disconnected`` / ``.polling``) through its never-blocking ``submit`` (the AuditSink); a sink
that is already closed counts the record in ``audit_dropped`` and logs an error.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Literal, NamedTuple, NoReturn, Protocol, TypeAlias, assert_never

import msgspec
import trio

from engine.brokers.tradier import wire
from engine.brokers.tradier.translate import quote_from_event, quote_from_rest, trade_from_event
from engine.clock import MarketClock
from engine.conflate import ConflatingMailbox
from engine.errors import BrokerAnswerInvalid, BrokerError, ConfigError, RateLimited
from engine.log import Level, Logger, get_logger
from engine.messages import (
    EngineEventRecord,
    FeedEvent,
    FeedState,
    FeedStatusChanged,
    Quote,
    ReleaseSymbols,
    SubscriptionCommand,
    TradePrint,
    WantSymbols,
)
from engine.supervisor import Backoff

__all__ = [
    "FEED_KEY",
    "Connect",
    "EventSink",
    "MarketFeedSocket",
    "QuoteFanout",
    "QuoteMailbox",
    "QuoteStreamConfig",
    "QuoteStreamStatistics",
    "RestPoll",
    "run",
    "trade_key",
]

FEED_KEY = "__feed__"
_TRADE_PREFIX = "trade:"
_ACTOR = "quote_stream"
_LOGGED_SYMBOLS = 20  # a subscription log names its symbols only when there are few

QuoteMailbox: TypeAlias = ConflatingMailbox[str, FeedEvent]

_KIND_NAMES: dict[type, str] = {
    wire.QuoteEvent: "quote",
    wire.TradeEvent: "trade",
    wire.TradexEvent: "tradex",
    wire.SummaryEvent: "summary",
    wire.TimesaleEvent: "timesale",
}


class EventSink(Protocol):
    """Where feed-state records go (``actors.audit_writer.AuditSink`` fits): never blocks."""

    def submit(self, record: EngineEventRecord) -> None: ...


def trade_key(symbol: str) -> str:
    """The mailbox key of ``symbol``'s trade prints."""
    return _TRADE_PREFIX + symbol


class MarketFeedSocket(Protocol):
    """What :func:`run` needs of a market socket (``MarketSocket`` in production)."""

    async def subscribe(self, symbols: Iterable[str]) -> None: ...
    async def receive(self) -> str | bytes: ...


_Positive = Annotated[float, msgspec.Meta(gt=0)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0)]

Connect: TypeAlias = Callable[[], AbstractAsyncContextManager[MarketFeedSocket]]
RestPoll: TypeAlias = Callable[[Sequence[str]], Awaitable[Sequence[wire.RestQuote]]]


class QuoteStreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """QuoteStream's settings (seconds unless named otherwise); bounds apply when decoded."""

    stream_mode: Literal["websocket", "poll"] = "websocket"
    # Tradier re-sends old quotes about every 20 s on a quiet but healthy socket.
    stale_after: _Positive = 60.0
    resubscribe_debounce: _NonNegative = 0.05
    # A connection that delivered frames for this long resets the backoff; one that keeps
    # dropping right after connecting backs off (Tradier refuses sessions asked too fast).
    healthy_after: _NonNegative = 30.0
    reconnect_backoff_base: _Positive = 0.5
    reconnect_backoff_max: _Positive = 30.0
    reconnect_backoff_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    # Tradier's market-data budget is 60/min on sandbox (120 live): leave room for others.
    poll_requests_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 50

    def backoff(self) -> Backoff:
        return Backoff(
            base=self.reconnect_backoff_base,
            max=self.reconnect_backoff_max,
            jitter=self.reconnect_backoff_jitter,
        )


class QuoteStreamStatistics(msgspec.Struct, frozen=True, kw_only=True):
    feed_state: FeedState
    events_per_second: float  # market events over the last ``rate_window`` seconds
    events_by_kind: dict[str, int]  # quote, trade, tradex, summary, timesale, error
    frames: int
    bad_frames: int  # frames that did not decode (logged, skipped)
    sessions: int  # connections opened, each on a fresh session
    reconnects: int  # times the connection was lost or failed and retried
    stale_detections: int
    subscriptions_sent: int
    subscribed_symbols: int
    owners: int
    conflated: int  # quotes replaced unread in a mailbox (released mailboxes included)
    polls: int
    poll_failures: int
    audit_dropped: int


class _Route:
    """One subscribed symbol: who wants it and its latest values (for late subscribers)."""

    __slots__ = ("mailboxes", "quote", "symbol", "trade", "trade_key")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.trade_key = trade_key(symbol)
        self.mailboxes: list[QuoteMailbox] = []
        self.quote: Quote | None = None
        self.trade: TradePrint | None = None


class QuoteFanout:
    """Routing table and mailboxes; see the module docstring.

    Invariants: ``_routes`` holds exactly the symbols in the union of ``_wants``, each with the
    mailboxes of the owners wanting it (once each); every owner in ``_wants`` has a mailbox in
    ``_mailboxes``; ``_version`` increases whenever the set of routed symbols changes, and
    ``_changed`` is set then replaced. Only QuoteStream's tasks call the ``_`` methods.
    """

    def __init__(self, *, log: Logger | None = None, rate_window: float = 10.0) -> None:
        self._log = log if log is not None else get_logger(_ACTOR)
        self._mailboxes: dict[str, QuoteMailbox] = {}
        self._wants: dict[str, frozenset[str]] = {}
        self._routes: dict[str, _Route] = {}
        self._version = 0
        self._changed = trio.Event()
        self._status = FeedStatusChanged(
            state=FeedState.DISCONNECTED, reason="not started", at=dt.datetime.now(dt.UTC)
        )
        self._rate_window = rate_window
        self._rate_second = 0
        self._rate_count = 0
        self._rate_history: deque[tuple[int, int]] = deque(maxlen=int(rate_window) + 2)
        self._kinds = dict.fromkeys(_KIND_NAMES.values(), 0)
        self._error_frames = 0
        self._frames = 0
        self._bad_frames = 0
        self._released_conflated = 0
        self._sessions = 0
        self._reconnects = 0
        self._stale = 0
        self._subscriptions_sent = 0
        self._polls = 0
        self._poll_failures = 0
        self._audit_dropped = 0

    # -- what watchers use -------------------------------------------------------------------

    def mailbox(self, owner: str) -> QuoteMailbox:
        """``owner``'s mailbox, created (holding the current feed status) if it has none."""
        mailbox = self._mailboxes.get(owner)
        if mailbox is None:
            mailbox = self._mailboxes[owner] = ConflatingMailbox()
            mailbox.put(FEED_KEY, self._status)
        return mailbox

    @property
    def feed_state(self) -> FeedState:
        return self._status.state

    @property
    def feed_status(self) -> FeedStatusChanged:
        return self._status

    @property
    def symbols(self) -> frozenset[str]:
        """Every symbol some owner wants (what QuoteStream subscribes to)."""
        return frozenset(self._routes)

    def latest_quote(self, symbol: str) -> Quote | None:
        route = self._routes.get(symbol)
        return None if route is None else route.quote

    def statistics(self) -> QuoteStreamStatistics:
        return QuoteStreamStatistics(
            feed_state=self._status.state,
            events_per_second=self._events_per_second(trio.current_time()),
            events_by_kind={**self._kinds, "error": self._error_frames},
            frames=self._frames,
            bad_frames=self._bad_frames,
            sessions=self._sessions,
            reconnects=self._reconnects,
            stale_detections=self._stale,
            subscriptions_sent=self._subscriptions_sent,
            subscribed_symbols=len(self._routes),
            owners=len(self._wants),
            conflated=self._released_conflated
            + sum(m.statistics().conflated for m in self._mailboxes.values()),
            polls=self._polls,
            poll_failures=self._poll_failures,
            audit_dropped=self._audit_dropped,
        )

    # -- QuoteStream's task only: subscriptions -------------------------------------------------

    def _apply(self, command: SubscriptionCommand) -> None:
        match command:
            case WantSymbols(owner=owner, symbols=symbols):
                self._want(owner, symbols)
            case ReleaseSymbols(owner=owner):
                self._release(owner)
            case _:
                assert_never(command)

    def _want(self, owner: str, symbols: frozenset[str]) -> None:
        mailbox = self.mailbox(owner)
        previous = self._wants.get(owner, frozenset())
        changed = False
        for symbol in previous - symbols:
            changed |= self._unroute(symbol, mailbox)
        for symbol in symbols - previous:
            route = self._routes.get(symbol)
            if route is None:
                route = self._routes[symbol] = _Route(symbol)
                changed = True
            route.mailboxes.append(mailbox)
            # A symbol already streaming: the new owner gets its current values now.
            if route.quote is not None:
                mailbox.put(symbol, route.quote)
            if route.trade is not None:
                mailbox.put(route.trade_key, route.trade)
        self._wants[owner] = symbols
        if changed:
            self._bump()

    def _release(self, owner: str) -> None:
        symbols = self._wants.pop(owner, frozenset())
        mailbox = self._mailboxes.pop(owner, None)
        if mailbox is None:
            return
        changed = False
        for symbol in symbols:
            changed |= self._unroute(symbol, mailbox)
        self._released_conflated += mailbox.statistics().conflated
        mailbox.close()
        if changed:
            self._bump()

    def _unroute(self, symbol: str, mailbox: QuoteMailbox) -> bool:
        """Stop delivering ``symbol`` to ``mailbox``; True when nobody wants it any more."""
        route = self._routes[symbol]
        route.mailboxes.remove(mailbox)
        if route.mailboxes:
            return False
        del self._routes[symbol]
        return True

    def _bump(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self, version: int) -> None:
        """Return once the routed symbol set is no longer the one of ``version``."""
        while self._version == version:
            await self._changed.wait()

    def _set_feed(self, state: FeedState, reason: str, at: dt.datetime) -> bool:
        """Publish a new feed state to every mailbox; False (nothing done) if unchanged."""
        if state is self._status.state:
            return False
        status = self._status = FeedStatusChanged(state=state, reason=reason, at=at)
        for mailbox in self._mailboxes.values():
            mailbox.put(FEED_KEY, status)
        return True

    # -- QuoteStream's task only: the hot path ------------------------------------------------

    def _on_frame(self, frame: str | bytes, now: float) -> None:
        """Decode one frame and deliver its events. ``now`` is trio time, read once per frame."""
        self._frames += 1
        routes = self._routes
        kinds = self._kinds
        count = 0
        try:
            for event in wire.decode_market_frame(frame):
                count += 1
                if isinstance(event, wire.QuoteEvent):
                    kinds["quote"] += 1
                    route = routes.get(event.symbol)
                    if route is not None:
                        quote = route.quote = quote_from_event(event, now)
                        for mailbox in route.mailboxes:
                            mailbox.put(route.symbol, quote)
                elif isinstance(event, wire.TradeEvent | wire.TradexEvent):
                    kinds[_KIND_NAMES[type(event)]] += 1
                    route = routes.get(event.symbol)
                    if route is not None:
                        trade = trade_from_event(event, now)
                        if trade is not None:
                            route.trade = trade
                            for mailbox in route.mailboxes:
                                mailbox.put(route.trade_key, trade)
                elif isinstance(event, wire.ErrorFrame):
                    # Tradier's answer to a bad symbol or session: worth a line, not a reconnect.
                    self._error_frames += 1
                    self._log.warning("quote_stream.error_frame", error=event.error)
                else:  # summary, timesale: counted, not delivered (no watcher uses them yet)
                    kinds[_KIND_NAMES[type(event)]] += 1
        except BrokerAnswerInvalid as exc:
            self._bad_frames += 1
            self._log.warning("quote_stream.bad_frame", error=str(exc))
        self._count_rate(count, now)

    def _on_rest_quotes(self, quotes: Iterable[wire.RestQuote], now: float) -> None:
        routes = self._routes
        count = 0
        for row in quotes:
            count += 1
            route = routes.get(row.symbol)
            if route is not None:
                quote = route.quote = quote_from_rest(row, now)
                for mailbox in route.mailboxes:
                    mailbox.put(route.symbol, quote)
        self._kinds["quote"] += count
        self._count_rate(count, now)

    def _count_rate(self, count: int, now: float) -> None:
        second = int(now)
        if second != self._rate_second:
            self._rate_history.append((self._rate_second, self._rate_count))
            self._rate_second, self._rate_count = second, 0
        self._rate_count += count

    def _events_per_second(self, now: float) -> float:
        since = now - self._rate_window
        total = sum(count for second, count in self._rate_history if second >= since)
        if self._rate_second >= since:
            total += self._rate_count
        return total / self._rate_window


def _always_open(now: dt.datetime) -> bool:
    return True


class _SessionEnd(NamedTuple):
    reason: str
    healthy: bool  # frames arrived over ``healthy_after``: the backoff starts over
    stale: bool


class _Runner:
    """One incarnation of QuoteStream: its dependencies and the loops of its tasks."""

    def __init__(
        self,
        *,
        fanout: QuoteFanout,
        audit: EventSink | None,
        clock: MarketClock,
        config: QuoteStreamConfig,
        market_open: Callable[[dt.datetime], bool],
        rng: random.Random,
    ) -> None:
        self.fanout = fanout
        self.audit = audit
        self.clock = clock
        self.config = config
        self.market_open = market_open
        self.rng = rng
        self.log = fanout._log

    async def commands(self, inbox: trio.MemoryReceiveChannel[SubscriptionCommand]) -> None:
        with inbox:
            async for command in inbox:
                self.fanout._apply(command)

    # -- websocket mode -----------------------------------------------------------------------

    async def stream(self, connect: Connect) -> NoReturn:
        backoff, fanout = self.config.backoff(), self.fanout
        failures = 0
        while True:
            end: _SessionEnd | None = None
            floor = 0.0
            try:
                async with connect() as socket:
                    fanout._sessions += 1
                    end = await self._session(socket)
            except RateLimited as exc:
                floor = exc.retry_after or 0.0
                end = end or _SessionEnd(str(exc), healthy=False, stale=False)
            except BrokerError as exc:
                # Also a close handshake that failed after the session had already ended.
                end = end or _SessionEnd(str(exc), healthy=False, stale=False)
            assert end is not None
            if not end.stale:
                self.feed(FeedState.DISCONNECTED, end.reason, "reconnecting with a fresh session")
            failures = 0 if end.healthy else failures + 1
            delay = max(floor, backoff.delay(max(0, failures - 1), self.rng))
            fanout._reconnects += 1
            self.log.warning(
                "quote_stream.reconnecting",
                reason=end.reason,
                delay_seconds=round(delay, 3),
                consecutive_failures=failures,
            )
            await trio.sleep(delay)

    async def _session(self, socket: MarketFeedSocket) -> _SessionEnd:
        fanout = self.fanout
        frames_before, started = fanout._frames, trio.current_time()
        version, symbols = fanout._version, fanout.symbols
        try:
            await socket.subscribe(symbols)
        except BrokerError as exc:
            return _SessionEnd(str(exc), healthy=False, stale=False)
        self._subscribed(symbols)
        self.feed(FeedState.CONNECTED, "market stream connected", f"subscribed {len(symbols)}")
        ended: list[_SessionEnd] = []

        async with trio.open_nursery() as nursery:

            async def until_broken(body: Callable[[], Awaitable[_SessionEnd]]) -> None:
                try:
                    ended.append(await body())
                except BrokerError as exc:
                    ended.append(_SessionEnd(str(exc), healthy=False, stale=False))
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_broken, functools.partial(self._pump, socket))
            nursery.start_soon(
                until_broken, functools.partial(self._resubscribe, socket, version, symbols)
            )
        reason, _, stale = ended[0]
        lasted = trio.current_time() - started >= self.config.healthy_after
        return _SessionEnd(reason, healthy=lasted and fanout._frames > frames_before, stale=stale)

    async def _pump(self, socket: MarketFeedSocket) -> _SessionEnd:
        """Receive and deliver frames until the socket breaks (raises) or goes stale."""
        fanout, receive = self.fanout, socket.receive
        stale_after = self.config.stale_after
        last_frame = trio.current_time()
        while True:
            # The watchdog is armed once per silence window, not moved on every frame: when it
            # fires after frames did arrive, it is simply re-armed from the last one.
            with trio.CancelScope(deadline=last_frame + stale_after):
                while True:
                    frame = await receive()
                    last_frame = trio.current_time()
                    fanout._on_frame(frame, last_frame)
            now = trio.current_time()
            if now - last_frame < stale_after:
                continue
            # Silence is normal with nothing subscribed, or outside market hours.
            if not fanout._routes or not self.market_open(self.clock.now()):
                last_frame = now
                continue
            fanout._stale += 1
            reason = f"no frame for {stale_after:g} s"
            self.feed(FeedState.STALE, reason, "reconnecting with a fresh session")
            return _SessionEnd(reason, healthy=False, stale=True)

    async def _resubscribe(
        self, socket: MarketFeedSocket, version: int, sent: frozenset[str]
    ) -> _SessionEnd:
        fanout = self.fanout
        while True:
            await fanout._wait_change(version)
            # Coalesce a burst (a pool starting many watchers) into one payload.
            await trio.sleep(self.config.resubscribe_debounce)
            version, symbols = fanout._version, fanout.symbols
            if symbols != sent:
                await socket.subscribe(symbols)
                sent = symbols
                self._subscribed(symbols)

    def _subscribed(self, symbols: frozenset[str]) -> None:
        self.fanout._subscriptions_sent += 1
        if len(symbols) <= _LOGGED_SYMBOLS:
            self.log.info("quote_stream.subscribed", count=len(symbols), symbols=sorted(symbols))
        else:
            self.log.info("quote_stream.subscribed", count=len(symbols))

    # -- poll mode ----------------------------------------------------------------------------

    async def poll(
        self, rest_poll: RestPoll, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        fanout = self.fanout
        interval = 60.0 / self.config.poll_requests_per_minute
        polling = f"no market stream: polling REST quotes every {interval:g} s"
        self.log.warning(
            "quote_stream.polling",
            interval_seconds=interval,
            requests_per_minute=self.config.poll_requests_per_minute,
        )
        self.feed(FeedState.POLLING, polling, "polling REST quotes")
        task_status.started()  # the feed says POLLING from the moment run() has started
        next_at = trio.current_time()
        while True:
            while not fanout._routes:
                await fanout._wait_change(fanout._version)
            await trio.sleep_until(next_at)
            symbols = sorted(fanout._routes)
            if not symbols:
                continue
            # Every request spends budget, answered or not: the next one waits its turn.
            next_at = trio.current_time() + interval
            try:
                rows = await rest_poll(symbols)
            except BrokerError as exc:
                fanout._poll_failures += 1
                if isinstance(exc, RateLimited) and exc.retry_after:
                    next_at = max(next_at, trio.current_time() + exc.retry_after)
                self.log.warning("quote_stream.poll_failed", error=str(exc))
                self.feed(FeedState.DISCONNECTED, str(exc), "polling again within budget")
                continue
            fanout._polls += 1
            fanout._on_rest_quotes(rows, trio.current_time())
            self.feed(FeedState.POLLING, polling, "polling REST quotes")

    # -- feed state ---------------------------------------------------------------------------

    def feed(self, state: FeedState, reason: str, action_taken: str) -> None:
        """Publish a feed state change to watchers, the log and the audit trail."""
        at = self.clock.now()
        if not self.fanout._set_feed(state, reason, at):
            return
        healthy = state in (FeedState.CONNECTED, FeedState.POLLING)
        level: Level = "info" if healthy else "warning"
        kind = f"quote_stream.{state.value}"
        self.log.log(level, kind, reason=reason, action_taken=action_taken)
        if self.audit is None:
            return
        record = EngineEventRecord(
            kind=kind,
            actor=_ACTOR,
            level=level.upper(),
            message=reason,
            action_taken=action_taken,
            detail={"sessions": self.fanout._sessions, "symbols": len(self.fanout._routes)},
            at=at,
        )
        try:
            self.audit.submit(record)
        except trio.ClosedResourceError:
            self.fanout._audit_dropped += 1
            self.log.error("quote_stream.audit_dropped", kind=kind)


async def run(
    *,
    inbox: trio.MemoryReceiveChannel[SubscriptionCommand],
    fanout: QuoteFanout,
    clock: MarketClock,
    connect: Connect | None = None,
    rest_poll: RestPoll | None = None,
    audit: EventSink | None = None,
    config: QuoteStreamConfig | None = None,
    market_open: Callable[[dt.datetime], bool] = _always_open,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run QuoteStream until cancelled (see the module docstring).

    ``connect`` is required in websocket mode, ``rest_poll`` (``rest.get_quotes``) in poll
    mode. ``inbox`` is closed on exit; ``audit`` is not (it belongs to the caller). Reports
    started at once: a feed that is down at start must not hold the engine up.
    """
    config = config if config is not None else QuoteStreamConfig()
    if config.stream_mode == "websocket" and connect is None:
        raise ConfigError("quote stream: stream_mode 'websocket' needs a market socket")
    if config.stream_mode == "poll" and rest_poll is None:
        raise ConfigError("quote stream: stream_mode 'poll' needs a REST quotes call")
    runner = _Runner(
        fanout=fanout,
        audit=audit,
        clock=clock,
        config=config,
        market_open=market_open,
        rng=rng if rng is not None else random.Random(),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.commands, inbox)
            if rest_poll is not None and config.stream_mode == "poll":
                await nursery.start(runner.poll, rest_poll)
            elif connect is not None:
                nursery.start_soon(runner.stream, connect)
            task_status.started()
    finally:
        runner.feed(FeedState.DISCONNECTED, "quote stream stopped", "none: the actor ended")
