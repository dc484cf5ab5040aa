"""Black-Scholes price, delta and implied volatility: parity, round trips, no-solution cases."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.occ import OptionRight
from engine.domain.volatility import (
    MAX_VOLATILITY,
    bs_delta,
    bs_price,
    implied_volatility,
    to_decimal,
    years_to_expiry,
)

CALL, PUT = OptionRight.CALL, OptionRight.PUT


def test_known_value() -> None:
    # Hull's textbook example: S=42, K=40, r=10 %, sigma=20 %, T=0.5 -> call 4.76, put 0.81.
    assert bs_price(CALL, 42, 40, 0.5, 0.2, 0.1) == pytest.approx(4.7594, abs=1e-4)
    assert bs_price(PUT, 42, 40, 0.5, 0.2, 0.1) == pytest.approx(0.8086, abs=1e-4)


@given(
    spot=st.floats(50, 200),
    strike=st.floats(50, 200),
    years=st.floats(0.01, 2),
    vol=st.floats(0.05, 1.5),
    rate=st.floats(0, 0.08),
)
def test_put_call_parity(spot: float, strike: float, years: float, vol: float, rate: float) -> None:
    call = bs_price(CALL, spot, strike, years, vol, rate)
    put = bs_price(PUT, spot, strike, years, vol, rate)
    assert call - put == pytest.approx(spot - strike * math.exp(-rate * years), abs=1e-7)
    call_delta = bs_delta(CALL, spot, strike, years, vol, rate)
    assert 0 <= call_delta <= 1
    assert bs_delta(PUT, spot, strike, years, vol, rate) == pytest.approx(call_delta - 1)


@given(
    right=st.sampled_from([CALL, PUT]),
    moneyness=st.floats(0.8, 1.25),
    years=st.floats(0.02, 1),
    vol=st.floats(0.05, 2.0),
    rate=st.floats(0, 0.06),
)
def test_implied_volatility_recovers_the_volatility(
    right: OptionRight, moneyness: float, years: float, vol: float, rate: float
) -> None:
    strike = 100 * moneyness
    price = bs_price(right, 100, strike, years, vol, rate)
    lower = max(0.0, 100 - strike * math.exp(-rate * years))
    if right is PUT:
        lower = max(0.0, strike * math.exp(-rate * years) - 100)
    if price - lower < 1e-6:
        return  # no time value left to measure: covered by the None cases below
    solved = implied_volatility(right, price, 100, strike, years, rate)
    assert solved is not None
    assert bs_price(right, 100, strike, years, solved, rate) == pytest.approx(price, abs=1e-8)


def test_decimal_inputs_are_accepted() -> None:
    price = Decimal(repr(bs_price(PUT, 510, 500, 0.05, 0.25, 0.04)))
    solved = implied_volatility(PUT, price, Decimal(510), Decimal(500), 0.05, Decimal("0.04"))
    assert solved == pytest.approx(0.25, abs=1e-9)


@pytest.mark.parametrize(
    ("right", "price", "spot", "strike", "years"),
    [
        (CALL, 9.99, 110, 100, 0.1),  # below intrinsic (10)
        (CALL, 10.0, 110, 100, 0.1),  # exactly intrinsic: no time value
        (PUT, 4.0, 95, 100, 0.1),  # below intrinsic (5)
        (CALL, 100.0, 100, 90, 0.1),  # at the upper bound (the spot)
        (PUT, 101.0, 100, 100, 0.1),  # above the upper bound (the strike)
        (CALL, 1.0, 100, 100, 0.0),  # expired
        (CALL, 1.0, 100, 100, -0.01),  # past expiry
        (CALL, 0.0, 100, 100, 0.1),  # nothing to explain
        (CALL, 60.0, 100, 100, 0.1),  # would need far more than the bracket's top
    ],
)
def test_no_solution_is_none(
    right: OptionRight, price: float, spot: float, strike: float, years: float
) -> None:
    assert implied_volatility(right, price, spot, strike, years) is None


def test_bracket_top_is_the_limit() -> None:
    at_top = bs_price(CALL, 100, 100, 0.1, MAX_VOLATILITY)
    assert implied_volatility(CALL, at_top * 0.999, 100, 100, 0.1) is not None
    assert implied_volatility(CALL, at_top * 1.001, 100, 100, 0.1) is None


def test_expired_and_zero_vol_prices_are_intrinsic() -> None:
    assert bs_price(CALL, 110, 100, 0, 0.3) == 10
    assert bs_price(PUT, 110, 100, 0, 0.3) == 0
    assert bs_price(PUT, 90, 100, 1, 0, 0) == pytest.approx(10)
    assert bs_delta(CALL, 110, 100, 0, 0.3) == 1
    assert bs_delta(PUT, 110, 100, 0, 0.3) == 0
    assert bs_delta(PUT, 100, 100, 0, 0.3) == -0.5


def test_delta_matches_the_price_slope() -> None:
    bump = 1e-4
    for right in (CALL, PUT):
        up = bs_price(right, 100 + bump, 105, 0.25, 0.3, 0.03)
        down = bs_price(right, 100 - bump, 105, 0.25, 0.3, 0.03)
        assert bs_delta(right, 100, 105, 0.25, 0.3, 0.03) == pytest.approx(
            (up - down) / (2 * bump), abs=1e-6
        )


def test_bad_spot_or_strike_raises() -> None:
    with pytest.raises(ValueError, match="positive"):
        bs_price(CALL, 0, 100, 1, 0.2)
    with pytest.raises(ValueError, match="positive"):
        implied_volatility(PUT, 1, 100, -5, 1)


def test_years_to_expiry_runs_to_the_new_york_close_across_dst() -> None:
    # DST starts 2025-03-09: the close on Monday 03-10 is 20:00 UTC, on Friday 03-07 21:00 UTC.
    monday_close = dt.datetime(2025, 3, 10, 20, 0, tzinfo=dt.UTC)
    assert years_to_expiry(monday_close, dt.date(2025, 3, 10)) == 0
    friday_close = dt.datetime(2025, 3, 7, 21, 0, tzinfo=dt.UTC)
    assert years_to_expiry(friday_close, dt.date(2025, 3, 7)) == 0
    hours = (dt.datetime(2025, 3, 10, 20, 0, tzinfo=dt.UTC) - friday_close).total_seconds() / 3600
    assert years_to_expiry(friday_close, dt.date(2025, 3, 10)) == pytest.approx(hours / (365 * 24))
    assert years_to_expiry(monday_close + dt.timedelta(hours=1), dt.date(2025, 3, 10)) < 0
    with pytest.raises(ValueError, match="timezone-aware"):
        years_to_expiry(dt.datetime(2025, 3, 10), dt.date(2025, 3, 10))


def test_to_decimal_rounds_to_six_places() -> None:
    assert to_decimal(0.123456789) == Decimal("0.123457")
    assert to_decimal(0.25) == Decimal("0.250000")
