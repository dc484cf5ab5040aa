"""The composition root: builds the supervision tree and runs the engine.

This is the one module under ``engine/`` that imports ``actors``. Everything the actors need is
made here and passed down as keyword arguments; nothing below reads the environment.

Tree (started in this order, stopped in reverse; DESIGN section 2)::

    engine (one_for_one)
    ├── audit_writer          drains the AuditSink into decisions/events (group commit)
    ├── quote_stream          market data in, fanned out by symbol to the watchers' mailboxes
    ├── tracking (escalates on any crash, so the root restarts both together)
    │   ├── portfolio_mirror  broker positions -> trades -> spread lifecycle
    │   └── watcher_pool      one PositionWatcher per managed open spread
    ├── order_router          exit intents -> closing orders -> fills -> trade accounting
    │                         (not started in dry run: nothing is sent, nothing re-priced)
    └── control_listener      the operator's halt / resume / close, through the database

The mirror and the pool restart together because the pool's watchers exist only as the mirror
announced them: a lone pool restart would leave the spreads unwatched until the next change,
while a mirror restart is a cold start that announces every open trade again.

Channels that outlive a restart (the intents into the router, the router's events into the pool,
refresh requests into the mirror) are made here once; each incarnation of an actor works on
clones of its ends, so one actor's restart never closes another's channel.

Dry run sends no order: watchers decide and record every decision marked dry run.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from actors import (
    audit_writer,
    control_listener,
    order_router,
    portfolio_mirror,
    position_watcher,
    quote_stream,
    watcher_pool,
)
from actors.audit_writer import AuditSink
from actors.order_follower import RouterSettings
from actors.position_watcher import WatcherSettings
from actors.quote_stream import QuoteFanout, QuoteStreamConfig
from engine.brokers import OrderBroker
from engine.brokers.paper import PaperBroker
from engine.brokers.tradier.broker import TradierBroker
from engine.brokers.tradier.rest import TradierRest
from engine.brokers.tradier.stream import open_market_socket
from engine.calendar import MarketCalendar
from engine.clock import MarketClock, SystemMarketClock
from engine.config import Config
from engine.http import Endpoint, ReadinessLimits, listening, make_app, serve
from engine.log import Level, get_logger
from engine.messages import (
    CloseTradeNow,
    ControlCommand,
    Halt,
    RefreshPositions,
    Resume,
    RouterCommand,
    RouterEvent,
    SpreadLifecycle,
    SubscriptionCommand,
    TradeSnapshot,
    WantSymbols,
)
from engine.metrics import EngineMetrics
from engine.preflight import require_credentials
from engine.supervisor import ChildSpec, Supervisor
from storage import Database
from storage.audit import DatabaseAuditStore
from storage.orders import PgOrderStore
from storage.trades import PgTradeStore

__all__ = ["EngineHandle", "journal_path", "run_engine"]

_log = get_logger("engine")


@dataclass
class EngineHandle:
    """What ``run_engine`` hands its starter: the live parts, for status, tests and metrics."""

    config: Config
    db: Database
    fanout: QuoteFanout
    audit: AuditSink
    supervisor: Supervisor
    refresh: trio.MemorySendChannel[RefreshPositions]
    commands: trio.MemorySendChannel[RouterCommand]
    metrics: EngineMetrics
    http_port: int | None = None  # the endpoint's real port (None: http.enabled is false)
    extras: dict[str, Any] = field(default_factory=dict)


def journal_path(config: Config) -> pathlib.Path:
    """Where the audit journal lives: beside the embedded database's data directory."""
    return config.database.data_dir.parent / "audit-journal.jsonl"


async def run_engine(
    config: Config,
    *,
    db: Database,
    market_clock: MarketClock | None = None,
    task_status: trio.TaskStatus[EngineHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the engine on ``db`` (migrated) until cancelled or the root supervisor escalates."""
    broker = config.broker
    token, account_id = require_credentials(config)
    clock = market_clock or SystemMarketClock()
    # Loaded once (pandas, a fraction of a second: off the event loop); plain data after.
    calendar = await trio.to_thread.run_sync(MarketCalendar.load, clock.now())
    async with TradierRest(base_url=broker.rest_url, token=token, account_id=account_id) as rest:
        fanout = QuoteFanout()
        store = PgTradeStore(db)
        subscriptions_send, subscriptions_recv = trio.open_memory_channel[SubscriptionCommand](0)
        # A refresh request must not wait on a busy mirror; requests coalesce there anyway.
        refresh_send, refresh_recv = trio.open_memory_channel[RefreshPositions](16)
        link = _LifecycleLink()
        # Intents wait here while the router works through a burst (many stops at once); a
        # full buffer makes watchers wait, never drops an intent.
        commands_send, commands_recv = trio.open_memory_channel[RouterCommand](256)
        # The pool forwards at once (mailboxes never block); the buffer rides out its restart.
        events_send, events_recv = trio.open_memory_channel[RouterEvent](256)
        # The operator's switches: halt/resume straight to the router, closes to the watchers.
        halts_send, halts_recv = trio.open_memory_channel[Halt | Resume](16)
        closes_send, closes_recv = trio.open_memory_channel[CloseTradeNow](64)
        dry_run = config.engine.dry_run
        tradier = TradierBroker(rest, account_ws_url=broker.account_stream_url)
        order_broker: OrderBroker = tradier
        paper: PaperBroker | None = None
        if broker.kind == "paper":
            # Paper trading: quotes (and the starting positions, read once) come from the
            # configured broker; orders, fills and positions from then on are the paper book's.
            paper = PaperBroker(
                account_id=account_id, positions=await tradier.get_positions(), clock=clock.now
            )
            order_broker = paper
        with (
            # First: a port already taken ends startup before anything else is opened.
            listening(config.http) as listener,
            AuditSink(journal_path=journal_path(config)) as sink,
        ):
            metrics = EngineMetrics()
            metrics.observe(feed=fanout, audit=sink)
            audit_spec = ChildSpec(
                "audit_writer",
                functools.partial(audit_writer.run, sink=sink, store=DatabaseAuditStore(db)),
            )
            quotes_spec = ChildSpec(
                "quote_stream",
                _quote_stream_child(
                    subscriptions_recv,
                    fanout,
                    clock,
                    sink,
                    connect=functools.partial(open_market_socket, rest, broker.market_stream_url),
                    rest_poll=rest.get_quotes,
                    calendar=calendar,
                ),
            )
            tracking = Supervisor(
                [
                    ChildSpec(
                        "portfolio_mirror",
                        _mirror_child(
                            link,
                            order_broker,
                            store,
                            refresh_recv,
                            sink,
                            account_id,
                            config,
                            clock,
                            metrics,
                        ),
                    ),
                    ChildSpec(
                        "watcher_pool",
                        _pool_child(
                            link,
                            subscriptions_send,
                            fanout,
                            store,
                            sink,
                            clock,
                            config,
                            intents=None if dry_run else commands_send,
                            router_events=events_recv,
                            closes=closes_recv,
                            metrics=metrics,
                            calendar=calendar,
                        ),
                    ),
                ],
                name="tracking",
                intensity=0,
                period=1.0,
                on_event=functools.partial(_supervisor_event, metrics),
            )
            children = [audit_spec, quotes_spec]
            if paper is not None:
                children.append(
                    ChildSpec(
                        "paper_broker",
                        functools.partial(_paper_child, paper, fanout, subscriptions_send),
                    )
                )
            children.append(ChildSpec("tracking", tracking.run))
            if not dry_run:
                router = functools.partial(
                    _router_child,
                    commands_recv,
                    events_send,
                    refresh_send,
                    order_broker,
                    PgOrderStore(db),
                    store,
                    sink,
                    account_id,
                    clock,
                    RouterSettings(
                        time_scale=getattr(clock, "speed", 1.0),
                        trading_limit=broker.trading_rate_limit,
                        # The mirror reads positions outside the router's buckets: leave it room.
                        standard_limit=max(1, broker.read_rate_limit - 10),
                    ),
                    halts_recv,
                    observer=metrics,
                    calendar=calendar,
                )
                children.append(ChildSpec("order_router", router))
            children.append(
                ChildSpec(
                    "control_listener",
                    functools.partial(
                        _control_child, db, account_id, halts_send, closes_send, dry_run=dry_run
                    ),
                )
            )
            if listener is not None:
                endpoint = Endpoint(
                    db=db,
                    account_id=account_id,
                    feed=fanout,
                    # The root is made just below; the endpoint reads it only once it runs.
                    supervisor=lambda: root.statistics(),
                    metrics=metrics,
                    limits=ReadinessLimits(
                        positions_max_age=3 * config.engine.positions_refresh_seconds
                    ),
                    market_open=lambda: calendar.is_open(clock.now()),
                )
                children.append(
                    ChildSpec("http", functools.partial(serve, listener, make_app(endpoint)))
                )
            root = Supervisor(
                children,
                name="engine",
                intensity=5,
                period=60.0,
                on_event=functools.partial(_supervisor_event, metrics),
            )
            _log.info(
                "engine.starting",
                account_id=account_id,
                rest_url=broker.rest_url,
                dry_run=config.engine.dry_run,
            )
            handle = EngineHandle(
                config=config,
                db=db,
                fanout=fanout,
                audit=sink,
                supervisor=root,
                refresh=refresh_send,
                commands=commands_send,
                metrics=metrics,
                http_port=None if listener is None else listener.getsockname()[1],
            )
            # Escalations leave the nursery as an exception group: callers use except*.
            async with trio.open_nursery() as nursery:
                await nursery.start(root.run)
                task_status.started(handle)


def _supervisor_event(metrics: EngineMetrics, event: str, fields: dict[str, object]) -> None:
    metrics.supervisor_event(event, fields)
    level: Level = "error" if event.endswith(("crashed", "escalated")) else "info"
    _log.log(level, event, **fields)


class _LifecycleLink:
    """The channel joining the mirror and the pool, which restart together: each incarnation of
    the pair gets a fresh channel, made when the mirror starts (it starts first) and taken by
    the pool when it starts."""

    def __init__(self) -> None:
        self._receive: trio.MemoryReceiveChannel[SpreadLifecycle] | None = None

    def open(self) -> trio.MemorySendChannel[SpreadLifecycle]:
        send, self._receive = trio.open_memory_channel[SpreadLifecycle](0)
        return send

    def take(self) -> trio.MemoryReceiveChannel[SpreadLifecycle]:
        receive, self._receive = self._receive, None
        if receive is None:
            raise RuntimeError("the watcher pool started before the portfolio mirror")
        return receive


async def _paper_child(
    paper: PaperBroker,
    fanout: QuoteFanout,
    subscriptions: trio.MemorySendChannel[SubscriptionCommand],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed the paper book the quotes of its working orders' legs."""
    owner = "paper-broker"

    async def follow_symbols(subs: trio.MemorySendChannel[SubscriptionCommand]) -> None:
        while True:
            changed = paper.symbols_changed()  # taken before reading: no change is missed
            await subs.send(WantSymbols(owner=owner, symbols=paper.wanted_symbols()))
            await changed.wait()

    with subscriptions.clone() as subs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_symbols, subs)
            await paper.run(fanout.mailbox(owner), task_status=task_status)


async def _router_child(
    commands: trio.MemoryReceiveChannel[RouterCommand],
    events: trio.MemorySendChannel[RouterEvent],
    refresh: trio.MemorySendChannel[RefreshPositions],
    broker: OrderBroker,
    orders: PgOrderStore,
    trades: PgTradeStore,
    sink: AuditSink,
    account_id: str,
    clock: MarketClock,
    settings: RouterSettings,
    halts: trio.MemoryReceiveChannel[Halt | Resume],
    *,
    observer: EngineMetrics,
    calendar: MarketCalendar,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with (
        commands.clone() as inbox,
        events.clone() as outbox,
        refresh.clone() as refreshes,
        halts.clone() as control,
    ):
        await order_router.run(
            inbox=inbox,
            events=outbox,
            refresh=refreshes,
            broker=broker,
            orders=orders,
            trades=trades,
            audit=sink,
            account_id=account_id,
            clock=clock,
            settings=settings,
            control=control,
            observer=observer,
            calendar=calendar,
            task_status=task_status,
        )


async def _control_child(
    db: Database,
    account_id: str,
    halts: trio.MemorySendChannel[Halt | Resume],
    closes: trio.MemorySendChannel[CloseTradeNow],
    *,
    dry_run: bool,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    send, receive = trio.open_memory_channel[ControlCommand](0)

    async def dispatch() -> None:
        with receive, halts.clone() as to_router, closes.clone() as to_watchers:
            async for command in receive:
                match command:
                    case Halt() | Resume() if not dry_run:
                        await to_router.send(command)
                    case CloseTradeNow():
                        await to_watchers.send(command)
                    case _:
                        _log.info("engine.control_ignored", command=type(command).__name__)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatch)
        await control_listener.run(
            db=db, account_id=account_id, outbox=send, task_status=task_status
        )


def _mirror_child(
    link: _LifecycleLink,
    broker: OrderBroker,
    store: PgTradeStore,
    refresh: trio.MemoryReceiveChannel[RefreshPositions],
    sink: AuditSink,
    account_id: str,
    config: Config,
    clock: MarketClock,
    metrics: EngineMetrics,
) -> Callable[..., Awaitable[None]]:
    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with refresh.clone() as inbox, link.open() as send:
            await portfolio_mirror.run(
                broker=broker,
                store=store,
                outbox=send,
                inbox=inbox,
                audit=sink,
                account_id=account_id,
                config=config.engine,
                clock=clock,
                on_positions_read=metrics.positions_read,
                task_status=task_status,
            )

    return run


def _pool_child(
    link: _LifecycleLink,
    subscriptions: trio.MemorySendChannel[SubscriptionCommand],
    fanout: QuoteFanout,
    store: PgTradeStore,
    sink: AuditSink,
    clock: MarketClock,
    config: Config,
    *,
    intents: trio.MemorySendChannel[RouterCommand] | None,
    router_events: trio.MemoryReceiveChannel[RouterEvent],
    closes: trio.MemoryReceiveChannel[CloseTradeNow],
    metrics: EngineMetrics,
    calendar: MarketCalendar,
) -> Callable[..., Awaitable[None]]:
    speed = getattr(clock, "speed", 1.0)  # market seconds per trio second
    settings = WatcherSettings(
        dry_run=intents is None,
        retry_after=config.engine.exit_retry_seconds / speed,
        calendar=calendar,
    )

    async def watch(trade: TradeSnapshot, mailbox: Any) -> None:
        await position_watcher.run(
            trade=trade,
            mailbox=mailbox,
            intents=intents,
            audit=sink,
            store=store,
            market_clock=clock,
            settings=settings,
            observer=metrics,
        )

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with (
            link.take() as lifecycle,
            subscriptions.clone() as subs,
            router_events.clone() as oe,
            closes.clone() as operator,
        ):
            await watcher_pool.run(
                lifecycle=lifecycle,
                order_events=oe,
                commands=operator,
                subscriptions=subs,
                fanout=fanout,
                runner=watch,
                on_statistics=metrics.observe_pool,
                task_status=task_status,
            )

    return run


def _quote_stream_child(
    inbox: trio.MemoryReceiveChannel[SubscriptionCommand],
    fanout: QuoteFanout,
    clock: MarketClock,
    sink: AuditSink,
    *,
    connect: Any,
    rest_poll: Any,
    calendar: MarketCalendar,
) -> Callable[..., Awaitable[None]]:
    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with inbox.clone() as subscriptions:
            await quote_stream.run(
                inbox=subscriptions,
                fanout=fanout,
                clock=clock,
                connect=connect,
                rest_poll=rest_poll,
                audit=sink,
                config=QuoteStreamConfig(),
                market_open=calendar.is_open,  # a quiet feed outside the session is not stale
                task_status=task_status,
            )

    return run
