"""Strategy classification: which spread a set of legs makes.

The rules (DESIGN section 5), for legs in any order:

- one leg: ``long_call``, ``long_put``, ``short_call`` or ``short_put`` (any quantity);
- a vertical is two legs of the same root, expiration and right, one long and one short, with
  different strikes and the same quantity:

  ======  ==============================  ===================
  right   short strike vs long strike     strategy
  ======  ==============================  ===================
  put     above                           ``bull_put_credit``
  put     below                           ``bear_put_debit``
  call    below                           ``bear_call_credit``
  call    above                           ``bull_call_debit``
  ======  ==============================  ===================

- an iron condor is a bull put credit vertical plus a bear call credit vertical, all four legs of
  one root and expiration and one quantity, every put strike strictly below every call strike
  (an iron butterfly, whose short strikes meet, is therefore ``custom``);
- everything else is ``custom``: mismatched quantities (ratio spreads), different expirations
  (calendars, diagonals), two long or two short legs, straddles, strangles, mixed roots.
  Custom spreads are mirrored and shown but never auto-exited, so when in doubt we say custom.

This module is pure and sits below :mod:`engine.domain.spread`; it reads legs only through
their ``symbol``, ``is_short`` and ``quantity`` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from engine.domain.occ import OptionRight

if TYPE_CHECKING:
    from engine.domain.spread import Leg

__all__ = [
    "CREDIT_STRATEGIES",
    "DEBIT_STRATEGIES",
    "Strategy",
    "classify",
    "common_quantity",
    "is_credit",
    "is_debit",
    "spread_width",
]


class Strategy(StrEnum):
    BULL_PUT_CREDIT = "bull_put_credit"
    BEAR_CALL_CREDIT = "bear_call_credit"
    BULL_CALL_DEBIT = "bull_call_debit"
    BEAR_PUT_DEBIT = "bear_put_debit"
    IRON_CONDOR = "iron_condor"
    LONG_CALL = "long_call"
    LONG_PUT = "long_put"
    SHORT_CALL = "short_call"
    SHORT_PUT = "short_put"
    CUSTOM = "custom"


# Opened for a net credit: closing costs a debit, and max profit is the credit received.
CREDIT_STRATEGIES: frozenset[Strategy] = frozenset(
    {
        Strategy.BULL_PUT_CREDIT,
        Strategy.BEAR_CALL_CREDIT,
        Strategy.IRON_CONDOR,
        Strategy.SHORT_CALL,
        Strategy.SHORT_PUT,
    }
)
# Opened for a net debit: closing brings in a credit, and max loss is the debit paid.
DEBIT_STRATEGIES: frozenset[Strategy] = frozenset(
    {
        Strategy.BULL_CALL_DEBIT,
        Strategy.BEAR_PUT_DEBIT,
        Strategy.LONG_CALL,
        Strategy.LONG_PUT,
    }
)

_VERTICALS: dict[tuple[OptionRight, bool], Strategy] = {
    # (right, short strike above long strike) -> strategy
    (OptionRight.PUT, True): Strategy.BULL_PUT_CREDIT,
    (OptionRight.PUT, False): Strategy.BEAR_PUT_DEBIT,
    (OptionRight.CALL, False): Strategy.BEAR_CALL_CREDIT,
    (OptionRight.CALL, True): Strategy.BULL_CALL_DEBIT,
}
_SINGLES: dict[tuple[OptionRight, bool], Strategy] = {
    # (right, is short) -> strategy
    (OptionRight.CALL, False): Strategy.LONG_CALL,
    (OptionRight.PUT, False): Strategy.LONG_PUT,
    (OptionRight.CALL, True): Strategy.SHORT_CALL,
    (OptionRight.PUT, True): Strategy.SHORT_PUT,
}


def is_credit(strategy: Strategy) -> bool:
    """True for strategies opened for a net credit. ``custom`` is neither credit nor debit."""
    return strategy in CREDIT_STRATEGIES


def is_debit(strategy: Strategy) -> bool:
    """True for strategies opened for a net debit. ``custom`` is neither credit nor debit."""
    return strategy in DEBIT_STRATEGIES


def classify(legs: Sequence[Leg]) -> Strategy:
    """The strategy these legs make, in any order. Raises ValueError for no legs."""
    if not legs:
        raise ValueError("cannot classify an empty set of legs")
    if len(legs) == 1:
        leg = legs[0]
        return _SINGLES[(leg.symbol.right, leg.is_short)]
    if not _one_series(legs):
        return Strategy.CUSTOM
    if len(legs) == 2:
        return _vertical(legs[0], legs[1])
    if len(legs) == 4:
        return _iron_condor(legs)
    return Strategy.CUSTOM


def _one_series(legs: Sequence[Leg]) -> bool:
    """Same root, same expiration, same quantity, and no contract listed twice."""
    first = legs[0]
    return all(
        leg.symbol.root == first.symbol.root
        and leg.symbol.expiration == first.symbol.expiration
        and leg.quantity == first.quantity
        for leg in legs
    ) and len({leg.symbol for leg in legs}) == len(legs)


def _vertical(a: Leg, b: Leg) -> Strategy:
    if a.symbol.right != b.symbol.right or a.is_short == b.is_short:
        return Strategy.CUSTOM
    short, long = (a, b) if a.is_short else (b, a)
    if short.symbol.strike == long.symbol.strike:
        return Strategy.CUSTOM
    return _VERTICALS[(short.symbol.right, short.symbol.strike > long.symbol.strike)]


def _iron_condor(legs: Sequence[Leg]) -> Strategy:
    puts = [leg for leg in legs if leg.symbol.right is OptionRight.PUT]
    calls = [leg for leg in legs if leg.symbol.right is OptionRight.CALL]
    if len(puts) != 2 or len(calls) != 2:
        return Strategy.CUSTOM
    if _vertical(*puts) is not Strategy.BULL_PUT_CREDIT:
        return Strategy.CUSTOM
    if _vertical(*calls) is not Strategy.BEAR_CALL_CREDIT:
        return Strategy.CUSTOM
    if max(leg.symbol.strike for leg in puts) >= min(leg.symbol.strike for leg in calls):
        return Strategy.CUSTOM
    return Strategy.IRON_CONDOR


def spread_width(strategy: Strategy, legs: Sequence[Leg]) -> Decimal | None:
    """Distance between the strikes of a vertical, per share; for an iron condor the wider wing
    (only one wing can finish in the money, so the wider one bounds the loss). None for single
    legs and custom spreads, which have no width."""
    if strategy is Strategy.IRON_CONDOR:
        puts = [leg.symbol.strike for leg in legs if leg.symbol.right is OptionRight.PUT]
        calls = [leg.symbol.strike for leg in legs if leg.symbol.right is OptionRight.CALL]
        return max(max(puts) - min(puts), max(calls) - min(calls))
    if strategy in _VERTICAL_STRATEGIES:
        return abs(legs[0].symbol.strike - legs[1].symbol.strike)
    return None


_VERTICAL_STRATEGIES = frozenset(_VERTICALS.values())


def common_quantity(legs: Sequence[Leg]) -> int:
    """How many spreads these legs hold: the greatest common divisor of the leg quantities.

    For every non-custom strategy the legs share one quantity, so this is that quantity. For a
    ratio spread (1x2) it is the number of whole ratio units, and each leg's ratio is its
    quantity divided by this."""
    if not legs:
        raise ValueError("no legs")
    return math.gcd(*(leg.quantity for leg in legs))
