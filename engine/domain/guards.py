"""Quote guards: which quotes are too bad to act on (DESIGN section 5).

A guard never decides anything by itself: :mod:`engine.domain.exit_rules` turns a would-be exit
into ``held_by_guard`` when a guard names a reason. Reasons are short stable strings
(``"crossed:SPY250620P00500000"``) so that records can be counted and grouped.

- **missing**: a leg with no quote, or a missing or negative bid or ask. Not a guard but a hold:
  without both sides there is no mark, and the rules never guess one.
- **crossed**: bid > ask. A locked quote (bid = ask) is a valid market.
- **stale**: the quote's age (seconds, measured by the caller on trio time) is above
  ``max_quote_age_seconds``.
- **wide**: ``(ask - bid) / mid > max_relative_width`` and ``ask - bid > width_floor``. Relative to
  the price, not an absolute amount; the floor keeps one or two ticks on a cheap option from
  counting as wide. A long leg with a zero bid is exempt: a far out-of-the-money wing is often
  offered at a few cents and bid at nothing, and its zero bid is a valid quote.
- **underlying_stale**: the underlying price's age is above the limit. It only holds back the
  rules that read the underlying.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from engine.domain.exit_plan import ExitPlan
from engine.domain.spread import Spread

__all__ = ["TimedQuote", "leg_guard_reasons", "missing_quote_reasons", "underlying_guard_reasons"]

_TWO = Decimal(2)


class TimedQuote(msgspec.Struct, frozen=True, kw_only=True):
    """One leg's top of book and how old it is (seconds of trio time since it arrived). Fits
    :class:`engine.domain.pricing.QuoteLike`. None means the side is not quoted."""

    bid: Decimal | None
    ask: Decimal | None
    age_seconds: float = 0.0


def missing_quote_reasons(spread: Spread, quotes: Sequence[TimedQuote | None]) -> tuple[str, ...]:
    """``missing:<symbol>`` for each leg whose quote, bid or ask is absent or negative."""
    reasons = []
    for leg, quote in zip(spread.legs, quotes, strict=True):
        if (
            quote is None
            or quote.bid is None
            or quote.ask is None
            or quote.bid < 0
            or quote.ask < 0
        ):
            reasons.append(f"missing:{leg.occ}")
    return tuple(reasons)


def leg_guard_reasons(
    plan: ExitPlan, spread: Spread, quotes: Sequence[TimedQuote]
) -> tuple[str, ...]:
    """Every guard reason for the legs' quotes, in leg order (crossed, stale, wide per leg).
    The quotes must all be present (see :func:`missing_quote_reasons`)."""
    reasons = []
    max_age = float(plan.max_quote_age_seconds)
    for leg, quote in zip(spread.legs, quotes, strict=True):
        bid, ask = quote.bid, quote.ask
        assert bid is not None and ask is not None, "check missing quotes first"
        if bid > ask:
            reasons.append(f"crossed:{leg.occ}")
        if quote.age_seconds > max_age:
            reasons.append(f"stale:{leg.occ}")
        if bid > ask or (bid == 0 and not leg.is_short):
            continue  # crossed already reported; a zero-bid long wing is a valid quote
        width = ask - bid
        mid = (bid + ask) / _TWO
        if width > plan.width_floor and (mid == 0 or width / mid > plan.max_relative_width):
            reasons.append(f"wide:{leg.occ}")
    return tuple(reasons)


def underlying_guard_reasons(plan: ExitPlan, age_seconds: float | None) -> tuple[str, ...]:
    """``("underlying_stale",)`` when the underlying price is older than the limit."""
    if age_seconds is not None and age_seconds > float(plan.max_quote_age_seconds):
        return ("underlying_stale",)
    return ()
