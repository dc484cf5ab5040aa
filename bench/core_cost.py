"""The engine's core cost per market event, as a multiple of bare msgspec decoding (issue 6).

Not a test: a measurement, with no network. Tradier market-stream frames are synthesized in the
exact wire format (``reference/tradier-api.md``: quotes with JSON-number prices and epoch-ms
strings, trades with every value a string; ``linebreak: true``, so several events per frame), for
the symbols of N open spreads, and fed two ways, side by side, in interleaved rounds:

- **bare**: ``msgspec.json.Decoder(wire.StreamEvent, strict=False).decode_lines(frame)`` - the
  frames decoded into the wire view structs and nothing else;
- **engine**: ``QuoteFanout._on_frame(frame, now)`` exactly as QuoteStream's receive loop calls it
  (decode with :func:`engine.brokers.tradier.wire.decode_market_frame`, translate, route by
  symbol, ``put`` into each wanting watcher's conflating mailbox), one trio checkpoint per frame
  (QuoteStream awaits the socket between frames), and N real PositionWatchers
  (:func:`actors.position_watcher.run`, dry run, a store and an audit sink that keep nothing)
  each taking its mailbox batch and evaluating its default exit plan once per batch. The round
  ends when every watcher is idle again (``trio.testing.wait_all_tasks_blocked``).

The cost per event is the round's time over the events in it; the ratio is engine / bare in the
same round (target: at most 10x). The same is measured at several numbers of spreads (target:
flat per-event cost).

**Book.** Spreads of the five auto-exited shapes in turn, over ten underlyings and eight weekly
expirations, strikes around the money, entry at the mark, so no rule fires (a hold is the common
case and what is measured). Every watcher wants its legs and its underlying, as WatcherPool asks.
**Events** pick a subscribed symbol uniformly (options and underlyings alike; an underlying's
quote reaches every spread on it): 95 % quotes a cent or two from the symbol's Black-Scholes
quote, 5 % trades. Before timing, every symbol is quoted once so each watcher has a full book.

    .venv/bin/python -m bench.core_cost [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/core_cost.json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import math
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec
import trio
import trio.testing

from actors.position_watcher import WatcherSettings
from actors.position_watcher import run as run_watcher
from actors.quote_stream import QuoteFanout, QuoteMailbox
from actors.watcher_pool import owner_key
from bench import standalone
from bench.paths import SECONDS_PER_YEAR, SHAPES, build_spread, cents, quote_cents
from engine.brokers.tradier import wire
from engine.clock import NEW_YORK
from engine.domain.pricing import LegQuote, mark_close_price
from engine.domain.spread import Spread
from engine.domain.strategy import is_debit
from engine.messages import AuditRecord, DecisionRecord, TradeOrigin, TradeSnapshot, WantSymbols

__all__ = ["SIZES", "main", "run"]


@dataclass(frozen=True)
class _Size:
    spreads: int  # the headline measurement
    rounds: int
    scaling: tuple[int, ...]  # spreads at which the per-event cost is also measured
    scaling_rounds: int
    events: int  # per round
    events_per_frame: int = 4


SIZES: Final = {
    "full": _Size(
        spreads=1000, rounds=7, scaling=(100, 1000, 10_000), scaling_rounds=3, events=10_000
    ),
    "tiny": _Size(spreads=100, rounds=2, scaling=(20, 100), scaling_rounds=1, events=800),
}
TARGET_RATIO: Final = 10.0

MARKET_TIME: Final = dt.datetime(2025, 12, 9, 11, 0, tzinfo=NEW_YORK)
_EPOCH_MS: Final = int(MARKET_TIME.timestamp() * 1000)
_EXPIRATIONS: Final = tuple(dt.date(2025, 12, 12) + dt.timedelta(weeks=w) for w in range(52))
_UNDERLYINGS: Final = {  # spot prices of early December 2025, roughly
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
_VOL: Final = 0.30
_TRADE_SHARE: Final = 0.05
_ROOM: Final = Decimal("0.30")  # entry from either end: two cents of jitter fire no rule


class _FixedClock:
    """Market time stands still: one mid-morning instant, days before every expiration."""

    def now(self) -> dt.datetime:
        return MARKET_TIME


class _NullStore:
    async def save_watch_state(
        self,
        trade_id: int,
        high_water_mark: Decimal | None,
        fired_tiers: Any,
        entry_iv: Decimal | None,
    ) -> None:
        return None


@dataclass
class _CountingAudit:
    """The AuditSink's never-blocking ``submit``, keeping only counts by decision."""

    decisions: dict[str, int] = field(default_factory=dict)

    def submit(self, record: AuditRecord) -> None:
        if isinstance(record, DecisionRecord):
            key = str(record.decision)
            self.decisions[key] = self.decisions.get(key, 0) + 1


@dataclass(frozen=True)
class _Book:
    trades: tuple[TradeSnapshot, ...]
    quotes: dict[str, tuple[int, int]]  # symbol -> base (bid, ask) in cents, underlyings too


# ---------------------------------------------------------------------------------------------
# The book and its frames
# ---------------------------------------------------------------------------------------------


def _spread(
    index: int, rng: random.Random, taken: set[str]
) -> tuple[Spread, Decimal, dict[str, tuple[int, int]]]:
    """A spread whose entry (at the mark) leaves room, so a few cents' moves fire nothing, and
    whose legs no other spread holds (``taken``), so an option event reaches one spread."""
    strategy = SHAPES[index % len(SHAPES)]
    root = list(_UNDERLYINGS)[index // len(SHAPES) % len(_UNDERLYINGS)]
    spot = _UNDERLYINGS[root]
    low, high = (-0.6, 0.6) if is_debit(strategy) else (0.05, 1.2)
    shrink = 1.0
    for _ in range(10_000):  # redraw until the legs are free and the entry leaves room
        expiration = rng.choice(_EXPIRATIONS)
        close = dt.datetime.combine(expiration, dt.time(16), tzinfo=NEW_YORK)
        years = (close - MARKET_TIME).total_seconds() / SECONDS_PER_YEAR
        distance = _VOL * math.sqrt(years) * shrink * rng.uniform(low, high)
        if round(spot * (1 - distance)) >= round(spot * (1 + distance)) - 1:
            continue  # short strikes that meet make a butterfly, not a condor
        spread = build_spread(
            strategy,
            root=root,
            expiration=expiration,
            spot=spot,
            distance=distance,
            width=max(1, round(spot * rng.choice((0.005, 0.01, 0.015, 0.02, 0.03)))),
        )
        quotes = {
            leg.occ: quote_cents(leg.symbol.right, spot, float(leg.symbol.strike), years, _VOL)
            for leg in spread.legs
        }
        if not taken.isdisjoint(quotes):
            continue
        legs = [LegQuote(bid=cents(quotes[s][0]), ask=cents(quotes[s][1])) for s in spread.symbols]
        entry = mark_close_price(spread, legs)
        assert spread.width is not None and entry is not None
        if _ROOM <= entry <= spread.width - _ROOM:
            return spread, entry, quotes
        shrink *= 0.98  # nearer the money: more premium
    raise AssertionError(f"no {strategy} on {root} with room around its entry")


def _book(count: int, seed: int) -> _Book:
    rng = random.Random(seed)
    trades, quotes = [], {s: _underlying_quote(p) for s, p in _UNDERLYINGS.items()}
    taken: set[str] = set()
    for index in range(count):
        spread, entry, leg_quotes = _spread(index, rng, taken)
        quotes.update(leg_quotes)
        taken.update(leg_quotes)
        trades.append(
            TradeSnapshot(
                trade_id=index + 1,
                account_id="BENCH",
                underlying=spread.underlying,
                strategy=spread.strategy,
                legs=spread.legs,
                quantity=1,
                opening_quantity=1,
                entry_price=entry,
                origin=TradeOrigin.IMPORTED,
                managed=True,
                opened_at=MARKET_TIME - dt.timedelta(days=1),
            )
        )
    return _Book(tuple(trades), quotes)


def _underlying_quote(spot: float) -> tuple[int, int]:
    mid = round(spot * 100)
    return mid - 1, mid + 1


def _price(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"


def _quote_line(symbol: str, bid: int, ask: int, at_ms: int) -> str:
    """Tradier's stream quote: prices as numbers, sizes as integers, dates as strings."""
    return (
        f'{{"type":"quote","symbol":"{symbol}","bid":{_price(bid)},"bidsz":12,"bidexch":"C",'
        f'"biddate":"{at_ms}","ask":{_price(ask)},"asksz":30,"askexch":"X",'
        f'"askdate":"{at_ms}"}}'
    )


def _trade_line(symbol: str, price: int, at_ms: int, volume: int) -> str:
    """Tradier's stream trade: every value a string."""
    return (
        f'{{"type":"trade","symbol":"{symbol}","exch":"C","price":"{_price(price)}",'
        f'"size":"1","cvol":"{volume}","date":"{at_ms}","last":"{_price(price)}"}}'
    )


def _event_line(book: _Book, symbol: str, rng: random.Random, at_ms: int) -> str:
    bid, ask = book.quotes[symbol]
    move = rng.randint(-2, 2) if symbol in _UNDERLYINGS else rng.randint(-1, 1)
    bid = max(0, bid + move)
    ask = max(bid + 1, ask + move)
    if rng.random() < _TRADE_SHARE:
        return _trade_line(symbol, rng.choice((bid, ask)), at_ms, rng.randrange(1, 10**6))
    return _quote_line(symbol, bid, ask, at_ms)


def _frames(book: _Book, events: int, per_frame: int, rng: random.Random) -> list[str]:
    """``events`` events on uniformly chosen subscribed symbols, ``per_frame`` to a frame."""
    symbols = sorted(book.quotes)
    lines = [_event_line(book, rng.choice(symbols), rng, _EPOCH_MS + 37 * i) for i in range(events)]
    return ["\n".join(lines[i : i + per_frame]) for i in range(0, len(lines), per_frame)]


def _snapshot_frames(book: _Book) -> list[str]:
    """Every symbol's base quote once, 2,000 to a frame (the simulator's largest frames)."""
    lines = [_quote_line(s, b, a, _EPOCH_MS) for s, (b, a) in sorted(book.quotes.items())]
    return ["\n".join(lines[i : i + 2000]) for i in range(0, len(lines), 2000)]


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _bare(frames: Sequence[str]) -> tuple[float, int]:
    """Seconds to decode every frame into wire structs, and the events decoded."""
    decoder = msgspec.json.Decoder(wire.StreamEvent, strict=False)
    decode = decoder.decode_lines
    gc.collect()
    started = time.perf_counter()
    events = 0
    for frame in frames:
        events += len(decode(frame))
    return time.perf_counter() - started, events


class _Engine:
    """QuoteFanout and the watchers of one book, running inside one trio run."""

    def __init__(self, book: _Book) -> None:
        self.book = book
        self.fanout, self.mailboxes = _fanout(book)
        self.audit = _CountingAudit()

    async def start(self, nursery: trio.Nursery) -> None:
        settings = WatcherSettings(dry_run=True)
        clock, store = _FixedClock(), _NullStore()
        for trade, mailbox in zip(self.book.trades, self.mailboxes, strict=True):
            nursery.start_soon(
                functools.partial(
                    run_watcher,
                    trade=trade,
                    mailbox=mailbox,
                    intents=None,
                    audit=self.audit,
                    store=store,
                    market_clock=clock,
                    settings=settings,
                )
            )
        await self.feed(_snapshot_frames(self.book))

    def batches(self) -> int:
        return sum(m.statistics().delivered_batches for m in self.mailboxes)

    async def feed(self, frames: Sequence[str]) -> tuple[float, int]:
        """Seconds to take every frame through the engine until every watcher is idle again,
        and the watcher batches (evaluations) that took."""
        on_frame, checkpoint = self.fanout._on_frame, trio.lowlevel.checkpoint
        before = self.batches()
        gc.collect()
        started = time.perf_counter()
        for frame in frames:
            on_frame(frame, trio.current_time())
            await checkpoint()  # QuoteStream awaits the socket between frames
        await trio.testing.wait_all_tasks_blocked()
        return time.perf_counter() - started, self.batches() - before


def _fanout(book: _Book) -> tuple[QuoteFanout, list[QuoteMailbox]]:
    """A fanout routing each trade's legs and underlying to its mailbox, as WatcherPool asks."""
    fanout = QuoteFanout()
    mailboxes = []
    for trade in book.trades:
        owner = owner_key(trade.trade_id)
        mailboxes.append(fanout.mailbox(owner))
        symbols = frozenset(leg.occ for leg in trade.legs) | {trade.underlying}
        fanout._apply(WantSymbols(owner=owner, symbols=symbols))
    return fanout, mailboxes


async def _route_only(
    fanout: QuoteFanout, mailboxes: Sequence[QuoteMailbox], frames: Sequence[str]
) -> float:
    """Seconds to decode, translate and route every frame into mailboxes nobody reads (the
    QuoteStream half of the engine path); the mailboxes are emptied afterwards, untimed."""
    on_frame, now = fanout._on_frame, trio.current_time()
    gc.collect()
    started = time.perf_counter()
    for frame in frames:
        on_frame(frame, now)
    elapsed = time.perf_counter() - started
    for mailbox in mailboxes:
        if mailbox.statistics().pending:
            await mailbox.get_batch()
    return elapsed


@dataclass(frozen=True)
class _Round:
    """One round's figures, in nanoseconds per event."""

    bare_ns: float
    route_ns: float
    engine_ns: float
    evaluations_per_event: float

    @property
    def ratio(self) -> float:
        return self.engine_ns / self.bare_ns


async def _measure(book: _Book, frames: Sequence[str], rounds: int) -> list[_Round]:
    """Interleaved rounds of bare decoding, routing alone and the whole engine path over the
    same frames; the order rotates from round to round so no side always runs first."""
    results = []
    route_fanout, route_mailboxes = _fanout(book)
    async with trio.open_nursery() as nursery:
        engine = _Engine(book)
        await engine.start(nursery)
        await engine.feed(frames[: len(frames) // 10])  # warm-up: caches, first hold records
        for index in range(rounds):
            timings: dict[str, float] = {}
            for step in (("bare", "route", "engine") * 2)[index % 3 :][:3]:
                if step == "bare":
                    timings[step], events = _bare(frames)
                elif step == "route":
                    timings[step] = await _route_only(route_fanout, route_mailboxes, frames)
                else:
                    timings[step], batches = await engine.feed(frames)
            per_event = {step: seconds / events * 1e9 for step, seconds in timings.items()}
            results.append(
                _Round(per_event["bare"], per_event["route"], per_event["engine"], batches / events)
            )
        nursery.cancel_scope.cancel()
    exits = engine.audit.decisions.get("exit", 0)
    assert exits == 0, f"{exits} exits decided: the book should only hold"
    return results


def _median(values: Iterable[float], places: int = 1) -> float:
    return round(statistics.median(values), places)


def _figures(rounds: Sequence[_Round], spreads: int, events: int) -> dict[str, Any]:
    evaluations = _median((r.evaluations_per_event for r in rounds), 3)
    engine, route = _median(r.engine_ns for r in rounds), _median(r.route_ns for r in rounds)
    return {
        "spreads": spreads,
        "events_per_round": events,
        "rounds": len(rounds),
        "bare_decode_ns_per_event": _median(r.bare_ns for r in rounds),
        "route_ns_per_event": route,
        "engine_ns_per_event": engine,
        "ratio_median": _median((r.ratio for r in rounds), 2),
        "ratio_per_round": [round(r.ratio, 2) for r in rounds],
        "route_ratio_median": _median((r.route_ns / r.bare_ns for r in rounds), 2),
        "evaluations_per_event": evaluations,
        # What the watchers add per evaluation: wake-up, batch, snapshot, evaluate, persist.
        "watcher_ns_per_evaluation": round((engine - route) / evaluations) if evaluations else None,
    }


def _measure_size(spreads: int, rounds: int, size: _Size, seed: int) -> dict[str, Any]:
    book = _book(spreads, seed)
    frames = _frames(book, size.events, size.events_per_frame, random.Random(seed + 1))
    results = trio.run(_measure, book, frames, rounds)
    return {"symbols": len(book.quotes), **_figures(results, spreads, size.events)}


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Measure at the headline number of spreads, then at each scaling point (JSON-able)."""
    chosen = SIZES[size]
    started = time.perf_counter()
    headline = _measure_size(chosen.spreads, chosen.rounds, chosen, seed)
    scaling = [
        headline
        if count == chosen.spreads
        else _measure_size(count, chosen.scaling_rounds, chosen, seed)
        for count in chosen.scaling
    ]
    costs = [point["engine_ns_per_event"] for point in scaling]
    return {
        "benchmark": "core_cost",
        "size": size,
        "seed": seed,
        "events_per_frame": chosen.events_per_frame,
        "target_ratio": TARGET_RATIO,
        "headline": headline,
        "scaling": scaling,
        "scaling_growth": round(max(costs) / min(costs), 2),  # largest / smallest per-event cost
        "summary": _sentence(headline, scaling),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _sentence(headline: dict[str, Any], scaling: Sequence[dict[str, Any]]) -> str:
    points = ", ".join(
        f"{p['engine_ns_per_event'] / 1000:.1f} us at {p['spreads']:,}" for p in scaling
    )
    return (
        f"With {headline['spreads']:,} spreads, one market event costs the engine "
        f"{headline['engine_ns_per_event'] / 1000:.1f} us from frame to evaluated exit plan: "
        f"{headline['ratio_median']:g}x bare msgspec decoding "
        f"({headline['bare_decode_ns_per_event']:.0f} ns; target <= {TARGET_RATIO:g}x). "
        f"Decoding and routing alone is {headline['route_ratio_median']:g}x; the rest is "
        f"{headline['evaluations_per_event']:g} watcher evaluations per event at "
        f"{(headline['watcher_ns_per_evaluation'] or 0) / 1000:.1f} us each. "
        f"Per event: {points} spreads."
    )


def _table(result: dict[str, Any]) -> str:
    rows = [
        f"{'spreads':>8}{'symbols':>9}{'bare ns':>9}{'route ns':>10}{'engine ns':>11}"
        f"{'ratio':>8}{'route x':>9}{'evals/ev':>9}{'ns/eval':>9}"
    ]
    for p in result["scaling"]:
        rows.append(
            f"{p['spreads']:>8,}{p['symbols']:>9,}{p['bare_decode_ns_per_event']:>9.0f}"
            f"{p['route_ns_per_event']:>10.0f}{p['engine_ns_per_event']:>11.0f}"
            f"{p['ratio_median']:>8.1f}{p['route_ratio_median']:>9.1f}"
            f"{p['evaluations_per_event']:>9.2f}{p['watcher_ns_per_evaluation']:>9}"
        )
    return "\n".join(rows)


def _report(result: dict[str, Any]) -> list[str]:
    return [
        f"core_cost: {result['seconds']} s, "
        f"ratio per round {result['headline']['ratio_per_round']}",
        _table(result),
        result["summary"],
    ]


def main() -> None:
    standalone.main("core_cost", __doc__, run, _report)


if __name__ == "__main__":
    main()
