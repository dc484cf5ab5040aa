"""The simulated market: underlying paths, option quotes from Black-Scholes, stream events.

State changes only in :meth:`Market.advance`, called once per model tick: every quote the REST
API, the stream and the fill model see is the quote as of the last tick, so they always agree.
Prices are integer cents; the Tradier wire formats turn them into JSON numbers or strings.

Published quotes can differ from the true market while a fault is active (a stale, crossed or
zero-bid quote): the stream and REST show the published quote, the fill model trades on the
true one (the broker's market keeps moving when a data feed freezes).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterable
from typing import Protocol

import msgspec
import trio

from engine.calendar import REGULAR_CLOSE, MarketCalendar
from engine.domain.occ import OptionRight, OptionSymbol
from engine.errors import InvalidSymbol
from sim.clock import SimClock
from sim.paths import PricePath, build_path
from sim.pricing import theo, vol_at_strike
from sim.scenario import EASTERN, Scenario, Underlying

__all__ = ["Contract", "Market", "MarketFeed", "Quote", "cents_text"]

_EXCHANGES = "QZNPCBMXJK"
_YEAR_SECONDS = 365.0 * 24 * 3600


def cents_text(cents: int) -> str:
    """``28184`` -> ``"281.84"``: exact decimal text for a price in cents."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


class Quote(msgspec.Struct, frozen=True):
    """One symbol's top of book. Prices in cents; ``at_ms`` = market epoch ms of the change."""

    symbol: str
    bid: int
    ask: int
    bid_size: int
    ask_size: int
    bid_exch: str
    ask_exch: str
    at_ms: int

    def same_book(self, other: Quote | None) -> bool:
        return other is not None and (self.bid, self.ask, self.bid_size, self.ask_size) == (
            other.bid, other.ask, other.bid_size, other.ask_size)

    @property
    def mid_cents(self) -> float:
        return (self.bid + self.ask) / 2


class Contract(msgspec.Struct, frozen=True):
    """What the model knows about one option symbol."""

    symbol: str
    option: OptionSymbol
    underlying: Underlying
    expires_at: dt.datetime
    # Floats the pricing loop needs on every tick, computed once.
    strike: float
    call: bool
    expires_epoch: float


class MarketFeed(Protocol):
    """Where the market sends stream events (the market-stream hub implements it)."""

    def wanted(self) -> Iterable[str]: ...

    def publish(self, symbol: str, kind: str, line: str) -> None: ...


class _NoFeed:
    def wanted(self) -> Iterable[str]:
        return ()

    def publish(self, symbol: str, kind: str, line: str) -> None:
        pass


class _Override(msgspec.Struct):
    kind: str  # "stale" | "crossed" | "zero_bid"
    until: float  # market offset
    frozen: Quote | None = None


class Market:
    """Owner of every quote. Invariant: ``_quotes[s]`` is the true quote of ``s`` as of tick
    ``_tick_no`` or earlier; it is recomputed on first use after each tick."""

    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self.scenario = scenario
        self.clock = clock
        # The engine's New York calendar: holidays and half days are the same on both sides.
        self.calendar = MarketCalendar.load(clock.start)
        self.config = scenario.market
        self.feed: MarketFeed = _NoFeed()
        self._tick_cents = max(1, int(self.config.tick_size * 100))
        # Widths in float cents: the model works in floats, only the quotes are exact cents.
        self._min_width = float(self.config.min_width * 100)
        self._max_width = float(self.config.max_width * 100)
        self._exchanges: dict[str, tuple[str, str]] = {}
        self._paths: dict[str, PricePath] = {}
        self._by_symbol: dict[str, Underlying] = {}
        for index, underlying in enumerate(scenario.underlyings):
            self._paths[underlying.symbol] = build_path(scenario, index)
            self._by_symbol[underlying.symbol] = underlying
        self._contracts: dict[str, Contract | None] = {}
        self._tick_no = 0
        self._offset = 0.0
        self._now_ms = clock.epoch_ms()
        self._spots: dict[str, float] = {}
        self._quotes: dict[str, tuple[int, Quote]] = {}
        self._emitted: dict[str, Quote] = {}
        self._emitted_at: dict[str, float] = {}
        self._overrides: dict[str, _Override] = {}
        self._volume: dict[str, int] = {}
        self._last_trade: dict[str, int] = {}
        self._day: dict[str, tuple[int, int, int]] = {}  # open, high, low (cents)
        self._seq = 0
        self._update_spots()

    # -- time -------------------------------------------------------------------------------

    @property
    def offset(self) -> float:
        """Market seconds after the start, as of the last tick."""
        return self._offset

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def advance(self) -> None:
        """One model tick: move the underlyings, expire overrides, emit changed quotes."""
        self._tick_no += 1
        self._offset = self.clock.elapsed()
        self._now_ms = self.clock.epoch_ms()
        self._update_spots()
        for symbol, override in list(self._overrides.items()):
            if self._offset >= override.until:
                del self._overrides[symbol]
        self._emit_changes()

    def _update_spots(self) -> None:
        for symbol, path in self._paths.items():
            spot = path.price_at(self._offset)
            previous = self._spots.get(symbol)
            self._spots[symbol] = spot
            if previous is None or round(previous * 100) != round(spot * 100):
                self._underlying_traded(symbol, round(spot * 100))

    # -- symbols ----------------------------------------------------------------------------

    def underlying(self, symbol: str) -> Underlying | None:
        return self._by_symbol.get(symbol)

    def contract(self, symbol: str) -> Contract | None:
        """The option contract for ``symbol``, or None for an unknown or non-option symbol."""
        if symbol in self._contracts:
            return self._contracts[symbol]
        contract = None
        try:
            option = OptionSymbol.parse(symbol)
        except InvalidSymbol:
            option = None
        underlying = self.scenario.underlying_for_root(option.root) if option else None
        if option is not None and underlying is not None:
            expires = self.close_on(option.expiration)
            contract = Contract(symbol, option, underlying, expires, float(option.strike),
                                option.right is OptionRight.CALL, expires.timestamp())
        self._contracts[symbol] = contract
        return contract

    def close_on(self, day: dt.date) -> dt.datetime:
        """When the New York session of ``day`` closes (13:00 on a half day); a day without a
        session (a holiday, a weekend) keeps the regular 16:00, so a scenario set on one still
        has an end of day for day orders and expirations."""
        close = self.calendar.close_of(day)
        if close is None:
            return dt.datetime.combine(day, REGULAR_CLOSE, tzinfo=EASTERN)
        return close.astimezone(EASTERN)

    def is_known(self, symbol: str) -> bool:
        return symbol in self._by_symbol or self.contract(symbol) is not None

    def spot(self, underlying: str) -> float:
        return self._spots[underlying]

    def expirations(self, underlying: str) -> list[dt.date]:
        u = self._by_symbol.get(underlying)
        if u is None:
            return []
        today = self.clock.now().astimezone(EASTERN).date()
        return sorted(d for d in set(u.expirations) if d >= today)

    def chain(self, underlying: str, expiration: dt.date) -> list[str]:
        u = self._by_symbol.get(underlying)
        if u is None or expiration not in u.expirations:
            return []
        symbols = []
        for strike in u.strike_list():
            for right in (OptionRight.CALL, OptionRight.PUT):
                symbols.append(OptionSymbol(u.option_root, expiration, right, strike).format())
        return symbols

    def years_to_expiry(self, contract: Contract) -> float:
        seconds = contract.expires_epoch - self._now_ms / 1000
        return max(0.0, seconds / _YEAR_SECONDS)

    def model_vol(self, contract: Contract) -> float:
        u = contract.underlying
        return vol_at_strike(u.volatility, u.skew, self._spots[u.symbol], contract.strike)

    def theo(self, contract: Contract) -> float:
        return theo(
            self._spots[contract.underlying.symbol],
            contract.strike,
            self.years_to_expiry(contract),
            self.model_vol(contract),
            self.config.rate,
            contract.call,
        )

    # -- quotes -----------------------------------------------------------------------------

    def true_quote(self, symbol: str) -> Quote | None:
        """The market as the broker sees it (no faults), as of the last tick."""
        cached = self._quotes.get(symbol)
        if cached is not None and cached[0] == self._tick_no:
            return cached[1]
        book = self._book(symbol)
        if book is None:
            return None
        bid, ask = book
        if cached is not None and (cached[1].bid, cached[1].ask) == (bid, ask):
            quote = cached[1]  # unchanged: keep the time it last changed
        else:
            quote = self._make_quote(symbol, bid, ask)
        self._quotes[symbol] = (self._tick_no, quote)
        return quote

    def quote(self, symbol: str) -> Quote | None:
        """The published quote (what the stream and REST show), faults applied."""
        true = self.true_quote(symbol)
        override = self._overrides.get(symbol)
        if true is None or override is None:
            return true
        if override.kind == "stale":
            return override.frozen or true
        if override.kind == "crossed":
            return msgspec.structs.replace(true, bid=true.ask + self._tick_cents, ask=true.bid)
        return msgspec.structs.replace(true, bid=0, bid_size=0)

    def _make_quote(self, symbol: str, bid: int, ask: int) -> Quote:
        exchanges = self._exchanges.get(symbol)
        if exchanges is None:
            rng = random.Random(symbol)
            exchanges = self._exchanges[symbol] = (rng.choice(_EXCHANGES), rng.choice(_EXCHANGES))
        return Quote(
            symbol=symbol,
            bid=bid,
            ask=ask,
            bid_size=self.config.bid_size if bid > 0 else 0,
            ask_size=self.config.ask_size,
            bid_exch=exchanges[0],
            ask_exch=exchanges[1],
            at_ms=self._now_ms,
        )

    def _book(self, symbol: str) -> tuple[int, int] | None:
        tick = self._tick_cents
        if symbol in self._spots:
            width = max(tick, _round_up(int(self.config.underlying_width * 100), tick))
            bid = math.floor((self._spots[symbol] * 100 - width / 2) / tick) * tick
            return max(0, bid), max(0, bid) + width
        contract = self._contracts[symbol] if symbol in self._contracts else \
            self.contract(symbol)
        if contract is None:
            return None
        value = self.theo(contract) * 100
        spread = min(max(value * self.config.width_fraction, self._min_width), self._max_width)
        width = max(tick, _round_up(math.ceil(spread - 1e-9), tick))
        bid = math.floor((value - width / 2) / tick) * tick
        if bid <= 0:
            return 0, max(tick, _round_up(math.ceil(value + width / 2), tick))
        return bid, bid + width

    def set_override(self, symbol: str, kind: str, duration: float) -> None:
        """Start a quote fault (``stale``, ``crossed`` or ``zero_bid``) for ``duration`` s."""
        frozen = self.quote(symbol) if kind == "stale" else None
        self._overrides[symbol] = _Override(kind, self._offset + duration, frozen)

    # -- the stream -------------------------------------------------------------------------

    def _emit_changes(self) -> None:
        now = trio.current_time()
        interval = self.config.quote_interval_ms / 1000
        for symbol in self.feed.wanted():
            quote = self.quote(symbol)
            last = self._emitted.get(symbol)
            if quote is None or quote is last or quote.same_book(last):
                continue
            if now - self._emitted_at.get(symbol, -math.inf) < interval:
                continue  # rate-capped: the newest quote goes out on a later tick
            self._emitted[symbol] = quote
            self._emitted_at[symbol] = now
            self.feed.publish(symbol, "quote", quote_line(quote))

    def snapshot_lines(self, symbol: str, kinds: frozenset[str]) -> list[tuple[str, str]]:
        """What a new subscriber gets at once: the summary and the current quote."""
        lines: list[tuple[str, str]] = []
        quote = self.quote(symbol)
        if quote is None:
            return lines
        if "summary" in kinds:
            lines.append(("summary", self._summary_line(symbol, quote)))
        if "quote" in kinds:
            lines.append(("quote", quote_line(quote)))
        return lines

    def _summary_line(self, symbol: str, quote: Quote) -> str:
        mid = round(quote.mid_cents)
        open_, high, low = self._day.get(symbol, (mid, mid, mid))
        return (f'{{"type":"summary","symbol":"{symbol}","open":"{cents_text(open_)}",'
                f'"high":"{cents_text(high)}","low":"{cents_text(low)}",'
                f'"prevClose":"{cents_text(open_)}"}}')

    def _underlying_traded(self, symbol: str, cents: int) -> None:
        self.record_trade(symbol, cents, 100)

    def record_trade(self, symbol: str, cents: int, size: int) -> None:
        """A print: updates last, volume and the day's range, and streams trade + timesale."""
        self._last_trade[symbol] = cents
        self._volume[symbol] = self._volume.get(symbol, 0) + size
        open_, high, low = self._day.get(symbol, (cents, cents, cents))
        self._day[symbol] = (open_, max(high, cents), min(low, cents))
        price, date = cents_text(cents), self._now_ms
        trade = (f'"symbol":"{symbol}","exch":"Q","price":"{price}","size":"{size}",'
                 f'"cvol":"{self._volume[symbol]}","date":"{date}","last":"{price}"}}')
        self.feed.publish(symbol, "trade", '{"type":"trade",' + trade)
        self.feed.publish(symbol, "tradex", '{"type":"tradex",' + trade)
        quote = self.quote(symbol) if symbol in self._spots else None
        self._seq += 1
        bid = cents_text(quote.bid) if quote else price
        ask = cents_text(quote.ask) if quote else price
        self.feed.publish(symbol, "timesale", (
            f'{{"type":"timesale","symbol":"{symbol}","exch":"Q","bid":"{bid}","ask":"{ask}",'
            f'"last":"{price}","size":"{size}","date":"{date}","seq":{self._seq},"flag":"",'
            f'"cancel":false,"correction":false,"session":"normal"}}'))

    def last_trade(self, symbol: str) -> int | None:
        return self._last_trade.get(symbol)

    def volume(self, symbol: str) -> int:
        return self._volume.get(symbol, 0)

    def day_range(self, symbol: str) -> tuple[int, int, int] | None:
        return self._day.get(symbol)


def quote_line(quote: Quote) -> str:
    """Tradier's stream quote: prices are numbers, sizes integers, dates epoch-ms strings."""
    bid, ask = quote.bid, quote.ask  # never negative: plain divmod formatting is exact
    return (
        f'{{"type":"quote","symbol":"{quote.symbol}","bid":{bid // 100}.{bid % 100:02d},'
        f'"bidsz":{quote.bid_size},"bidexch":"{quote.bid_exch}","biddate":"{quote.at_ms}",'
        f'"ask":{ask // 100}.{ask % 100:02d},"asksz":{quote.ask_size},'
        f'"askexch":"{quote.ask_exch}","askdate":"{quote.at_ms}"}}'
    )


def _round_up(cents: int, tick: int) -> int:
    return -(-cents // tick) * tick
