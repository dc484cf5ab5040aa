"""Underlying price paths: a price as a function of market seconds after the start.

Every path is a pure function of the offset (and the seed), so the same scenario gives the same
prices no matter when or how often the market model samples it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
from pathlib import Path
from typing import Protocol

import msgspec

from engine.errors import ScenarioError
from sim.scenario import (
    KeyframesPath,
    RandomWalkPath,
    ReplayPath,
    Scenario,
    Underlying,
    parse_duration,
)

__all__ = ["KeyframePricePath", "PricePath", "RandomWalkPricePath", "ReplayPricePath", "build_path"]

# Volatility is quoted per trading year: 252 sessions of 6.5 hours.
_TRADING_YEAR_SECONDS = 252 * 6.5 * 3600


class PricePath(Protocol):
    def price_at(self, offset: float) -> float: ...


class KeyframePricePath:
    """Linear interpolation between (offset, price) points; flat outside them."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        points = sorted(points)
        self._offsets = [p[0] for p in points]
        self._prices = [p[1] for p in points]

    def price_at(self, offset: float) -> float:
        i = bisect.bisect_right(self._offsets, offset)
        if i == 0:
            return self._prices[0]
        if i == len(self._offsets):
            return self._prices[-1]
        t0, t1 = self._offsets[i - 1], self._offsets[i]
        p0, p1 = self._prices[i - 1], self._prices[i]
        return p0 + (p1 - p0) * (offset - t0) / (t1 - t0)


class RandomWalkPricePath:
    """Geometric Brownian motion sampled every ``step`` seconds, linear in between. Steps are
    generated lazily and kept, so any offset can be asked in any order."""

    def __init__(self, *, start: float, step: float, vol: float, drift: float, seed: str) -> None:
        self._step = step
        dt_years = step / _TRADING_YEAR_SECONDS
        self._mu = (drift - 0.5 * vol * vol) * dt_years
        self._sigma = vol * math.sqrt(dt_years)
        self._rng = random.Random(seed)
        self._prices = [start]

    def price_at(self, offset: float) -> float:
        position = max(0.0, offset) / self._step
        index = int(position)
        while len(self._prices) <= index + 1:
            shock = self._rng.gauss(0.0, 1.0)
            self._prices.append(self._prices[-1] * math.exp(self._mu + self._sigma * shock))
        p0, p1 = self._prices[index], self._prices[index + 1]
        return p0 + (p1 - p0) * (position - index)


class ReplayPricePath:
    """Recorded ticks: each price holds until the next tick; the first holds before it."""

    def __init__(self, ticks: list[tuple[float, float]]) -> None:
        ticks = sorted(ticks)
        self._offsets = [t[0] for t in ticks]
        self._prices = [t[1] for t in ticks]

    def price_at(self, offset: float) -> float:
        i = bisect.bisect_right(self._offsets, offset)
        return self._prices[max(0, i - 1)]


class _Tick(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    at: float | dt.datetime
    price: float


def _read_replay(scenario: Scenario, index: int, spec: ReplayPath) -> ReplayPricePath:
    path = Path(spec.file)
    if not path.is_absolute():
        path = Path(scenario.base_dir) / path
    where = f"underlyings[{index}].path.file"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScenarioError(f"{where}: cannot read {str(path)!r}: {exc.strerror}") from exc
    decoder = msgspec.json.Decoder(_Tick)
    start = scenario.start_time
    ticks: list[tuple[float, float]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            tick = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise ScenarioError(f"{where}: {path.name} line {number}: {exc}") from exc
        if tick.price <= 0:
            raise ScenarioError(f"{where}: {path.name} line {number}: price must be > 0")
        if isinstance(tick.at, dt.datetime):
            moment = tick.at if tick.at.tzinfo else tick.at.replace(tzinfo=start.tzinfo)
            ticks.append(((moment - start).total_seconds(), tick.price))
        else:
            ticks.append((tick.at, tick.price))
    if not ticks:
        raise ScenarioError(f"{where}: {path.name} holds no ticks")
    return ReplayPricePath(ticks)


def build_path(scenario: Scenario, index: int) -> PricePath:
    """The price path of ``scenario.underlyings[index]``. Raises ScenarioError for replay files
    that cannot be read or decoded."""
    underlying: Underlying = scenario.underlyings[index]
    spec = underlying.path
    if isinstance(spec, KeyframesPath):
        return KeyframePricePath([(scenario.offset_of(p.at), p.price) for p in spec.points])
    if isinstance(spec, RandomWalkPath):
        return RandomWalkPricePath(
            start=spec.start,
            step=parse_duration(spec.step),
            vol=spec.volatility or underlying.volatility,
            drift=spec.drift,
            seed=f"{scenario.seed}:{underlying.symbol}",
        )
    return _read_replay(scenario, index, spec)
