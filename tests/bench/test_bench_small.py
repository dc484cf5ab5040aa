"""The benchmarks at their tiny size: they run, return the figures they promise, and the figures
make sense. No timing assertions: figures are the benchmarks' output, not pass/fail criteria."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bench import core_cost, reactive_vs_polled
from bench.paths import SHAPES, UnderlyingPath, build_spread, quote_cents
from engine.domain.occ import OptionRight
from engine.domain.strategy import Strategy


@pytest.fixture(scope="module")
def polled() -> dict:
    return reactive_vs_polled.run(size="tiny", seed=1)


@pytest.fixture(scope="module")
def cost() -> dict:
    return core_cost.run(size="tiny", seed=1)


def test_reactive_vs_polled_reports_every_cadence(polled: dict) -> None:
    assert polled["benchmark"] == "reactive_vs_polled"
    assert polled["spreads"] == reactive_vs_polled.SIZES["tiny"]
    assert set(polled["cadences"]) == {"reactive", "poll_60", "poll_300"}
    assert set(polled["same_plan_debounce"]) == {"poll_60", "poll_300"}
    assert len(polled["summary"]) == 2
    assert polled["summary"][1].startswith("Polling every 5 minutes decided exits a median")
    json.dumps(polled)  # JSON-able as promised


def test_reactive_delay_is_zero_and_polling_is_later_the_slower_it_polls(polled: dict) -> None:
    cadences = polled["cadences"]
    assert cadences["reactive"]["delay_seconds"]["median"] == 0
    assert cadences["reactive"]["delay_seconds"]["p95"] == 0
    poll_60 = cadences["poll_60"]["delay_seconds"]["median"]
    poll_300 = cadences["poll_300"]["delay_seconds"]["median"]
    assert 0 < poll_60 < poll_300


def test_polled_exits_are_accounted_for_and_ratios_positive(polled: dict) -> None:
    reactive_exits = polled["cadences"]["reactive"]["exits"]
    assert reactive_exits + polled["spreads_without_reactive_exit"] == polled["spreads"]
    assert sum(polled["cadences"]["reactive"]["rules"].values()) == reactive_exits
    for label in ("poll_60", "poll_300"):
        figures = polled["cadences"][label]
        assert figures["exits"] + figures["missed"] == reactive_exits
        assert 0 <= figures["other_rule"] <= figures["exits"]
        ratios = figures["ratio_to_reactive"]
        assert ratios["slippage_median"] > 0
        assert ratios["slippage_p95"] > 0
        assert ratios["delay_median_in_ticks"] == figures["delay_seconds"]["median"]
    assert polled["evaluations"]["reactive"] > polled["evaluations"]["poll_60"]
    assert polled["evaluations"]["poll_60"] > polled["evaluations"]["poll_300"]


def test_the_same_seed_gives_the_same_figures(polled: dict) -> None:
    again = reactive_vs_polled.run(size="tiny", seed=1)
    assert again["cadences"] == polled["cadences"]
    other = reactive_vs_polled.run(size="tiny", seed=2)
    assert other["cadences"] != polled["cadences"]


def test_core_cost_reports_the_headline_and_every_scaling_point(cost: dict) -> None:
    sizes = core_cost.SIZES["tiny"]
    assert cost["benchmark"] == "core_cost"
    assert [p["spreads"] for p in cost["scaling"]] == list(sizes.scaling)
    assert cost["headline"]["spreads"] == sizes.spreads
    assert cost["headline"] in cost["scaling"]
    assert cost["scaling_growth"] >= 1
    assert cost["summary"].startswith(f"With {sizes.spreads} spreads")
    json.dumps(cost)


def test_core_cost_figures_are_sane(cost: dict) -> None:
    # Figures, not timings: a shared machine may stall any one measurement, so no figure is
    # compared with another here (the benchmark reports the ratios; this checks they exist).
    for point in cost["scaling"]:
        for key in ("bare_decode_ns_per_event", "route_ns_per_event", "engine_ns_per_event"):
            assert point[key] > 0
        assert point["ratio_median"] > 0 and point["route_ratio_median"] > 0
        assert len(point["ratio_per_round"]) >= 1 and all(r > 0 for r in point["ratio_per_round"])
        # Every option event reaches one spread; an underlying's reaches all spreads on it.
        assert 0.5 < point["evaluations_per_event"] < 3
        assert point["watcher_ns_per_evaluation"] > 0
        # Each spread's legs are its own; ten underlyings are shared.
        assert point["symbols"] > 2 * point["spreads"]


def test_underlying_path_is_the_same_whatever_order_it_is_read_in() -> None:
    ahead = UnderlyingPath(
        start=500.0, vol=0.3, drift=1.0, seed=7, jumps_per_hour=2, jump_size=0.01
    )
    step = UnderlyingPath(start=500.0, vol=0.3, drift=1.0, seed=7, jumps_per_hour=2, jump_size=0.01)
    far = ahead.at(5000)
    assert [step.at(s) for s in range(5001)][-1] == far
    assert ahead.at(0) == 500.0
    assert UnderlyingPath(start=500.0, vol=0.3, drift=1.0, seed=8).at(5000) != far


def test_a_reversing_path_turns() -> None:
    path = UnderlyingPath(
        start=500.0, vol=0.01, drift=200.0, seed=1, turn_at=1800, drift_after=-200.0
    )
    assert path.at(1800) > 500.0 * 1.01
    assert path.at(3600) < path.at(1800) * 0.99


@pytest.mark.parametrize("strategy", SHAPES)
def test_every_shape_is_built_as_classified(strategy: Strategy) -> None:
    spread = build_spread(
        strategy,
        root="SPY",
        expiration=reactive_vs_polled.SESSION_DATE,
        spot=500.0,
        distance=0.01,
        width=5,
    )
    assert spread.strategy is strategy
    assert spread.width == Decimal(5)


def test_leg_quotes_are_never_crossed_and_a_worthless_wing_is_zero_by_a_cent() -> None:
    for strike in (400.0, 480.0, 500.0, 520.0, 600.0):
        for right in OptionRight:
            bid, ask = quote_cents(right, 500.0, strike, 2 / 365, 0.3)
            assert 0 <= bid < ask
    assert quote_cents(OptionRight.PUT, 500.0, 300.0, 1 / 365, 0.2) == (0, 1)
