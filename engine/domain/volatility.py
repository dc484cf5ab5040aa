"""Black-Scholes price, delta and implied volatility of European options (no dividends).

Volatility is not money, so the model runs on floats: inputs are converted with ``float()`` at
the edge (prices, strikes and rates may be passed as ``Decimal``), and results are floats. A
caller that stores or records a volatility or a delta turns it back into a ``Decimal`` with
:func:`to_decimal` (six decimal places), so that records stay exact and comparable.

Time to expiry is in years of 365 days. :func:`years_to_expiry` measures it from a market time
to 16:00 New York time on the expiration date (the close, when equity options stop trading).

:func:`implied_volatility` is a bracketed solver: Newton steps on vega, falling back to
bisection whenever a step would leave the bracket or vega is too small, so it always converges
on a price that has a solution and returns None for one that has none (a price at or below the
discounted intrinsic value, at or above the no-arbitrage upper bound, or beyond the bracket).
This module never imports the simulator's pricing (engine never imports sim).
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

from engine.domain.occ import OptionRight

__all__ = [
    "MAX_VOLATILITY",
    "MIN_VOLATILITY",
    "bs_delta",
    "bs_price",
    "implied_volatility",
    "to_decimal",
    "years_to_expiry",
]

MIN_VOLATILITY: Final = 1e-4
"""Lower end of the solver's bracket (0.01 % a year)."""
MAX_VOLATILITY: Final = 5.0
"""Upper end of the solver's bracket (500 % a year); a price that needs more has no solution."""

_NEW_YORK = ZoneInfo("America/New_York")
_CLOSE = dt.time(16, 0)
_SECONDS_PER_YEAR = 365.0 * 24 * 3600
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SIX_PLACES = Decimal("0.000001")

Number = float | int | Decimal


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def _pdf(x: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def _d1_d2(
    spot: float, strike: float, years: float, vol: float, rate: float
) -> tuple[float, float]:
    root = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / root
    return d1, d1 - root


def _intrinsic(right: OptionRight, spot: float, strike: float) -> float:
    return max(0.0, spot - strike) if right is OptionRight.CALL else max(0.0, strike - spot)


def _check(spot: float, strike: float) -> None:
    if spot <= 0 or strike <= 0:
        raise ValueError(f"spot {spot} and strike {strike} must be positive")


def bs_price(
    right: OptionRight, spot: Number, strike: Number, years: Number, vol: Number, rate: Number = 0
) -> float:
    """Black-Scholes price of one option (per share). At or past expiry (``years <= 0``) or with
    no volatility it is the (discounted) intrinsic value."""
    s, k, t, v, r = float(spot), float(strike), float(years), float(vol), float(rate)
    _check(s, k)
    if t <= 0:
        return _intrinsic(right, s, k)
    discount = math.exp(-r * t)
    if v <= 0:
        forward_intrinsic = s - k * discount
        return max(0.0, forward_intrinsic if right is OptionRight.CALL else -forward_intrinsic)
    d1, d2 = _d1_d2(s, k, t, v, r)
    if right is OptionRight.CALL:
        return s * _cdf(d1) - k * discount * _cdf(d2)
    return k * discount * _cdf(-d2) - s * _cdf(-d1)


def bs_delta(
    right: OptionRight, spot: Number, strike: Number, years: Number, vol: Number, rate: Number = 0
) -> float:
    """Delta of one long option: in [0, 1] for a call, [-1, 0] for a put. At expiry (or with no
    volatility) it is the step function of moneyness (0.5 / -0.5 exactly at the money)."""
    s, k, t, v, r = float(spot), float(strike), float(years), float(vol), float(rate)
    _check(s, k)
    if t <= 0 or v <= 0:
        forward = s - k * math.exp(-r * max(t, 0.0))
        step = 1.0 if forward > 0 else 0.0 if forward < 0 else 0.5
        return step if right is OptionRight.CALL else step - 1.0
    d1, _ = _d1_d2(s, k, t, v, r)
    return _cdf(d1) if right is OptionRight.CALL else _cdf(d1) - 1.0


def _vega(spot: float, strike: float, years: float, vol: float, rate: float) -> float:
    d1, _ = _d1_d2(spot, strike, years, vol, rate)
    return spot * _pdf(d1) * math.sqrt(years)


def implied_volatility(
    right: OptionRight,
    price: Number,
    spot: Number,
    strike: Number,
    years: Number,
    rate: Number = 0,
    *,
    tolerance: float = 1e-10,
    max_iterations: int = 100,
) -> float | None:
    """The volatility at which :func:`bs_price` equals ``price``, within ``tolerance`` of the
    price, searched in [:data:`MIN_VOLATILITY`, :data:`MAX_VOLATILITY`]. None when there is no
    solution: expired (``years <= 0``), a price at or below the discounted intrinsic value (no
    time value left to explain), at or above the upper bound (spot for a call, the discounted
    strike for a put), or needing a volatility outside the bracket."""
    p, s, k, t, r = float(price), float(spot), float(strike), float(years), float(rate)
    _check(s, k)
    if t <= 0 or not math.isfinite(p):
        return None
    discount = math.exp(-r * t)
    lower = max(0.0, s - k * discount) if right is OptionRight.CALL else max(0.0, k * discount - s)
    upper = s if right is OptionRight.CALL else k * discount
    if p <= lower or p >= upper:
        return None
    lo, hi = MIN_VOLATILITY, MAX_VOLATILITY
    # The price is increasing in volatility, so the root is bracketed iff it lies between the
    # prices at the ends of the bracket.
    if bs_price(right, s, k, t, lo, r) > p or bs_price(right, s, k, t, hi, r) < p:
        return None
    vol = 0.3  # a usual equity volatility: Newton from here converges in a few steps
    for _ in range(max_iterations):
        diff = bs_price(right, s, k, t, vol, r) - p
        if abs(diff) <= tolerance:
            return vol
        if diff > 0:
            hi = vol
        else:
            lo = vol
        vega = _vega(s, k, t, vol, r)
        step = vol - diff / vega if vega > 1e-12 else math.nan
        # Newton when it stays strictly inside the bracket, bisection otherwise: that is what
        # keeps the search from diverging on deep in/out-of-the-money options with tiny vega.
        vol = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-12:
            return vol
    return vol


def years_to_expiry(now: dt.datetime, expiration: dt.date) -> float:
    """Years (of 365 days) from the market time ``now`` (timezone-aware) to 16:00 New York time
    on ``expiration``; negative once that moment has passed."""
    if now.tzinfo is None:
        raise ValueError("market time must be timezone-aware")
    close = dt.datetime.combine(expiration, _CLOSE, tzinfo=_NEW_YORK)
    return (close - now).total_seconds() / _SECONDS_PER_YEAR


def to_decimal(value: float) -> Decimal:
    """A model output (a volatility, a delta) as a Decimal rounded to six decimal places."""
    return Decimal(repr(value)).quantize(_SIX_PLACES)
