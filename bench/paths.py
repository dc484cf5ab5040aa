"""Seeded market material for the benchmarks: underlying paths, spreads, and leg quotes.

Not a benchmark itself; :mod:`bench.reactive_vs_polled` and :mod:`bench.core_cost` share it.

- :class:`UnderlyingPath`: geometric Brownian motion sampled every second of market time, with
  Poisson jumps, generated lazily from its own seed (the same seed gives the same path however
  far it is read). Volatility and drift are per trading year (252 sessions of 6.5 hours), the
  simulator's convention.
- :func:`build_spread`: the five auto-exited shapes (bull put credit, bear call credit, bull call
  debit, bear put debit, iron condor) around a spot price, as a classified domain
  :class:`~engine.domain.spread.Spread` of real OCC symbols.
- :func:`quote_cents`: a leg's bid and ask in integer cents from Black-Scholes
  (:func:`engine.domain.volatility.bs_price`), a few percent wide, never crossed. Cents keep the
  arithmetic exact; :func:`cents` turns them into the ``Decimal`` the engine reads.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from typing import Final

from engine.domain.occ import OptionRight, OptionSymbol
from engine.domain.spread import Leg, Side, Spread
from engine.domain.strategy import Strategy
from engine.domain.volatility import bs_price

__all__ = [
    "RATE",
    "SECONDS_PER_YEAR",
    "SHAPES",
    "TRADING_YEAR_SECONDS",
    "UnderlyingPath",
    "build_spread",
    "cents",
    "quote_cents",
]

TRADING_YEAR_SECONDS: Final = 252 * 6.5 * 3600
"""Volatility of the paths is quoted per trading year, as in the simulator."""
SECONDS_PER_YEAR: Final = 365.0 * 24 * 3600
"""Black-Scholes time runs on calendar years (:func:`engine.domain.volatility.years_to_expiry`)."""
RATE: Final = 0.04
"""The default plan's risk-free rate: quotes priced with it solve back to their volatility."""

SHAPES: Final[tuple[Strategy, ...]] = (
    Strategy.BULL_PUT_CREDIT,
    Strategy.BEAR_CALL_CREDIT,
    Strategy.BULL_CALL_DEBIT,
    Strategy.BEAR_PUT_DEBIT,
    Strategy.IRON_CONDOR,
)
"""Every strategy the engine exits by itself (the ones with a credit or debit direction)."""

_CHUNK = 600  # path seconds generated at a time: reading ahead costs little, re-seeding nothing
_DECIMAL_CENTS: dict[int, Decimal] = {}


class UnderlyingPath:
    """Prices at whole seconds ``0, 1, 2...`` after the path's start; the drift changes to
    ``drift_after`` from second ``turn_at`` on (a trend that reverses). Invariant: ``_prices``
    holds the first ``len(_prices)`` seconds; the generator state continues from the last."""

    def __init__(
        self,
        *,
        start: float,
        vol: float,
        drift: float,
        seed: int,
        jumps_per_hour: float = 0.0,
        jump_size: float = 0.0,
        turn_at: int | None = None,
        drift_after: float = 0.0,
    ) -> None:
        step_years = 1.0 / TRADING_YEAR_SECONDS
        self._mu = (drift - 0.5 * vol * vol) * step_years
        self._mu_after = (drift_after - 0.5 * vol * vol) * step_years
        self._turn_at = turn_at
        self._sigma = vol * math.sqrt(step_years)
        self._jump_chance = jumps_per_hour / 3600.0
        self._jump_size = jump_size
        self._rng = random.Random(seed)
        self._prices = [start]

    def at(self, second: int) -> float:
        """The price ``second`` seconds after the start."""
        prices = self._prices
        if second >= len(prices):
            self._extend(second + _CHUNK)
        return prices[second]

    def _extend(self, length: int) -> None:
        prices, rng = self._prices, self._rng
        gauss, chance, size = rng.gauss, self._jump_chance, self._jump_size
        sigma, turn_at = self._sigma, self._turn_at
        log_price = math.log(prices[-1])
        while len(prices) < length:
            after = turn_at is not None and len(prices) > turn_at
            log_price += (self._mu_after if after else self._mu) + sigma * gauss(0.0, 1.0)
            if chance and rng.random() < chance:
                log_price += gauss(0.0, size)
            prices.append(math.exp(log_price))


def cents(amount: int) -> Decimal:
    """``amount`` cents as an exact two-place Decimal (cached: the same few thousand recur)."""
    value = _DECIMAL_CENTS.get(amount)
    if value is None:
        value = _DECIMAL_CENTS[amount] = Decimal(amount).scaleb(-2)
    return value


def quote_cents(
    right: OptionRight, spot: float, strike: float, years: float, vol: float
) -> tuple[int, int]:
    """Bid and ask in cents around the Black-Scholes value: about 3 % wide, at least a cent;
    the bid never below zero, the ask never below a cent (a worthless wing is 0 x 0.01)."""
    theo = bs_price(right, spot, strike, max(years, 0.0), vol, RATE) * 100.0
    half = max(0.5, theo * 0.015)
    bid = max(0, math.floor(theo - half))
    ask = max(bid + 1, math.ceil(theo + half))
    return bid, ask


def _leg(root: str, expiration: dt.date, right: OptionRight, strike: int, side: Side) -> Leg:
    symbol = OptionSymbol(root=root, expiration=expiration, right=right, strike=Decimal(strike))
    return Leg(symbol=symbol, side=side, quantity=1)


def build_spread(
    strategy: Strategy,
    *,
    root: str,
    expiration: dt.date,
    spot: float,
    distance: float,
    width: int,
) -> Spread:
    """A one-lot spread of ``strategy`` on whole-dollar strikes. ``distance`` is how far out of
    the money the short strikes of a credit spread sit, or the long strike of a debit spread
    (a fraction of spot; negative is in the money), ``width`` the wing in dollars."""
    put, call = OptionRight.PUT, OptionRight.CALL
    long_, short = Side.LONG, Side.SHORT
    below, above = round(spot * (1 - distance)), round(spot * (1 + distance))
    legs: list[Leg]
    match strategy:
        case Strategy.BULL_PUT_CREDIT:
            legs = [_leg(root, expiration, put, below, short)]
            legs.append(_leg(root, expiration, put, below - width, long_))
        case Strategy.BEAR_CALL_CREDIT:
            legs = [_leg(root, expiration, call, above, short)]
            legs.append(_leg(root, expiration, call, above + width, long_))
        case Strategy.BULL_CALL_DEBIT:
            legs = [_leg(root, expiration, call, above, long_)]
            legs.append(_leg(root, expiration, call, above + width, short))
        case Strategy.BEAR_PUT_DEBIT:
            legs = [_leg(root, expiration, put, below, long_)]
            legs.append(_leg(root, expiration, put, below - width, short))
        case Strategy.IRON_CONDOR:
            legs = [
                _leg(root, expiration, put, below - width, long_),
                _leg(root, expiration, put, below, short),
                _leg(root, expiration, call, above, short),
                _leg(root, expiration, call, above + width, long_),
            ]
        case _:
            raise ValueError(f"no shape for {strategy}")
    spread = Spread.from_legs(legs)
    if spread.strategy is not strategy:
        raise ValueError(f"{strategy} at spot {spot} distance {distance} made {spread.strategy}")
    return spread
