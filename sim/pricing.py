"""Black-Scholes prices, greeks and implied volatility (European, no dividends).

Floats on purpose: this is the theoretical model. Quotes derived from it are rounded to the tick
into integer cents before anyone sees them.
"""

from __future__ import annotations

from math import erf, exp, log, pi, sqrt

import msgspec

__all__ = ["Greeks", "greeks", "implied_vol", "theo", "vol_at_strike"]

_SQRT2 = sqrt(2.0)
_INV_SQRT_2PI = 1.0 / sqrt(2.0 * pi)
_MIN_T = 1e-9  # years: at expiry the price is intrinsic


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + erf(x / _SQRT2))


def _pdf(x: float) -> float:
    return _INV_SQRT_2PI * exp(-0.5 * x * x)


def vol_at_strike(base: float, skew: float, spot: float, strike: float) -> float:
    """Volatility for one strike: ``base - skew * ln(K / S)``, floored at 1%."""
    if skew == 0.0:
        return base
    return max(0.01, base - skew * log(strike / spot))


def theo(spot: float, strike: float, years: float, vol: float, rate: float, call: bool) -> float:
    if years <= _MIN_T:
        return max(0.0, spot - strike) if call else max(0.0, strike - spot)
    root = vol * sqrt(years)
    d1 = (log(spot / strike) + (rate + 0.5 * vol * vol) * years) / root
    d2 = d1 - root
    discount = strike * exp(-rate * years)
    if call:
        return spot * _cdf(d1) - discount * _cdf(d2)
    return discount * _cdf(-d2) - spot * _cdf(-d1)


class Greeks(msgspec.Struct, frozen=True):
    delta: float
    gamma: float
    theta: float  # per calendar day
    vega: float  # per 1 vol point
    rho: float  # per 1 rate point
    phi: float  # per 1 dividend-yield point


def greeks(spot: float, strike: float, years: float, vol: float, rate: float, call: bool) -> Greeks:
    if years <= _MIN_T:
        itm = spot > strike if call else spot < strike
        delta = (1.0 if call else -1.0) if itm else 0.0
        return Greeks(delta=delta, gamma=0.0, theta=0.0, vega=0.0, rho=0.0, phi=0.0)
    root_t = sqrt(years)
    d1 = (log(spot / strike) + (rate + 0.5 * vol * vol) * years) / (vol * root_t)
    d2 = d1 - vol * root_t
    discount = exp(-rate * years)
    pdf = _pdf(d1)
    gamma = pdf / (spot * vol * root_t)
    vega = spot * pdf * root_t / 100
    decay = -spot * pdf * vol / (2 * root_t)
    if call:
        delta = _cdf(d1)
        theta = (decay - rate * strike * discount * _cdf(d2)) / 365
        rho = strike * years * discount * _cdf(d2) / 100
        phi = -spot * years * _cdf(d1) / 100
    else:
        delta = _cdf(d1) - 1.0
        theta = (decay + rate * strike * discount * _cdf(-d2)) / 365
        rho = -strike * years * discount * _cdf(-d2) / 100
        phi = spot * years * _cdf(-d1) / 100
    return Greeks(delta=delta, gamma=gamma, theta=theta, vega=vega, rho=rho, phi=phi)


def implied_vol(
    price: float, spot: float, strike: float, years: float, rate: float, call: bool
) -> float | None:
    """The volatility that prices the option at ``price`` (bisection), or None if none does."""
    if years <= _MIN_T or price <= 0:
        return None
    low, high = 1e-4, 5.0
    if not theo(spot, strike, years, low, rate, call) <= price <= theo(
        spot, strike, years, high, rate, call
    ):
        return None
    for _ in range(60):
        mid = 0.5 * (low + high)
        if theo(spot, strike, years, mid, rate, call) < price:
            low = mid
        else:
            high = mid
        if high - low < 1e-6:
            break
    return 0.5 * (low + high)
