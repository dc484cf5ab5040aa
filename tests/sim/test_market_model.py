"""The market model: paths, Black-Scholes, quote construction, emission rules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio

from sim.clock import SimClock
from sim.market import Market
from sim.paths import KeyframePricePath, RandomWalkPricePath, ReplayPricePath
from sim.pricing import implied_vol, theo
from sim.scenario import parse_scenario
from tests.sim.helpers import SPY_PUT_650, scenario_text


class RecordingFeed:
    """A MarketFeed that keeps what was published."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols
        self.lines: list[tuple[str, str]] = []

    def wanted(self) -> Iterable[str]:
        return self.symbols

    def publish(self, symbol: str, kind: str, line: str) -> None:
        self.lines.append((kind, symbol))


def test_paths_interpolate_walk_reproducibly_and_replay_holds() -> None:
    keyframes = KeyframePricePath([(0, 100.0), (10, 110.0)])
    assert [keyframes.price_at(t) for t in (-5, 0, 5, 10, 20)] == [100, 100, 105, 110, 110]
    one = RandomWalkPricePath(start=100, step=1, vol=0.3, drift=0, seed="7:SPY")
    two = RandomWalkPricePath(start=100, step=1, vol=0.3, drift=0, seed="7:SPY")
    late = [one.price_at(t) for t in (50, 3, 10.5)]
    assert late == [two.price_at(t) for t in (50, 3, 10.5)]  # order of asking is irrelevant
    assert one.price_at(10.5) == (one.price_at(10) + one.price_at(11)) / 2
    replay = ReplayPricePath([(5, 101.0), (0, 100.0)])
    assert [replay.price_at(t) for t in (-1, 4.9, 5, 99)] == [100, 100, 101, 101]


def test_black_scholes_parity_and_implied_vol() -> None:
    spot, strike, years, vol, rate = 680.0, 650.0, 0.05, 0.2, 0.04
    call = theo(spot, strike, years, vol, rate, True)
    put = theo(spot, strike, years, vol, rate, False)
    assert math.isclose(call - put, spot - strike * math.exp(-rate * years), rel_tol=1e-9)
    assert math.isclose(implied_vol(put, spot, strike, years, rate, False) or 0, vol,
                        abs_tol=1e-4)
    assert theo(spot, strike, 0.0, vol, rate, False) == 0.0


async def test_quotes_are_tick_rounded_and_emitted_only_on_change(autojump_clock: object) -> None:
    text = scenario_text(points='{ at = "0s", price = 680.0 }, { at = "1h", price = 700.0 }')
    scenario = parse_scenario(text)
    market = Market(scenario, SimClock(scenario.start_time, scenario.speed))
    feed = RecordingFeed(["SPY", SPY_PUT_650])
    market.feed = feed
    quote = market.quote(SPY_PUT_650)
    assert quote is not None and 0 < quote.bid < quote.ask
    assert quote.ask - quote.bid >= 2  # min width 0.02
    market.advance()
    first = len([kind for kind, _ in feed.lines if kind == "quote"])
    assert first == 2
    market.advance()  # same tick time: nothing changed, nothing sent
    assert len([kind for kind, _ in feed.lines if kind == "quote"]) == 2
    await trio.sleep(60)
    market.advance()
    symbols = [symbol for kind, symbol in feed.lines if kind == "quote"]
    assert symbols[2:] == ["SPY", SPY_PUT_650]
    assert market.quote(SPY_PUT_650).bid < quote.bid  # SPY rose: the put is cheaper
