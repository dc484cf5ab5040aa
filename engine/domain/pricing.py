"""Prices and P&L of a spread, per ONE spread unless a name says dollars. Pure Decimal arithmetic.

Two sign conventions, never mixed, each with its own names:

**Value** (signed, the holder's view): what holding one spread is worth, per share.
``value = sum over legs of (+price for a long leg, -price for a short leg) x leg ratio``.
Positive for a debit spread (an asset), negative for a credit spread (a liability).

- :func:`mark`: value at each leg's mid.
- :func:`natural_value`: value if closed right now at the touch: longs sold at the bid, shorts
  bought at the ask. Always <= the mark when quotes are not crossed.

**Price** (a positive amount in the strategy's own direction, like an order's limit price):

- ``entry_price``: always a positive per-spread amount; a credit received for credit strategies,
  a debit paid for debit strategies (:func:`engine.domain.strategy.is_credit` says which).
- :func:`close_price` turns a value into the price of the closing order: the **debit paid** to
  close a credit spread (``-value``), the **credit received** to close a debit spread
  (``+value``). :func:`mark_close_price` and :func:`natural_close_price` are that at the mark and
  at the natural. (It can be negative in odd markets, e.g. a credit spread that would pay you to
  close it; it is never clamped, so nothing is hidden.)

P&L per spread, from an entry price and a close price:
credit: ``entry - close``; debit: ``close - entry``. Max profit and max loss (per spread):

=================  ===================  =====================
strategy           max profit           max loss
=================  ===================  =====================
credit vertical    entry (credit)       width - entry
iron condor        entry (credit)       wider wing - entry
debit vertical     width - entry        entry (debit)
long call/put      None (unbounded)     entry (debit)
short call/put     entry (credit)       None (unbounded)
custom             None                 None
=================  ===================  =====================

Dollars: per-spread amount x number of spreads x :data:`CONTRACT_MULTIPLIER` (100 shares).

Quotes: any object with ``bid`` and ``ask`` attributes (``Decimal | None``) will do
(:class:`QuoteLike`; :class:`LegQuote` is the minimal one, and the feed's quote message also
fits). Quotes are passed as a sequence aligned with ``spread.legs``. A zero bid is a valid quote
(a far out-of-the-money long leg: mid = ask / 2). A missing bid or ask gives no mark (None),
never a guess. Crossed or stale quotes are priced as they are; judging them is the quote guards'
job, not this module's.

Custom spreads have no credit/debit direction: functions that need one raise ValueError (custom
spreads are mirrored, never auto-exited, so no watcher prices them).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final, Protocol

import msgspec

from engine.domain.spread import Spread
from engine.domain.strategy import Strategy, is_credit, is_debit

__all__ = [
    "CONTRACT_MULTIPLIER",
    "LegQuote",
    "QuoteLike",
    "SpreadPricer",
    "Valuation",
    "close_price",
    "dollars",
    "leg_mid",
    "loss_fraction",
    "mark",
    "mark_close_price",
    "max_loss",
    "max_profit",
    "natural_close_price",
    "natural_value",
    "pnl_per_spread",
    "profit_fraction",
    "valuate",
]

CONTRACT_MULTIPLIER: Final = 100
"""Shares per equity/index option contract: a per-share price x 100 = dollars per contract."""

_TWO = Decimal(2)


class QuoteLike(Protocol):
    """Anything with a bid and an ask: a :class:`LegQuote`, the feed's quote message, ..."""

    @property
    def bid(self) -> Decimal | None: ...

    @property
    def ask(self) -> Decimal | None: ...


class LegQuote(msgspec.Struct, frozen=True):
    """The minimal quote input. None means the side is missing (no market)."""

    bid: Decimal | None
    ask: Decimal | None


class Valuation(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a watcher needs about one spread at one set of quotes, per spread."""

    mark: Decimal  # signed value at mids
    natural_value: Decimal  # signed value at the touch
    mark_close_price: Decimal  # closing order price at the mark (debit for credit spreads)
    natural_close_price: Decimal  # closing order price at the touch
    pnl: Decimal  # at the mark
    natural_pnl: Decimal  # if closed at the natural now
    max_profit: Decimal | None
    max_loss: Decimal | None
    profit_fraction: Decimal | None  # pnl / max_profit, at the mark
    loss_fraction: Decimal | None  # -pnl / max_loss, at the mark


def leg_mid(quote: QuoteLike | None) -> Decimal | None:
    """The mid of one leg's quote; None when either side is missing or negative."""
    if quote is None:
        return None
    bid, ask = quote.bid, quote.ask
    if bid is None or ask is None or bid < 0 or ask < 0:
        return None
    return (bid + ask) / _TWO


def _check(spread: Spread, quotes: Sequence[QuoteLike | None]) -> None:
    if len(quotes) != len(spread.legs):
        raise ValueError(f"{len(quotes)} quotes for a spread of {len(spread.legs)} legs")


def mark(spread: Spread, quotes: Sequence[QuoteLike | None]) -> Decimal | None:
    """Signed value of one spread at mids (negative for a credit spread); None if any leg has
    no mid."""
    _check(spread, quotes)
    total = Decimal(0)
    for leg, quote in zip(spread.legs, quotes, strict=True):
        mid = leg_mid(quote)
        if mid is None:
            return None
        total += leg.sign * (leg.quantity // spread.quantity) * mid
    return total


def natural_value(spread: Spread, quotes: Sequence[QuoteLike | None]) -> Decimal | None:
    """Signed value of one spread if closed now at the touch: each long sold at its bid, each
    short bought back at its ask. None if a needed side is missing."""
    _check(spread, quotes)
    total = Decimal(0)
    for leg, quote in zip(spread.legs, quotes, strict=True):
        if quote is None:
            return None
        price = quote.ask if leg.is_short else quote.bid
        if price is None or price < 0:
            return None
        total += leg.sign * (leg.quantity // spread.quantity) * price
    return total


def _require_direction(strategy: Strategy) -> bool:
    """True for credit, False for debit; ValueError for custom."""
    if is_credit(strategy):
        return True
    if is_debit(strategy):
        return False
    raise ValueError(f"{strategy} has no credit/debit direction; it is never auto-exited")


def close_price(strategy: Strategy, value: Decimal) -> Decimal:
    """The closing order's price for a spread of this value: the debit paid to close a credit
    strategy, the credit received to close a debit strategy."""
    return -value if _require_direction(strategy) else value


def mark_close_price(spread: Spread, quotes: Sequence[QuoteLike | None]) -> Decimal | None:
    """Closing order price at the mark (per spread), or None without a mark."""
    value = mark(spread, quotes)
    return None if value is None else close_price(spread.strategy, value)


def natural_close_price(spread: Spread, quotes: Sequence[QuoteLike | None]) -> Decimal | None:
    """Closing order price at the touch right now (per spread), or None without quotes."""
    value = natural_value(spread, quotes)
    return None if value is None else close_price(spread.strategy, value)


def max_profit(spread: Spread, entry_price: Decimal) -> Decimal | None:
    """Most one spread can make; None when unbounded (long single) or unknown (custom)."""
    strategy = spread.strategy
    if is_credit(strategy):
        return entry_price
    width = spread.width
    if is_debit(strategy) and width is not None:
        return width - entry_price
    return None


def max_loss(spread: Spread, entry_price: Decimal) -> Decimal | None:
    """Most one spread can lose; None when unbounded (short single) or unknown (custom)."""
    strategy = spread.strategy
    if is_debit(strategy):
        return entry_price
    width = spread.width
    if is_credit(strategy) and width is not None:
        return width - entry_price
    return None


def pnl_per_spread(strategy: Strategy, entry_price: Decimal, close: Decimal) -> Decimal:
    """Profit (positive) or loss (negative) of one spread opened at ``entry_price`` and closed
    at the close price ``close`` (see :func:`close_price`), per share."""
    return entry_price - close if _require_direction(strategy) else close - entry_price


def profit_fraction(pnl: Decimal, max_profit: Decimal | None) -> Decimal | None:
    """``pnl / max_profit``: 1 at max profit, 0 at break-even, negative in a loss. None when max
    profit is unbounded, unknown or not positive (bad entry data must not divide by zero)."""
    if max_profit is None or max_profit <= 0:
        return None
    return pnl / max_profit


def loss_fraction(pnl: Decimal, max_loss: Decimal | None) -> Decimal | None:
    """``-pnl / max_loss``: the fraction of max loss lost; 1 at max loss, negative in a profit.
    None when max loss is unbounded, unknown or not positive."""
    if max_loss is None or max_loss <= 0:
        return None
    return -pnl / max_loss


def dollars(per_spread: Decimal, quantity: int) -> Decimal:
    """A per-spread, per-share amount in dollars for ``quantity`` spreads."""
    return per_spread * quantity * CONTRACT_MULTIPLIER


def valuate(
    spread: Spread, entry_price: Decimal, quotes: Sequence[QuoteLike | None]
) -> Valuation | None:
    """Mark, natural, P&L and fractions of one spread at these quotes; None without a mark.
    Raises ValueError for a custom spread (no direction)."""
    return SpreadPricer(spread, entry_price).valuate(quotes)


class SpreadPricer:
    """:func:`valuate` for one spread opened at one entry price, many times: what does not
    change from quote to quote (each leg's signed ratio, max profit and max loss) is worked out
    once. The arithmetic is :func:`mark`'s and :func:`natural_value`'s, term for term, so the
    results are the same Decimals."""

    __slots__ = ("_credit", "_entry_price", "_legs", "_strategy", "max_loss", "max_profit")

    def __init__(self, spread: Spread, entry_price: Decimal) -> None:
        strategy = self._strategy = spread.strategy
        self._credit = True if is_credit(strategy) else False if is_debit(strategy) else None
        self._entry_price = entry_price
        # Per leg: signed contracts per spread (the value's weight), and whether it is short
        # (bought back at the ask at the natural, where a long is sold at the bid).
        self._legs = tuple(
            (leg.sign * (leg.quantity // spread.quantity), leg.is_short) for leg in spread.legs
        )
        self.max_profit = max_profit(spread, entry_price)
        self.max_loss = max_loss(spread, entry_price)

    def valuate(self, quotes: Sequence[QuoteLike | None]) -> Valuation | None:
        if len(quotes) != len(self._legs):
            raise ValueError(f"{len(quotes)} quotes for a spread of {len(self._legs)} legs")
        value = touch = Decimal(0)
        for (weight, short), quote in zip(self._legs, quotes, strict=True):
            if quote is None:
                return None
            bid, ask = quote.bid, quote.ask
            if bid is None or ask is None or bid < 0 or ask < 0:
                return None  # no mid; and without a mid there is no mark to report
            value += weight * ((bid + ask) / _TWO)
            touch += weight * (ask if short else bid)
        # Custom: the ValueError comes once there is a mark to give a direction to.
        credit = _require_direction(self._strategy) if self._credit is None else self._credit
        entry = self._entry_price
        at_mark, at_touch = (-value, -touch) if credit else (value, touch)
        pnl = entry - at_mark if credit else at_mark - entry
        top, bottom = self.max_profit, self.max_loss
        return Valuation(
            mark=value,
            natural_value=touch,
            mark_close_price=at_mark,
            natural_close_price=at_touch,
            pnl=pnl,
            natural_pnl=entry - at_touch if credit else at_touch - entry,
            max_profit=top,
            max_loss=bottom,
            profit_fraction=profit_fraction(pnl, top),
            loss_fraction=loss_fraction(pnl, bottom),
        )
