"""The shared rig of the live benchmarks: the simulator in its own process, a warm embedded
database, and the engine in this process in its normal configuration, over loopback.

Use::

    async with warm_database(tmp_dir) as db:          # once per benchmark: start + migrate
        async with open_rig(db, spreads=1000, samples=200, run_dir=tmp_dir) as rig:
            live_after = await rig.wait_all_live()    # seconds from the engine's start
            ...                                       # rig.sim.drive(...), rig.engine.fanout

**Simulator.** :class:`SimProcess` runs ``serve_simulator`` in a child process (``spawn``), so
its clock (``time.perf_counter_ns`` there) and its CPU are independent of the engine's
scheduling. The parent commands it over a pipe: :meth:`SimProcess.quotes` (current quotes),
:meth:`SimProcess.drive` (a background quote load at a fixed rate over given symbols, scripted
ticks at given offsets - some *marked*, see ``sim/streams.py`` - and optionally a final quote
per loaded symbol), :meth:`SimProcess.timings` (when each marked tick's frame was sent, and
every order request's receipt time, both on the simulator's clock).

**Book.** :func:`generate_book` builds a scenario of bull put credit spreads one strike wide
(quantity 1, distinct legs) over ten underlyings, plus *sample* spreads on an underlying of
their own that no background quote touches (so a sample's exit decision can only come from its
own scripted ticks). The underlyings do not move (flat paths, expirations 3 to 10 months out,
a model tick every second): the simulator's own stream is quiet, apart from a rare cent of time
decay, and every quote the benchmark needs comes from :meth:`SimProcess.drive`. Each spread is
seeded as an ENGINE trade at its mark, managed, with its strategy's default exit plan, so no
rule fires until a benchmark pushes one through.

**Engine.** ``engine.app.run_engine`` on the shared database, market clock following the
simulator's, orders sent (not a dry run). The changes from the defaults are the engine's own
broker rate limits, ``broker.trading_rate_limit`` and ``broker.read_rate_limit``
(``RATE_LIMIT`` per minute each instead of 60 and 120): the benchmarks stop several spreads a
second, each exit reads positions and places an order, and Tradier's per-minute allowance is a
broker policy, not the engine's latency (at the defaults the router's queue of exits grows by
the minute and the figures measure the wait for a token). Each rig truncates the database's
tables first (the server and schema stay warm) and starts a fresh simulator, so runs do not see
each other's trades.

**Live.** :meth:`Rig.wait_all_live`: every managed trade's watcher has registered its symbols
with the fan-out, every one of those symbols has a quote, and every watcher's mailbox is
drained (it has taken and evaluated its book).
"""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
import pathlib
import random
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec
import trio

from actors.watcher_pool import owner_key
from engine.app import EngineHandle, run_engine
from engine.clock import TrioMarketClock
from engine.config import Config, Secret, load_config
from engine.domain.occ import OptionRight, OptionSymbol
from engine.scenario_run import seed_trades
from sim.pricing import theo, vol_at_strike
from sim.scenario import (
    EASTERN,
    BrokerConfig,
    Keyframe,
    KeyframesPath,
    MarketConfig,
    Position,
    Scenario,
    StrikeRange,
    Trade,
    TradeLeg,
    Underlying,
)
from storage import Database, apply_migrations, open_database

__all__ = [
    "RATE_LIMIT",
    "Book",
    "BookSpread",
    "DriveFigures",
    "Rig",
    "SimProcess",
    "Tick",
    "Timings",
    "generate_book",
    "open_rig",
    "process_rss_bytes",
    "warm_database",
]

RATE_LIMIT: Final = 6000  # requests per minute, trading and reads; see the module docstring
MARKET_START: Final = dt.datetime(2025, 12, 9, 10, 0, tzinfo=EASTERN)
_EXPIRATIONS: Final = tuple(
    dt.date(2026, month, day)
    for month, day in ((3, 20), (4, 17), (5, 15), (6, 18), (7, 17), (8, 21), (9, 18), (10, 16))
)
_BACKGROUND: Final = {  # spot prices of early December 2025, roughly
    "SPY": 680.0,
    "QQQ": 620.0,
    "IWM": 250.0,
    "AAPL": 280.0,
    "MSFT": 490.0,
    "NVDA": 180.0,
    "TSLA": 440.0,
    "AMZN": 230.0,
    "META": 660.0,
    "GOOGL": 320.0,
}
_SAMPLE_UNDERLYING: Final = ("DIA", 480.0)
_VOL: Final = 0.35
_RATE: Final = 0.04
_MIN_MARK: Final = 0.15  # dollars: well above the low-value close (0.05)
_MAX_MARK: Final = 0.40  # a sample's stop (100 % of the credit) stays below the width
_TICK_INTERVAL_MS: Final = 1000


# ------------------------------------------------------------------------------ the book


@dataclass(frozen=True)
class BookSpread:
    """One bull put credit spread, one strike wide: short ``short`` and long ``long``."""

    underlying: str
    short: str
    long: str
    sample: bool
    trade_id: int = 0  # set once seeded
    short_quote: tuple[int, int] = (0, 0)  # bid, ask in cents at the start
    long_quote: tuple[int, int] = (0, 0)

    @property
    def entry_cents(self) -> int:
        """The mark at the start (short mid - long mid), rounded to a cent: the entry price."""
        short_mid = sum(self.short_quote) / 2
        long_mid = sum(self.long_quote) / 2
        return round(short_mid - long_mid)


@dataclass
class Book:
    scenario: Scenario
    spreads: list[BookSpread]
    _next_sample: int = 0

    @property
    def background(self) -> list[BookSpread]:
        return [s for s in self.spreads if not s.sample]

    def background_symbols(self) -> list[str]:
        """Every symbol the background spreads watch: their legs and their underlyings."""
        symbols = {u for u in (s.underlying for s in self.background)}
        for spread in self.background:
            symbols.update((spread.short, spread.long))
        return sorted(symbols)

    def take_samples(self, count: int) -> list[BookSpread]:
        """``count`` sample spreads not taken before (each is stopped at most once)."""
        samples = [s for s in self.spreads if s.sample]
        taken = samples[self._next_sample : self._next_sample + count]
        if len(taken) < count:
            raise ValueError(f"the book has {len(samples) - self._next_sample} samples left")
        self._next_sample += count
        return taken


def generate_book(spreads: int, samples: int, seed: int) -> Book:
    """``spreads`` spreads in all, ``samples`` of them on the sample underlying (see the module
    docstring). Positions are held at the simulator; trades are seeded by :func:`open_rig`."""
    if not 0 <= samples <= spreads:
        raise ValueError("samples must be between 0 and spreads")
    rng = random.Random(seed)
    background = spreads - samples
    chosen: list[BookSpread] = []
    per_underlying = math.ceil(background / len(_BACKGROUND)) if background else 0
    for index, (symbol, spot) in enumerate(_BACKGROUND.items()):
        wanted = min(per_underlying, background - index * per_underlying)
        chosen += _pairs(symbol, spot, max(0, wanted), rng, sample=False)
    chosen += _pairs(*_SAMPLE_UNDERLYING, samples, rng, sample=True)
    underlyings = [
        _underlying(symbol, spot) for symbol, spot in (*_BACKGROUND.items(), _SAMPLE_UNDERLYING)
    ]
    positions = []
    for spread in chosen:
        positions += [Position(symbol=spread.short, quantity=-1),
                      Position(symbol=spread.long, quantity=1)]
    scenario = Scenario(
        name="bench-rig",
        start=MARKET_START,
        speed=1.0,
        duration="6h",
        seed=seed,
        market=MarketConfig(tick_interval_ms=_TICK_INTERVAL_MS, quote_interval_ms=0),
        broker=BrokerConfig(cash=Decimal(10_000_000), rate_limits="off"),
        underlyings=underlyings,
        positions=positions,
    )
    return Book(scenario, chosen)


def _underlying(symbol: str, spot: float) -> Underlying:
    return Underlying(
        symbol=symbol,
        volatility=_VOL,
        expirations=list(_EXPIRATIONS),
        strikes=StrikeRange(low=math.floor(spot * 0.7), high=math.ceil(spot), step=1),
        path=KeyframesPath(points=[Keyframe(at=0.0, price=spot)]),
    )


def _pairs(symbol: str, spot: float, count: int, rng: random.Random, *, sample: bool
           ) -> list[BookSpread]:
    """``count`` put spreads (short K, long K-1) with distinct legs whose model mark lies in
    [_MIN_MARK, _MAX_MARK], chosen at random among every expiration and strike."""
    if count == 0:
        return []
    candidates = []
    for expiration in _EXPIRATIONS:
        years = (dt.datetime.combine(expiration, dt.time(16), tzinfo=EASTERN)
                 - MARKET_START).total_seconds() / (365.0 * 86400)
        # Strikes two apart: every pair's legs are its own.
        for short in range(math.floor(spot * 0.99), math.floor(spot * 0.7) + 1, -2):
            mark = sum(sign * theo(spot, strike, years, vol_at_strike(_VOL, 0.0, spot, strike),
                                   _RATE, False)
                       for sign, strike in ((1, short), (-1, short - 1)))
            if _MIN_MARK <= mark <= _MAX_MARK:
                candidates.append((expiration, short))
    if len(candidates) < count:
        raise ValueError(f"{symbol}: only {len(candidates)} spreads fit, {count} asked")
    picked = rng.sample(candidates, count)
    return [
        BookSpread(
            underlying=symbol,
            short=OptionSymbol(symbol, expiration, OptionRight.PUT, Decimal(short)).format(),
            long=OptionSymbol(symbol, expiration, OptionRight.PUT, Decimal(short - 1)).format(),
            sample=sample,
        )
        for expiration, short in sorted(picked)
    ]


# ------------------------------------------------------------------------------ the simulator


@dataclass(frozen=True)
class Tick:
    """One quote the simulator sends ``at`` seconds after a drive starts. ``mark`` names it in
    :attr:`Timings.emitted_ns`."""

    at: float
    symbol: str
    bid: int  # cents
    ask: int
    bid_size: int
    mark: str | None = None


@dataclass(frozen=True)
class DriveFigures:
    """What the simulator did during one drive."""

    offered: int  # background quotes published
    seconds: float  # real seconds the load ran
    cpu_seconds: float  # the simulator process's CPU time over the drive
    longest_gap_ms: float  # the load loop's longest pause (its own scheduling lag)
    started_ns: int  # perf_counter_ns (simulator clock) when the drive started
    final_quotes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # bid, ask, size


@dataclass(frozen=True)
class Timings:
    """Both on the simulator's clock: marked ticks' send times, and order receipts
    (``received_ns``, tag, leg symbols) since ``since_ns``."""

    emitted_ns: dict[str, int]
    receipts: list[tuple[int, str | None, tuple[str, ...]]]


@dataclass(frozen=True)
class _Started:
    base_url: str
    token: str
    account_id: str
    market_time: dt.datetime
    speed: float


@dataclass(frozen=True)
class _Quotes:
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class _Drive:
    rate: float
    seconds: float
    background: tuple[str, ...]
    ticks: tuple[Tick, ...]
    final_size: int | None


@dataclass(frozen=True)
class _Timings:
    since_ns: int


@dataclass(frozen=True)
class _Failed:
    error: str


class SimProcess:
    """The parent's end of the simulator process. One request at a time."""

    def __init__(self, scenario: Scenario) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_sim_main, args=(child, scenario), daemon=True,
                                        name="spreadwatch-bench-sim")
        self._lock = trio.Lock()
        self.started: _Started | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    async def start(self) -> _Started:
        self._process.start()
        started = await self._receive()
        assert isinstance(started, _Started)
        self.started = started
        return started

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)
        self._conn.close()

    async def quotes(self, symbols: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The published quote (bid, ask cents) of each symbol now."""
        answer: dict[str, tuple[int, int]] = await self._request(_Quotes(tuple(symbols)))
        return answer

    async def drive(
        self,
        *,
        rate: float,
        seconds: float,
        background: Sequence[str],
        ticks: Sequence[Tick] = (),
        final_size: int | None = None,
    ) -> DriveFigures:
        """Publish ``rate`` quotes a second, round-robin over ``background`` (their current
        quotes, sizes alternating), for ``seconds``; send ``ticks`` at their offsets meanwhile;
        then, if ``final_size`` is given, one last quote per background symbol with that bid
        size. Returns when all of it has been handed to the stream."""
        figures: DriveFigures = await self._request(
            _Drive(rate, seconds, tuple(background), tuple(ticks), final_size)
        )
        return figures

    async def timings(self, since_ns: int) -> Timings:
        answer: Timings = await self._request(_Timings(since_ns))
        return answer

    async def _request(self, command: object) -> Any:
        async with self._lock:
            self._conn.send(command)
            return await self._receive()

    async def _receive(self) -> Any:
        answer = await trio.to_thread.run_sync(self._conn.recv, abandon_on_cancel=True)
        if isinstance(answer, _Failed):
            raise RuntimeError(f"bench simulator: {answer.error}")
        return answer


def _sim_main(conn: Any, scenario: Scenario) -> None:
    trio.run(_sim_serve, conn, scenario)


async def _sim_serve(conn: Any, scenario: Scenario) -> None:
    from sim.server import SimHandle, serve_simulator

    async with trio.open_nursery() as nursery:
        handle: SimHandle = await nursery.start(serve_simulator, scenario)
        conn.send(_Started(handle.base_url, handle.token, handle.account_id,
                           handle.clock.now(), handle.clock.speed))
        while True:
            try:
                command = await trio.to_thread.run_sync(conn.recv)
            except EOFError:  # the parent is gone
                break
            try:
                conn.send(await _serve_command(handle, command))
            except Exception as exc:
                conn.send(_Failed(repr(exc)))
                raise
        nursery.cancel_scope.cancel()


async def _serve_command(handle: Any, command: object) -> object:
    market, hub = handle.market, handle.simulator.market_hub
    if isinstance(command, _Quotes):
        answer = {}
        for symbol in command.symbols:
            quote = market.quote(symbol)
            answer[symbol] = (quote.bid, quote.ask)
        return answer
    if isinstance(command, _Drive):
        return await _drive(market, hub, command)
    if isinstance(command, _Timings):
        receipts = [(r.received_ns, r.tag, r.symbols) for r in handle.simulator.order_receipts
                    if r.received_ns >= command.since_ns]
        return Timings(dict(hub.emitted_ns), receipts)
    raise TypeError(f"unknown command {command!r}")


async def _drive(market: Any, hub: Any, command: _Drive) -> DriveFigures:
    from sim.market import quote_line

    def line(symbol: str, bid: int, ask: int, bid_size: int) -> str:
        quote = msgspec.structs.replace(market.quote(symbol), bid=bid, ask=ask,
                                        bid_size=bid_size, at_ms=market.clock.epoch_ms())
        return quote_line(quote)

    # Two versions of each quote (bid size 20 and 21), so every event is a change.
    order = list(command.background)
    random.Random(len(order)).shuffle(order)
    load = []
    for size in (20, 21):
        for symbol in order:
            quote = market.quote(symbol)
            load.append((symbol, line(symbol, quote.bid, quote.ask, size)))
    started_ns = time.perf_counter_ns()
    cpu_before = time.process_time()
    offered = 0
    longest_gap = 0.0

    async def background() -> None:
        nonlocal offered, longest_gap
        if command.rate <= 0 or not load:
            await trio.sleep(command.seconds)
            return
        start = previous = trio.current_time()
        cursor = 0
        while (now := trio.current_time()) - start < command.seconds:
            longest_gap = max(longest_gap, now - previous)
            previous = now
            due = int(command.rate * (now - start))
            for _ in range(due - offered):
                symbol, text = load[cursor]
                hub.publish(symbol, "quote", text)
                cursor = (cursor + 1) % len(load)
            offered = due
            await trio.sleep(0.001)

    async def scripted() -> None:
        start = trio.current_time()
        for tick in sorted(command.ticks, key=lambda t: t.at):
            await trio.sleep_until(start + tick.at)
            hub.publish(tick.symbol, "quote", line(tick.symbol, tick.bid, tick.ask,
                                                   tick.bid_size), tick.mark)

    seconds = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        nursery.start_soon(scripted)
    seconds = time.perf_counter() - seconds
    final: dict[str, tuple[int, int, int]] = {}
    if command.final_size is not None:
        for symbol in command.background:
            quote = market.quote(symbol)
            hub.publish(symbol, "quote", line(symbol, quote.bid, quote.ask, command.final_size))
            final[symbol] = (quote.bid, quote.ask, command.final_size)
    return DriveFigures(
        offered=offered,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu_before,
        longest_gap_ms=longest_gap * 1000,
        started_ns=started_ns,
        final_quotes=final,
    )


# ------------------------------------------------------------------------------ the rig


@asynccontextmanager
async def warm_database(directory: pathlib.Path | None = None) -> AsyncIterator[Database]:
    """The embedded PostgreSQL in ``directory`` (a temporary one if None), started and
    migrated: open it once per benchmark and give it to every :func:`open_rig`."""
    with tempfile.TemporaryDirectory(prefix="spreadwatch-bench-") as tmp:
        data_dir = (directory or pathlib.Path(tmp)) / "pgdata"
        async with open_database(None, data_dir=data_dir) as db:
            await apply_migrations(db)
            yield db


@dataclass
class Rig:
    """A running simulator + engine pair (see the module docstring)."""

    sim: SimProcess
    engine: EngineHandle
    db: Database
    book: Book
    config: Config
    engine_started_at: float  # trio time just before run_engine was started

    def live_watchers(self) -> int:
        """Watchers that have their whole book and have evaluated it (see ``wait_all_live``)."""
        fanout = self.engine.fanout
        if fanout.statistics().owners < len(self.book.spreads):
            return 0
        live = 0
        for spread in self.book.spreads:
            symbols = (spread.short, spread.long, spread.underlying)
            if any(fanout.latest_quote(s) is None for s in symbols):
                continue
            if fanout.mailbox(owner_key(spread.trade_id)).statistics().pending == 0:
                live += 1
        return live

    async def wait_all_live(self) -> float:
        """Wait until every watcher is live; return the seconds since the engine's start.
        Callers bound it (``trio.fail_after``)."""
        # Polled: "every mailbox drained" has no event to wait on, and 10 ms is finer than
        # anything this is used to measure.
        while self.live_watchers() < len(self.book.spreads):  # noqa: ASYNC110
            await trio.sleep(0.01)
        return trio.current_time() - self.engine_started_at


@asynccontextmanager
async def open_rig(
    db: Database,
    *,
    spreads: int,
    samples: int = 0,
    seed: int = 1,
    run_dir: pathlib.Path,
) -> AsyncIterator[Rig]:
    """Empty ``db``'s tables, start a simulator holding a generated book of ``spreads``
    spreads (``samples`` of them sample spreads), seed their trades and run the engine against
    it until the ``async with`` ends. ``run_dir`` holds the engine's audit journal."""
    book = generate_book(spreads, samples, seed)
    await _empty_tables(db)
    sim = SimProcess(book.scenario)
    try:
        started = await sim.start()
        symbols = [s for spread in book.spreads for s in (spread.short, spread.long)]
        quotes = await sim.quotes(symbols)
        book.spreads = [
            BookSpread(s.underlying, s.short, s.long, s.sample, 0, quotes[s.short],
                       quotes[s.long])
            for s in book.spreads
        ]
        seeded = msgspec.structs.replace(book.scenario, trades=[
            Trade(
                legs=[TradeLeg(option_symbol=s.short, side="short"),
                      TradeLeg(option_symbol=s.long, side="long")],
                entry_price=Decimal(s.entry_cents) / 100,
                quantity=1,
            )
            for s in book.spreads
        ])
        ids = await seed_trades(db, seeded, opened_at=started.market_time)
        book.spreads = [
            BookSpread(s.underlying, s.short, s.long, s.sample, trade_id, s.short_quote,
                       s.long_quote)
            for s, trade_id in zip(book.spreads, ids, strict=True)
        ]
        config = _engine_config(started, run_dir)
        clock = TrioMarketClock(started.market_time, speed=started.speed)
        async with trio.open_nursery() as nursery:
            engine_started_at = trio.current_time()
            engine: EngineHandle = await nursery.start(
                lambda task_status: run_engine(
                    config, db=db, market_clock=clock, task_status=task_status
                )
            )
            yield Rig(sim, engine, db, book, config, engine_started_at)
            nursery.cancel_scope.cancel()
    finally:
        sim.stop()


def _engine_config(started: _Started, run_dir: pathlib.Path) -> Config:
    config = load_config(environ={})
    journal_dir = run_dir / f"engine-{time.monotonic_ns()}"
    journal_dir.mkdir(parents=True)
    return msgspec.structs.replace(
        config,
        broker=msgspec.structs.replace(
            config.broker,
            kind="sim",
            rest_url=f"{started.base_url}/v1",
            market_stream_url="ws" + started.base_url[4:] + "/v1/markets/events",
            account_stream_url="ws" + started.base_url[4:] + "/v1/accounts/events",
            token=Secret(started.token),
            account_id=started.account_id,
            trading_rate_limit=RATE_LIMIT,
            read_rate_limit=RATE_LIMIT,
        ),
        # The engine never opens this directory (it is given the database); the audit journal
        # lives beside it, one per rig so no run replays another's records.
        database=msgspec.structs.replace(config.database, data_dir=journal_dir / "pgdata"),
        # Any free port: the default (8787) is taken by whatever else runs an engine here.
        http=msgspec.structs.replace(config.http, port=0),
    )


async def _empty_tables(db: Database) -> None:
    rows = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename <> 'schema_migrations'"
    )
    if rows:
        tables = ", ".join(f'"{row["tablename"]}"' for row in rows)
        await db.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def process_rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    status = pathlib.Path(f"/proc/{pid or 'self'}/status").read_text()
    for row in status.splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")
