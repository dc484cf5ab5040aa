"""The exit rules at their boundaries, for credit and debit spreads (and an iron condor), the
priority order, the stop's debounce, trailing, tiers across a restart, guards and replay."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import Leg, OptionSymbol, Side, Spread, is_credit
from engine.domain.exit_plan import ExitPlan, ScaleOutTier, default_plan
from engine.domain.exit_rules import (
    PRIORITY,
    Decision,
    Evaluation,
    ExitAction,
    MarketSnapshot,
    PersistedWatchState,
    PositionFacts,
    Rule,
    WatchState,
    evaluate,
    replay,
)
from engine.domain.guards import TimedQuote
from engine.domain.volatility import bs_price, years_to_expiry

D = Decimal
NY = ZoneInfo("America/New_York")
EXP = dt.date(2025, 6, 20)
NOW = dt.datetime(2025, 6, 10, 11, 0, tzinfo=NY)  # 10 days to expiration
OPENED = dt.datetime(2025, 6, 2, 10, 0, tzinfo=NY)


def spread(*specs: str, quantity: int = 1, expiration: dt.date = EXP) -> Spread:
    """``spread("-500P", "+495P")``: a short 500 put and a long 495 put."""
    legs = []
    for spec in specs:
        strike = D(spec[1:-1])
        text = f"SPY{expiration:%y%m%d}{spec[-1]}{int(strike * 1000):08d}"
        side = Side.LONG if spec[0] == "+" else Side.SHORT
        legs.append(Leg(symbol=OptionSymbol.parse(text), side=side, quantity=quantity))
    return Spread.from_legs(legs)


PUT_CREDIT = spread("-500P", "+495P")  # entry 1.00: max profit 1.00, max loss 4.00
CALL_DEBIT = spread("+500C", "-505C")  # entry 2.00: max profit 3.00, max loss 2.00
CONDOR = spread("+490P", "-495P", "-505C", "+510C")  # entry 1.50: max profit 1.50, loss 3.50
BEAR_CALL = spread("-505C", "+510C")
ENTRY = {s.strategy: D(e) for s, e in [(PUT_CREDIT, "1"), (CALL_DEBIT, "2"), (CONDOR, "1.5"), (BEAR_CALL, "1")]}


def facts(sp: Spread = PUT_CREDIT, entry: Decimal | None = None, **kw: object) -> PositionFacts:
    fields: dict[str, object] = {"opening_quantity": sp.quantity, "opened_at": OPENED, **kw}
    return PositionFacts(spread=sp, entry_price=ENTRY[sp.strategy] if entry is None else entry, **fields)  # type: ignore[arg-type]


def quotes(sp: Spread, close: Decimal, other: Decimal = D("0.50")) -> tuple[TimedQuote, ...]:
    """Leg quotes whose mark close price is ``close``: every leg locked at ``other`` except the
    first leg on the entry side (short for credit, long for debit), quoted 0.02 wide."""
    credit = is_credit(sp.strategy)
    chosen = next(i for i, one in enumerate(sp.legs) if one.is_short == credit)
    same = sum(1 for one in sp.legs if one.is_short == credit) - 1
    mid = close - other * same + other * (len(sp.legs) - same - 1)
    out = [TimedQuote(bid=other, ask=other) for _ in sp.legs]
    out[chosen] = TimedQuote(bid=mid - D("0.01"), ask=mid + D("0.01"))
    return tuple(out)


def snap(
    sp: Spread,
    close: Decimal | str,
    *,
    t: float = 0.0,
    at: dt.datetime = NOW,
    underlying: Decimal | None = D(510),
    underlying_age: float = 0.0,
    legs: tuple[TimedQuote | None, ...] | None = None,
) -> MarketSnapshot:
    return MarketSnapshot(
        legs=quotes(sp, D(close)) if legs is None else legs,
        underlying_price=underlying,
        underlying_age_seconds=underlying_age,
        market_time=at,
        monotonic=t,
    )


def only(**fields: object) -> ExitPlan:
    """A plan with every rule off except the given fields."""
    return msgspec.structs.replace(ExitPlan(), **fields)


def fast(plan: ExitPlan) -> ExitPlan:
    """No debounce: the stop fires on the first breach."""
    return msgspec.structs.replace(plan, stop_debounce_ticks=1, stop_debounce_seconds=D(0))


def run(
    plan: ExitPlan,
    close: Decimal | str,
    *,
    sp: Spread = PUT_CREDIT,
    position: PositionFacts | None = None,
    state: WatchState | None = None,
    **kw: object,
) -> Evaluation:
    position = position or facts(sp)
    return evaluate(plan, position, state or WatchState(), snap(position.spread, close, **kw))  # type: ignore[arg-type]


def fires(evaluation: Evaluation, rule: Rule) -> bool:
    return rule in evaluation.rules_fired


# ---------------------------------------------------------------------------------------------
# Profit target and stop loss, credit / debit / condor, at their boundaries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sp", "below", "at", "beyond"),
    [
        (PUT_CREDIT, "0.51", "0.50", "0.49"),  # 50 % of a 1.00 credit
        (CONDOR, "0.76", "0.75", "0.74"),  # 50 % of a 1.50 credit
        (CALL_DEBIT, "3.79", "3.80", "3.81"),  # 60 % of max profit 3.00 on a 2.00 debit
    ],
)
def test_profit_target_defaults(sp: Spread, below: str, at: str, beyond: str) -> None:
    plan = default_plan(sp.strategy)
    assert run(plan, below, sp=sp).decision is Decision.HOLD
    for close in (at, beyond):
        result = run(plan, close, sp=sp)
        assert (result.decision, result.rule, result.action) == (
            Decision.EXIT,
            Rule.PROFIT_TARGET,
            ExitAction.FULL,
        )
        assert result.rules_fired == (Rule.PROFIT_TARGET,)
        assert result.quantity == sp.quantity


@pytest.mark.parametrize(
    ("sp", "entry", "below", "at", "beyond"),
    [
        (PUT_CREDIT, "1.00", "1.99", "2.00", "2.01"),  # loss = 100 % of the credit
        (PUT_CREDIT, "4.00", "8.99", "9.00", "9.01"),  # 100 % of 4.00 capped at max loss 1.00
        (CONDOR, "1.50", "2.99", "3.00", "3.01"),
        (CALL_DEBIT, "2.00", "1.01", "1.00", "0.99"),  # 50 % of max loss 2.00
    ],
)
def test_stop_loss_defaults(sp: Spread, entry: str, below: str, at: str, beyond: str) -> None:
    plan, position = fast(default_plan(sp.strategy)), facts(sp, D(entry))
    if entry == "4.00":  # the cap: a 4.00 credit on a 5-wide spread can lose only 1.00
        below, at, beyond = "4.99", "5.00", "5.01"
    assert not fires(run(plan, below, position=position), Rule.STOP_LOSS)
    for close in (at, beyond):
        result = run(plan, close, position=position)
        assert (result.decision, result.rule) == (Decision.EXIT, Rule.STOP_LOSS)
        assert result.thresholds["stop_loss_limit"] == (D("1.00") if sp is not CONDOR else D("1.50"))


def test_metrics_report_mark_and_natural() -> None:
    result = run(default_plan(PUT_CREDIT.strategy), "0.80", sp=PUT_CREDIT)
    metrics = result.metrics
    assert metrics is not None
    assert (metrics.mark_close_price, metrics.natural_close_price) == (D("0.80"), D("0.81"))
    assert (metrics.pnl, metrics.natural_pnl, metrics.pnl_dollars) == (D("0.20"), D("0.19"), D(20))
    assert (metrics.profit_fraction, metrics.loss_fraction) == (D("0.2"), D("-0.05"))
    assert (metrics.days_to_expiration, metrics.days_in_trade) == (10, 8)


# ---------------------------------------------------------------------------------------------
# The stop's debounce
# ---------------------------------------------------------------------------------------------


def ticks(plan: ExitPlan, steps: list[tuple[float, str] | tuple[float, str, bool]]) -> list[Evaluation]:
    """Evaluate a sequence of (trio time, close[, crossed]) ticks, threading the state."""
    state, out = WatchState(), []
    for step in steps:
        t, close = step[0], D(step[1])
        legs = quotes(PUT_CREDIT, close)
        if len(step) == 3:  # a crossed bad print on the short leg (legs[1]) at that close
            short = legs[1]
            legs = (legs[0], TimedQuote(bid=short.ask, ask=short.bid))
        result = evaluate(plan, facts(), state, snap(PUT_CREDIT, close, t=t, legs=legs))
        state = result.new_state
        out.append(result)
    return out


STOP = default_plan(PUT_CREDIT.strategy)  # 3 ticks spanning 2 s; stop at close 2.00


def test_debounce_two_ticks_are_not_enough() -> None:
    assert [r.decision for r in ticks(STOP, [(0, "2.5"), (5, "2.5")])] == [Decision.HOLD] * 2


def test_debounce_three_ticks_within_two_seconds_are_not_enough() -> None:
    results = ticks(STOP, [(0, "2.5"), (0.5, "2.5"), (1.99, "2.5"), (2.0, "2.5")])
    assert [r.decision for r in results[:3]] == [Decision.HOLD] * 3
    assert results[2].new_state.stop_breach_count == 3
    assert (results[3].decision, results[3].rule) == (Decision.EXIT, Rule.STOP_LOSS)


def test_debounce_three_ticks_spanning_two_seconds_fire() -> None:
    results = ticks(STOP, [(10, "2.0"), (11, "2.5"), (12, "2.0")])
    assert [r.decision for r in results] == [Decision.HOLD, Decision.HOLD, Decision.EXIT]
    assert results[2].rule is Rule.STOP_LOSS


def test_debounce_a_tick_back_inside_resets() -> None:
    results = ticks(STOP, [(0, "2.5"), (1, "2.5"), (1.5, "1.99"), (2, "2.5"), (3, "2.5"), (4, "2.5")])
    assert results[2].new_state.stop_breach_count == 0
    assert [r.decision for r in results[:5]] == [Decision.HOLD] * 5
    assert results[5].decision is Decision.EXIT
    assert results[5].new_state.stop_first_breach_at == 2


def test_debounce_does_not_move_on_a_guarded_tick() -> None:
    # A crossed print inside the stop neither resets the count nor adds to it.
    results = ticks(STOP, [(0, "2.5"), (1, "2.5"), (1.5, "1.0", True), (2, "2.5")])
    assert results[2].new_state.stop_breach_count == 2
    assert results[3].decision is Decision.EXIT
    # A crossed print beyond the stop does not count as the third tick either.
    results = ticks(STOP, [(0, "2.5"), (1, "2.5"), (2, "2.5", True), (2.5, "1.0")])
    assert results[2].decision is Decision.HOLD and results[2].guard_reasons
    assert results[2].new_state.stop_breach_count == 2
    assert results[3].new_state.stop_breach_count == 0


def test_a_due_stop_on_a_guarded_tick_is_held_and_says_so() -> None:
    state = WatchState(stop_breach_count=3, stop_first_breach_at=0.0)
    legs = (TimedQuote(bid=D("0.5"), ask=D("0.5")), TimedQuote(bid=D("3.1"), ask=D("3.0")))
    result = evaluate(STOP, facts(), state, snap(PUT_CREDIT, "0", t=3, legs=legs))
    assert (result.decision, result.rule) == (Decision.HELD_BY_GUARD, Rule.STOP_LOSS)
    assert result.guard_reasons == (f"crossed:{PUT_CREDIT.legs[1].occ}",)


@given(
    close=st.decimals("-0.40", "5.50", places=2),
    worse=st.decimals("0", "3", places=2),
    count=st.integers(0, 5),
    first=st.sampled_from([None, 0.0, 1.0, 2.5]),
    debit=st.booleans(),
)
def test_a_worse_mark_never_turns_a_stop_into_a_hold(
    close: Decimal, worse: Decimal, count: int, first: float | None, debit: bool
) -> None:
    sp = CALL_DEBIT if debit else PUT_CREDIT
    state = WatchState(stop_breach_count=0 if first is None else count, stop_first_breach_at=first)
    plan = default_plan(sp.strategy)
    worse_close = close - worse if debit else close + worse
    if debit and worse_close < D("-0.40"):
        return
    base = evaluate(plan, facts(sp), state, snap(sp, close, t=3))
    if base.rule is Rule.STOP_LOSS:
        later = evaluate(plan, facts(sp), state, snap(sp, worse_close, t=3))
        assert (later.decision, later.rule) == (Decision.EXIT, Rule.STOP_LOSS)


# ---------------------------------------------------------------------------------------------
# Trailing profit and scale-out tiers (never re-firing across a restart)
# ---------------------------------------------------------------------------------------------

TRAIL = only(trailing_arm=D("0.25"), trailing_giveback=D("0.10"))


def sequence(plan: ExitPlan, closes: list[str], state: WatchState | None = None, **kw: object) -> list[Evaluation]:
    state, out = state or WatchState(), []
    for close in closes:
        out.append(run(plan, close, state=state, **kw))
        state = out[-1].new_state
    return out


def test_trailing_does_not_arm_below_the_arm_level() -> None:
    results = sequence(TRAIL, ["0.76", "0.99", "1.50"])  # profit 0.24, then 0.01, then a loss
    assert [r.decision for r in results] == [Decision.HOLD] * 3
    assert not results[-1].new_state.trailing_armed
    assert results[0].new_state.high_water_mark == D("0.24")


def test_trailing_arms_at_the_level_and_fires_on_the_giveback() -> None:
    results = sequence(TRAIL, ["0.75", "0.84", "0.85"])  # 0.25 arms; 0.16 holds; 0.15 fires
    assert results[0].new_state.trailing_armed
    assert [r.decision for r in results] == [Decision.HOLD, Decision.HOLD, Decision.EXIT]
    assert results[2].rule is Rule.TRAILING_PROFIT
    assert results[2].thresholds["trailing_fire_at"] == D("0.15")


def test_trailing_follows_the_high_water_mark_and_survives_a_restart() -> None:
    results = sequence(TRAIL, ["0.70", "0.60", "0.69"])  # hwm 0.40; 0.31 holds
    assert results[-1].decision is Decision.HOLD
    saved = msgspec.json.encode(results[-1].new_state.persisted())
    restored = WatchState.from_persisted(msgspec.json.decode(saved, type=PersistedWatchState))
    assert restored.high_water_mark == D("0.40")
    after = run(TRAIL, "0.70", state=restored)  # 0.30 = 0.40 - 0.10
    assert (after.decision, after.rule) == (Decision.EXIT, Rule.TRAILING_PROFIT)


def test_trailing_on_a_debit_spread() -> None:
    # Max profit 3.00: arms at 0.75 of profit (close 2.75), fires 0.30 of profit lower.
    results = sequence(TRAIL, ["2.74", "2.75", "2.46", "2.45"], sp=CALL_DEBIT)
    assert [r.decision for r in results] == [Decision.HOLD] * 3 + [Decision.EXIT]


TIERS = only(
    scale_out_tiers=(ScaleOutTier(D("0.3"), D("0.5")), ScaleOutTier(D("0.6"), D("0.25")))
)
FOUR = facts(PUT_CREDIT.with_quantity(4))


def test_tier_fires_at_its_level_for_a_fraction_of_the_opening_quantity() -> None:
    assert run(TIERS, "0.71", position=FOUR).decision is Decision.HOLD
    for close in ("0.70", "0.69"):
        result = run(TIERS, close, position=FOUR)
        assert (result.decision, result.rule, result.action) == (
            Decision.EXIT,
            Rule.SCALE_OUT,
            ExitAction.PARTIAL,
        )
        assert (result.quantity, result.tiers, result.new_state.fired_tiers) == (2, (0,), (0,))


def test_tiers_never_refire_after_a_restart() -> None:
    first = run(TIERS, "0.65", position=FOUR)
    assert first.tiers == (0,)
    # The trade now holds 2 spreads; the engine restarts from what was persisted.
    two = facts(PUT_CREDIT.with_quantity(2), opening_quantity=4)
    saved = msgspec.json.encode(first.new_state.persisted())
    restored = WatchState.from_persisted(msgspec.json.decode(saved, type=PersistedWatchState))
    for close in ("0.70", "0.65", "0.45"):
        assert run(TIERS, close, position=two, state=restored).decision is Decision.HOLD
    second = run(TIERS, "0.40", position=two, state=restored)
    assert (second.quantity, second.tiers, second.action) == (1, (1,), ExitAction.PARTIAL)
    assert second.new_state.fired_tiers == (0, 1)
    assert run(TIERS, "0.10", position=two, state=second.new_state).decision is Decision.HOLD


def test_tiers_reached_together_fire_together() -> None:
    result = run(TIERS, "0.30", position=FOUR)
    assert (result.tiers, result.quantity, result.action) == ((0, 1), 3, ExitAction.PARTIAL)


@pytest.mark.parametrize(
    ("opening", "current", "fraction", "quantity", "action"),
    [
        (3, 3, "0.5", 1, ExitAction.PARTIAL),  # 1.5 rounds down
        (4, 1, "0.5", 1, ExitAction.FULL),  # never more than the trade holds
        (1, 1, "0.25", 1, ExitAction.FULL),  # at least one, which is everything
        (4, 4, "1", 4, ExitAction.FULL),  # a tier that closes everything is a full exit
        (10, 10, "0.33", 3, ExitAction.PARTIAL),
    ],
)
def test_tier_quantity(
    opening: int, current: int, fraction: str, quantity: int, action: ExitAction
) -> None:
    plan = only(scale_out_tiers=(ScaleOutTier(D("0.3"), D(fraction)),))
    position = facts(PUT_CREDIT.with_quantity(current), opening_quantity=opening)
    result = run(plan, "0.5", position=position)
    assert (result.quantity, result.action) == (quantity, action)


# ---------------------------------------------------------------------------------------------
# Time: DTE / expiration day (New York time, across DST) and days in trade
# ---------------------------------------------------------------------------------------------

DTE = only(dte_exit_days=2)


def ny(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=NY)


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
    result = evaluate(default_plan(PUT_CREDIT.strategy), facts(), WatchState(), snap(PUT_CREDIT, "0", legs=legs))
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


def model_run(plan: ExitPlan, vol: float, *, sp: Spread = PUT_CREDIT, entry: str = "2.00", **kw: object) -> Evaluation:
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
    first = evaluate(plan, position, WatchState(), snap(PUT_CREDIT, "0", legs=priced(PUT_CREDIT, 0.30)))
    assert first.decision is Decision.HOLD
    assert first.new_state.entry_iv is not None and abs(first.new_state.entry_iv - D("0.30")) < D("0.001")
    second = evaluate(plan, position, first.new_state, snap(PUT_CREDIT, "0", legs=priced(PUT_CREDIT, 0.20)))
    assert (second.decision, second.rule) == (Decision.EXIT, Rule.IV_CRUSH)
    assert second.new_state.entry_iv == first.new_state.entry_iv  # captured once


def test_iv_crush_never_on_a_debit_spread_nor_without_an_underlying() -> None:
    plan = only(iv_crush_ratio=D("0.85"), iv_crush_min_profit=D(-10))
    debit = model_run(plan, 0.10, sp=CALL_DEBIT, entry_short_iv=D("0.90"))
    assert debit.decision is Decision.HOLD and debit.metrics is not None
    assert debit.metrics.short_iv is None
    legs = priced(PUT_CREDIT, 0.10)
    blind = evaluate(plan, facts(entry_short_iv=D("0.9")), WatchState(), snap(PUT_CREDIT, "0", legs=legs, underlying=None))
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
    assert run(plan, "1", state=results[1].new_state, underlying=D("499.80")).rule is Rule.UNDERLYING_MOVE


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
