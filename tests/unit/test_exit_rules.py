"""The exit rules at their boundaries, for credit and debit spreads (and an iron condor): targets,
stops and the debounce, trailing, tiers across a restart, the priority order, guards and replay.
The market-driven rules (time, low value, IV, delta, underlying) are in test_exit_rules_market."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import Spread
from engine.domain.exit_plan import ExitPlan, ScaleOutTier, default_plan
from engine.domain.exit_rules import (
    PRIORITY,
    Decision,
    Evaluation,
    ExitAction,
    PersistedWatchState,
    Rule,
    WatchState,
    evaluate,
    replay,
)
from engine.domain.guards import TimedQuote
from tests.unit.exit_fixtures import (
    CALL_DEBIT,
    CONDOR,
    PUT_CREDIT,
    D,
    facts,
    fast,
    fires,
    ny,
    only,
    quotes,
    run,
    sequence,
    snap,
    spread,
)

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
        assert result.thresholds["stop_loss_limit"] == (
            D("1.00") if sp is not CONDOR else D("1.50")
        )


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


def ticks(
    plan: ExitPlan, steps: list[tuple[float, str] | tuple[float, str, bool]]
) -> list[Evaluation]:
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
    results = ticks(
        STOP, [(0, "2.5"), (1, "2.5"), (1.5, "1.99"), (2, "2.5"), (3, "2.5"), (4, "2.5")]
    )
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


TIERS = only(scale_out_tiers=(ScaleOutTier(D("0.3"), D("0.5")), ScaleOutTier(D("0.6"), D("0.25"))))
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
# Priority: the first that fires names the decision; all are recorded
# ---------------------------------------------------------------------------------------------


def test_priority_order_is_losses_then_time_then_profits_then_partials() -> None:
    assert [rule.value for rule in PRIORITY] == [
        "stop_loss",
        "underlying_breach",
        "underlying_move",
        "underlying_spike",
        "short_delta",
        "expiration_day",
        "max_days",
        "iv_crush",
        "trailing_profit",
        "profit_target",
        "low_value",
        "scale_out",
    ]


def test_stop_outranks_time_and_trailing() -> None:
    state = WatchState(high_water_mark=D("0.5"), trailing_armed=True)
    plan = fast(default_plan(PUT_CREDIT.strategy))
    result = run(plan, "2.5", state=state, at=ny(2025, 6, 19, 15, 55))
    assert result.rules_fired == (Rule.STOP_LOSS, Rule.EXPIRATION_DAY, Rule.TRAILING_PROFIT)
    assert (result.decision, result.rule, result.action) == (
        Decision.EXIT,
        Rule.STOP_LOSS,
        ExitAction.FULL,
    )


def test_a_full_exit_outranks_a_tier_which_is_then_not_marked_fired() -> None:
    plan = msgspec.structs.replace(
        default_plan(PUT_CREDIT.strategy), scale_out_tiers=(ScaleOutTier(D("0.3"), D("0.5")),)
    )
    result = run(plan, "0.05", position=FOUR)
    assert result.rules_fired == (Rule.PROFIT_TARGET, Rule.LOW_VALUE, Rule.SCALE_OUT)
    assert (result.rule, result.action, result.quantity) == (Rule.PROFIT_TARGET, ExitAction.FULL, 4)
    assert (result.tiers, result.new_state.fired_tiers) == ((), ())


def test_time_outranks_profit() -> None:
    plan = default_plan(CALL_DEBIT.strategy)
    result = run(plan, "4.00", sp=CALL_DEBIT, at=ny(2025, 6, 20, 15, 50))
    assert result.rules_fired == (Rule.EXPIRATION_DAY, Rule.PROFIT_TARGET)
    assert result.rule is Rule.EXPIRATION_DAY


# ---------------------------------------------------------------------------------------------
# Quote guards, missing quotes, custom and unmanaged trades
# ---------------------------------------------------------------------------------------------

LONG_OCC, SHORT_OCC = PUT_CREDIT.legs[0].occ, PUT_CREDIT.legs[1].occ


def with_legs(
    long: tuple[str, str], short: tuple[str, str], age: float = 0.0
) -> tuple[TimedQuote, ...]:
    return (
        TimedQuote(bid=D(long[0]), ask=D(long[1]), age_seconds=age),
        TimedQuote(bid=D(short[0]), ask=D(short[1]), age_seconds=age),
    )


@pytest.mark.parametrize(
    ("legs", "reasons"),
    [
        (with_legs(("0.50", "0.50"), ("1.00", "1.00")), ()),  # locked is fine
        (with_legs(("0.51", "0.50"), ("1.00", "1.00")), (f"crossed:{LONG_OCC}",)),
        (with_legs(("0.50", "0.50"), ("1.00", "1.00"), age=10), ()),
        (
            with_legs(("0.50", "0.50"), ("1.00", "1.00"), age=10.01),
            (f"stale:{LONG_OCC}", f"stale:{SHORT_OCC}"),
        ),
        (with_legs(("0.50", "0.50"), ("0.80", "1.20")), ()),  # (1.20-0.80)/1.00 = 0.4
        (with_legs(("0.30", "0.50"), ("0.60", "1.00")), ()),  # exactly 0.5 is not wider
        (with_legs(("0.30", "0.50"), ("0.59", "1.00")), (f"wide:{SHORT_OCC}",)),
        (with_legs(("0.00", "0.10"), ("0.05", "0.15")), ()),  # a 0.10 width is under the floor
        (with_legs(("0", "0.40"), ("0.60", "0.80")), ()),  # a zero-bid long leg is valid
        (with_legs(("0.20", "0.20"), ("0", "0.40")), (f"wide:{SHORT_OCC}",)),  # not on a short
    ],
)
def test_guards(legs: tuple[TimedQuote, ...], reasons: tuple[str, ...]) -> None:
    result = evaluate(
        only(profit_target=D(-100)), facts(), WatchState(), snap(PUT_CREDIT, "0", legs=legs)
    )
    assert result.guard_reasons == reasons
    assert result.decision is (Decision.HELD_BY_GUARD if reasons else Decision.EXIT)
    assert result.rule is Rule.PROFIT_TARGET


def test_a_guarded_tick_learns_nothing() -> None:
    state = WatchState(high_water_mark=D("0.1"))
    legs = with_legs(("0.50", "0.50"), ("0.60", "0.55"))  # crossed, at a fake 0.925 profit
    result = evaluate(TRAIL, facts(), state, snap(PUT_CREDIT, "0", legs=legs, t=5))
    assert result.decision is Decision.HOLD and result.guard_reasons == (f"crossed:{SHORT_OCC}",)
    assert result.new_state.high_water_mark == D("0.1")
    assert not result.new_state.trailing_armed


def test_a_stale_underlying_holds_back_only_the_rules_that_read_it() -> None:
    plan = only(underlying_breach_buffer=D(0), profit_target=D("0.5"))
    both = run(plan, "0.4", underlying=D(490), underlying_age=11)
    assert both.rules_fired == (Rule.UNDERLYING_BREACH, Rule.PROFIT_TARGET)
    assert (both.decision, both.rule) == (Decision.EXIT, Rule.PROFIT_TARGET)
    assert both.guard_reasons == ("underlying_stale",)
    alone = run(plan, "0.8", underlying=D(490), underlying_age=11)
    assert (alone.decision, alone.rule) == (Decision.HELD_BY_GUARD, Rule.UNDERLYING_BREACH)
    assert run(plan, "0.8", underlying=D(490), underlying_age=10).decision is Decision.EXIT


@pytest.mark.parametrize(
    "legs",
    [
        (None, TimedQuote(bid=D(1), ask=D(1))),
        (TimedQuote(bid=None, ask=D(1)), TimedQuote(bid=D(1), ask=D(1))),
        (TimedQuote(bid=D(0), ask=D("-0.05")), TimedQuote(bid=D(1), ask=D(1))),
    ],
)
def test_missing_quotes_hold_without_a_guess(legs: tuple[TimedQuote | None, ...]) -> None:
    state = WatchState(stop_breach_count=2, stop_first_breach_at=0.0)
    result = evaluate(STOP, facts(), state, snap(PUT_CREDIT, "0", legs=legs, t=9))
    assert (result.decision, result.metrics, result.notes) == (
        Decision.HOLD,
        None,
        (f"missing:{LONG_OCC}",),
    )
    assert result.new_state is state


def test_custom_and_unmanaged_trades_never_exit() -> None:
    ratio = Spread.from_legs([*spread("-500P").legs, *spread("+495P", quantity=2).legs])
    legs = (TimedQuote(bid=D(9), ask=D(9)), TimedQuote(bid=D(0), ask=D(0)))
    custom = evaluate(
        default_plan(ratio.strategy), facts(ratio, D(1)), WatchState(), snap(ratio, "0", legs=legs)
    )
    assert (custom.decision, custom.notes) == (Decision.HOLD, ("custom_strategy",))
    loose = facts(managed=False)
    unmanaged = evaluate(fast(STOP), loose, WatchState(), snap(PUT_CREDIT, "4"))
    assert (unmanaged.decision, unmanaged.notes) == (Decision.HOLD, ("unmanaged",))


def test_quotes_must_match_the_legs() -> None:
    with pytest.raises(ValueError, match="1 quotes for 2 legs"):
        evaluate(STOP, facts(), WatchState(), snap(PUT_CREDIT, "0", legs=(None,)))


# ---------------------------------------------------------------------------------------------
# Records and replay
# ---------------------------------------------------------------------------------------------


def test_a_record_replays_to_the_same_evaluation() -> None:
    plan = msgspec.structs.replace(
        default_plan(CONDOR.strategy),
        scale_out_tiers=(ScaleOutTier(D("0.2"), D("0.5")),),
        underlying_spike_fraction=D("0.5"),
    )
    state = WatchState(high_water_mark=D("0.3"), underlying_samples=((1.0, D(509)),))
    position = facts(CONDOR.with_quantity(2), D("1.50"), entry_short_iv=D("0.2"))
    evaluation = evaluate(plan, position, state, snap(position.spread, "1.00", t=2.5))
    assert evaluation.decision is Decision.EXIT and evaluation.action is ExitAction.PARTIAL
    record = msgspec.json.decode(msgspec.json.encode(evaluation.to_record()))
    assert record["rule"] == "scale_out" and record["rule_version"] == evaluation.rule_version
    assert record["inputs"]["snapshot"]["legs"][1]["bid"] == "0.50"
    assert replay(record) == evaluation
