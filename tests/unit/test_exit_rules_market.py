"""Exit rules driven by the market and the calendar, at their boundaries: DTE / expiration day
in New York time (across DST), days in trade, low value, IV crush and short delta from the local
Black-Scholes model, and the underlying breach, move and spike rules."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.domain import Spread
from engine.domain.exit_plan import ExitPlan, default_plan
from engine.domain.exit_rules import Decision, Evaluation, Rule, WatchState, evaluate
from engine.domain.guards import TimedQuote
from engine.domain.volatility import bs_price, years_to_expiry
from tests.unit.exit_fixtures import (
    BEAR_CALL,
    CALL_DEBIT,
    CONDOR,
    EXP,
    NOW,
    PUT_CREDIT,
    D,
    facts,
    fires,
    ny,
    only,
    run,
    sequence,
    snap,
    spread,
)

# ---------------------------------------------------------------------------------------------
# Time: DTE / expiration day (New York time, across DST) and days in trade
# ---------------------------------------------------------------------------------------------

DTE = only(dte_exit_days=2)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (ny(2025, 6, 18, 15, 49, 59), False),  # 2 days, a second before 15:50
        (ny(2025, 6, 18, 15, 50), True),  # 2 days, at 15:50
        (ny(2025, 6, 18, 16, 30), True),
        (ny(2025, 6, 17, 15, 55), False),  # 3 days
        (ny(2025, 6, 19, 15, 50), True),  # 1 day
        (ny(2025, 6, 20, 9, 30), False),  # expiration day, before the cutoff
        (ny(2025, 6, 20, 15, 50), True),
        (ny(2025, 6, 21, 9, 0), True),  # past expiration: any time
        # 03:30 UTC on the 19th is 23:30 on the 18th in New York: 2 days, after 15:50.
        (dt.datetime(2025, 6, 19, 3, 30, tzinfo=dt.UTC), True),
        (dt.datetime(2025, 6, 18, 19, 49, tzinfo=dt.UTC), False),  # 15:49 EDT
        (dt.datetime(2025, 6, 18, 19, 50, tzinfo=dt.UTC), True),  # 15:50 EDT
    ],
)
def test_expiration_day(at: dt.datetime, expected: bool) -> None:
    result = run(DTE, "0.8", at=at)
    assert fires(result, Rule.EXPIRATION_DAY) is expected
    assert result.decision is (Decision.EXIT if expected else Decision.HOLD)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # Friday 2025-03-07 is EST (UTC-5): 15:50 is 20:50 UTC.
        (dt.datetime(2025, 3, 7, 19, 50, tzinfo=dt.UTC), False),
        (dt.datetime(2025, 3, 7, 20, 49, tzinfo=dt.UTC), False),
        (dt.datetime(2025, 3, 7, 20, 50, tzinfo=dt.UTC), True),
        # DST starts Sunday 03-09; Monday 03-10 is EDT (UTC-4): 15:50 is 19:50 UTC.
        (dt.datetime(2025, 3, 10, 19, 49, tzinfo=dt.UTC), False),
        (dt.datetime(2025, 3, 10, 19, 50, tzinfo=dt.UTC), True),
    ],
)
def test_expiration_day_across_the_dst_boundary(at: dt.datetime, expected: bool) -> None:
    sp = spread("-500P", "+495P", expiration=dt.date(2025, 3, 10))  # Friday is 3 days before
    plan = only(dte_exit_days=3)
    position = facts(sp, D("1.00"), opened_at=ny(2025, 3, 3, 10, 0))
    assert fires(run(plan, "0.8", position=position, at=at), Rule.EXPIRATION_DAY) is expected


def test_expiration_day_cutoff_is_overridable() -> None:
    plan = only(dte_exit_days=0, dte_exit_time=dt.time(0, 0))
    assert fires(run(plan, "0.8", at=ny(2025, 6, 20, 0, 0)), Rule.EXPIRATION_DAY)
    assert not fires(run(plan, "0.8", at=ny(2025, 6, 19, 23, 59)), Rule.EXPIRATION_DAY)


@pytest.mark.parametrize(("day", "expected"), [(5, False), (6, True), (7, True)])
def test_max_days_in_trade(day: int, expected: bool) -> None:
    # Opened late on the 1st in New York (the 2nd in UTC): day 6 is 5 New York days later.
    position = facts(opened_at=dt.datetime(2025, 6, 2, 3, 30, tzinfo=dt.UTC))
    result = run(only(max_days_in_trade=5), "0.8", position=position, at=ny(2025, 6, day, 9, 31))
    assert fires(result, Rule.MAX_DAYS) is expected
    assert result.metrics is not None and result.metrics.days_in_trade == day - 1


# ---------------------------------------------------------------------------------------------
# Low value, IV crush, short delta (credit only) and the underlying rules
# ---------------------------------------------------------------------------------------------


def test_low_value_credit_boundaries_and_never_on_a_debit() -> None:
    plan = only(low_value_price=D("0.05"))
    assert [run(plan, c).decision for c in ("0.06", "0.05", "0.04")] == [
        Decision.HOLD,
        Decision.EXIT,
        Decision.EXIT,
    ]
    assert run(plan, "0.05").rule is Rule.LOW_VALUE
    assert run(plan, "0.01", sp=CALL_DEBIT).decision is Decision.HOLD


def test_low_value_with_real_cheap_quotes_is_not_guarded() -> None:
    # Short 0.05 x 0.10, long wing 0 x 0.05: one tick wide, zero bid on the long leg.
    legs = (TimedQuote(bid=D(0), ask=D("0.05")), TimedQuote(bid=D("0.05"), ask=D("0.10")))
    result = evaluate(
        default_plan(PUT_CREDIT.strategy), facts(), WatchState(), snap(PUT_CREDIT, "0", legs=legs)
    )
    assert result.metrics is not None and result.metrics.mark_close_price == D("0.05")
    assert result.guard_reasons == ()
    assert (result.decision, result.rule) == (Decision.EXIT, Rule.PROFIT_TARGET)
    assert Rule.LOW_VALUE in result.rules_fired


YEARS = years_to_expiry(NOW, EXP)


def priced(sp: Spread, vol: float, spot: float = 510) -> tuple[TimedQuote, ...]:
    """Locked quotes at the Black-Scholes price of each leg at ``vol`` (rounded to 0.0001)."""
    out = []
    for one in sp.legs:
        price = bs_price(one.symbol.right, spot, one.symbol.strike, YEARS, vol, 0.04)
        value = D(repr(price)).quantize(D("0.0001"))
        out.append(TimedQuote(bid=value, ask=value))
    return tuple(out)


def model_run(
    plan: ExitPlan, vol: float, *, sp: Spread = PUT_CREDIT, entry: str = "2.00", **kw: Any
) -> Evaluation:
    position = facts(sp, D(entry), **kw)
    return evaluate(plan, position, WatchState(), snap(sp, "0", legs=priced(sp, vol)))


def test_iv_is_computed_locally_from_the_mid() -> None:
    result = model_run(only(iv_crush_ratio=D("0.85")), 0.20, entry_short_iv=D("0.30"))
    assert result.metrics is not None and result.metrics.short_iv is not None
    assert abs(result.metrics.short_iv - D("0.20")) < D("0.001")
    assert (result.decision, result.rule) == (Decision.EXIT, Rule.IV_CRUSH)


def test_iv_crush_at_its_ratio_boundary() -> None:
    probe = model_run(only(iv_crush_ratio=D("0.5")), 0.20, entry_short_iv=D(1))
    assert probe.metrics is not None and probe.metrics.short_iv is not None
    current = probe.metrics.short_iv
    plan = only(iv_crush_ratio=D("0.5"))  # fires when current <= entry / 2
    step = D("0.000002")
    assert not fires(model_run(plan, 0.20, entry_short_iv=2 * current - step), Rule.IV_CRUSH)
    assert fires(model_run(plan, 0.20, entry_short_iv=2 * current), Rule.IV_CRUSH)
    assert fires(model_run(plan, 0.20, entry_short_iv=2 * current + step), Rule.IV_CRUSH)


def test_iv_crush_needs_the_minimum_profit() -> None:
    probe = model_run(only(iv_crush_ratio=D("0.85")), 0.20, entry_short_iv=D("0.30"))
    assert probe.metrics is not None and probe.metrics.profit_fraction is not None
    fraction = probe.metrics.profit_fraction
    for minimum, expected in ((fraction, True), (fraction + D("0.000001"), False)):
        plan = only(iv_crush_ratio=D("0.85"), iv_crush_min_profit=minimum)
        assert fires(model_run(plan, 0.20, entry_short_iv=D("0.30")), Rule.IV_CRUSH) is expected


def test_entry_iv_is_captured_on_the_first_clean_tick() -> None:
    plan = only(iv_crush_ratio=D("0.85"), iv_crush_min_profit=D("0.15"))
    position = facts(PUT_CREDIT, D("2.00"))
    first = evaluate(
        plan, position, WatchState(), snap(PUT_CREDIT, "0", legs=priced(PUT_CREDIT, 0.30))
    )
    assert first.decision is Decision.HOLD
    assert first.new_state.entry_iv is not None and abs(first.new_state.entry_iv - D("0.30")) < D(
        "0.001"
    )
    second = evaluate(
        plan, position, first.new_state, snap(PUT_CREDIT, "0", legs=priced(PUT_CREDIT, 0.20))
    )
    assert (second.decision, second.rule) == (Decision.EXIT, Rule.IV_CRUSH)
    assert second.new_state.entry_iv == first.new_state.entry_iv  # captured once


def test_iv_crush_never_on_a_debit_spread_nor_without_an_underlying() -> None:
    plan = only(iv_crush_ratio=D("0.85"), iv_crush_min_profit=D(-10))
    debit = model_run(plan, 0.10, sp=CALL_DEBIT, entry_short_iv=D("0.90"))
    assert debit.decision is Decision.HOLD and debit.metrics is not None
    assert debit.metrics.short_iv is None
    legs = priced(PUT_CREDIT, 0.10)
    blind = evaluate(
        plan,
        facts(entry_short_iv=D("0.9")),
        WatchState(),
        snap(PUT_CREDIT, "0", legs=legs, underlying=None),
    )
    assert blind.decision is Decision.HOLD and "underlying_missing" in blind.notes


def test_short_delta_above_its_level() -> None:
    probe = model_run(only(short_delta_max=D("0.99")), 0.30)
    assert probe.metrics is not None and probe.metrics.short_delta is not None
    delta = probe.metrics.short_delta
    assert D("0.05") < delta < D("0.5")  # a short put 2 % out of the money
    assert not fires(model_run(only(short_delta_max=delta), 0.30), Rule.SHORT_DELTA)
    assert fires(model_run(only(short_delta_max=delta - D("0.000001")), 0.30), Rule.SHORT_DELTA)
    condor = model_run(only(short_delta_max=D("0.99")), 0.30, sp=CONDOR, entry="1.5")
    assert condor.metrics is not None and condor.metrics.short_delta is not None
    assert condor.metrics.short_delta > delta  # the 505 call is nearer the money than the 500 put


@pytest.mark.parametrize(
    ("sp", "buffer", "hold", "at", "beyond"),
    [
        (PUT_CREDIT, "0.01", "495.01", "495", "494.99"),  # 1 % through the 500 strike
        (PUT_CREDIT, "-0.01", "505.01", "505", "504"),  # a negative buffer warns early
        (BEAR_CALL, "0", "504.99", "505", "506"),
        (CONDOR, "0", "495.01", "495", "490"),
        (CONDOR, "0", "504.99", "505", "520"),
    ],
)
def test_underlying_breach(sp: Spread, buffer: str, hold: str, at: str, beyond: str) -> None:
    plan = only(underlying_breach_buffer=D(buffer))
    position = facts(sp)
    assert run(plan, "0.8", position=position, underlying=D(hold)).decision is Decision.HOLD
    for spot in (at, beyond):
        result = run(plan, "0.8", position=position, underlying=D(spot))
        assert (result.decision, result.rule) == (Decision.EXIT, Rule.UNDERLYING_BREACH)


def test_underlying_breach_never_on_a_debit_spread() -> None:
    plan = only(underlying_breach_buffer=D(0))
    assert run(plan, "2", sp=CALL_DEBIT, underlying=D(600)).decision is Decision.HOLD


@pytest.mark.parametrize(
    ("sp", "hold", "at", "beyond"),
    [
        (PUT_CREDIT, "499.81", "499.80", "499"),  # bullish: 2 % down from 510 is against
        (CALL_DEBIT, "499.81", "499.80", "450"),
        (BEAR_CALL, "520.19", "520.20", "530"),  # bearish: up is against
        (CONDOR, "520.19", "499.80", "520.20"),  # either way
    ],
)
def test_underlying_move_against(sp: Spread, hold: str, at: str, beyond: str) -> None:
    plan = only(underlying_move_fraction=D("0.02"))
    position = facts(sp, entry_underlying_price=D(510))
    assert run(plan, "1", position=position, underlying=D(hold)).decision is Decision.HOLD
    for spot in (at, beyond):
        assert run(plan, "1", position=position, underlying=D(spot)).rule is Rule.UNDERLYING_MOVE
    in_favour = "530" if sp is not BEAR_CALL else "490"
    if sp is not CONDOR:
        assert run(plan, "1", position=position, underlying=D(in_favour)).decision is Decision.HOLD


def test_underlying_move_measures_from_the_first_clean_tick_without_an_entry_price() -> None:
    plan = only(underlying_move_fraction=D("0.02"))
    results = sequence(plan, ["1", "1"], underlying=D(510))
    assert results[0].new_state.entry_underlying_price == D(510)
    assert (
        run(plan, "1", state=results[1].new_state, underlying=D("499.80")).rule
        is Rule.UNDERLYING_MOVE
    )


SPIKE = only(underlying_spike_fraction=D("0.01"), underlying_spike_seconds=D(60))


@pytest.mark.parametrize(
    ("sp", "spot", "t", "expected"),
    [
        (PUT_CREDIT, "504.9", 30, False),  # exactly 1 %: not more than
        (PUT_CREDIT, "504.89", 30, True),
        (PUT_CREDIT, "504.89", 60, True),  # the first sample is still in the window
        (PUT_CREDIT, "504.89", 60.5, False),  # ... and now it is not
        (PUT_CREDIT, "520", 30, False),  # up is not against a bullish spread
        (BEAR_CALL, "515.11", 30, True),
        (BEAR_CALL, "500", 30, False),
        (CONDOR, "515.11", 30, True),
    ],
)
def test_underlying_spike(sp: Spread, spot: str, t: float, expected: bool) -> None:
    position = facts(sp)
    first = run(SPIKE, "1", position=position, underlying=D(510), t=0.0)
    result = run(SPIKE, "1", position=position, state=first.new_state, underlying=D(spot), t=t)
    assert fires(result, Rule.UNDERLYING_SPIKE) is expected


def test_spike_samples_are_bounded_and_windowed() -> None:
    state = WatchState()
    for i in range(700):
        state = run(SPIKE, "1", state=state, underlying=D(510), t=i * 0.01).new_state
    assert len(state.underlying_samples) == 512
    later = run(SPIKE, "1", state=state, underlying=D(510), t=1000).new_state
    assert later.underlying_samples == ((1000, D(510)),)
