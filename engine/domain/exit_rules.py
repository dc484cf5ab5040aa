"""The exit rules: one pure function, :func:`evaluate`, run by a watcher on every tick.

``evaluate(plan, position, state, snapshot) -> Evaluation``. No I/O, no clock reads: market time
(for DTE, time-of-day and days in trade) and a monotonic trio time (for the debounce and spike
windows) arrive in the snapshot. The state is immutable; the evaluation carries the new one.
A watcher calls the same function as :meth:`ExitEvaluator.evaluate`, which works out what does
not change between ticks once per trade, and can leave out the volatility model where it cannot
decide (the tick path's cost is mostly Python arithmetic: see ``bench/core_cost.py``).

**Priority** (first that fires names the decision; every rule that fired is recorded):

1. ``stop_loss`` - losses first: protecting capital beats every other consideration;
2. ``underlying_breach``, 3. ``underlying_move``, 4. ``underlying_spike``, 5. ``short_delta`` -
   the position's risk is changing under it, also a loss-side reason;
6. ``expiration_day``, 7. ``max_days`` - then time: the trade's allotted life is over whatever
   its P&L;
8. ``iv_crush``, 9. ``trailing_profit``, 10. ``profit_target``, 11. ``low_value`` - then profits;
12. ``scale_out`` - last, because it is the only partial exit: any full exit firing on the same
   tick closes everything anyway, and a tier is not marked fired unless it decided.

**Prices.** Every P&L rule reads the **mark** (mid of each leg; :mod:`engine.domain.pricing`):
the natural price is what a market order would get, and on a wide but valid market it would make
targets unreachable and stops hair-triggered. The stop is protected from a bad mark by the
debounce and by the quote guards, not by reading a different price. The natural close price and
natural P&L are reported alongside in the metrics. Rules that read the profit fraction (target,
trailing, tiers, IV crush) never fire where max profit is unbounded (long calls and puts).

- ``stop_loss``: loss per spread (``-pnl`` at the mark) at or above the limit: on the ``credit``
  basis ``stop_loss x entry_price`` (for a credit trade the credit received; for a debit trade
  the debit paid), capped at max loss when max loss is known; on the ``max_loss`` basis
  ``stop_loss x max_loss``. Debounced: the breach must hold on ``stop_debounce_ticks``
  consecutive *clean* evaluations spanning at least ``stop_debounce_seconds`` of trio time. A
  clean tick back inside resets it; a guarded tick (or one with missing quotes) neither advances
  nor resets it.
- ``profit_target``: profit fraction at or above the target.
- ``trailing_profit``: armed once the high-water profit fraction has reached ``trailing_arm``;
  fires when the profit fraction is at or below ``high_water_mark - trailing_giveback``.
- ``scale_out``: each tier not yet fired whose profit fraction is reached. Several tiers reached
  on one tick fire together; each closes ``floor(close_fraction x opening quantity)`` spreads
  (at least 1), the total never more than the current quantity; closing everything is a full
  exit.
- ``expiration_day``: days to expiration (New York calendar days) at or below ``dte_exit_days``
  and New York time at or after ``dte_exit_time``, moved with an early close (the snapshot's
  ``session_close``): the cutoff keeps its distance before the close, so 15:50 becomes 12:50 on
  a day closing at 13:00; any time once past the expiration date.
- ``max_days``: New York calendar days since the trade opened at or above ``max_days_in_trade``.
- ``low_value`` (credit only): mark close price at or below ``low_value_price``.
- ``iv_crush`` (credit only): the short legs' implied volatility (mean over the short legs, from
  each leg's mid and the underlying price, :mod:`engine.domain.volatility`) at or below
  ``iv_crush_ratio x`` the entry IV, while the profit fraction is at least
  ``iv_crush_min_profit``. Entry IV is the position's, else captured on the first clean tick.
- ``underlying_breach`` (credit only): a short put's strike crossed downward, a short call's
  upward, by the buffer: ``underlying <= K x (1 - buffer)`` / ``>= K x (1 + buffer)``. A negative
  buffer fires before the strike is reached.
- ``underlying_move``: the underlying moved against the position by at least the fraction since
  entry (the position's entry underlying price, else the first clean tick's). Against = down for
  bullish strategies, up for bearish ones, either way for an iron condor.
- ``underlying_spike``: within the last ``underlying_spike_seconds`` the underlying moved against
  the position by more than the fraction (from the window's high for bullish strategies, from its
  low for bearish ones). The samples kept are bounded.
- ``short_delta`` (credit only): a short leg's absolute delta above ``short_delta_max``.

**Guards** (:mod:`engine.domain.guards`): a fired rule is held back (``held_by_guard``) when any
leg quote is crossed, stale or wide, or, for the rules that read the underlying, when the
underlying price is stale. An unguarded fired rule still exits. A guarded tick changes no state
(no high-water mark from a bad print), except that a fresh underlying price joins the spike
samples. Missing quotes: ``hold`` with ``missing:<symbol>`` notes and no state change. Custom
strategies and unmanaged trades always ``hold``.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec

from engine.calendar import REGULAR_CLOSE
from engine.domain.exit_plan import RULE_VERSION, ExitPlan, StopBasis
from engine.domain.exit_types import (
    MAX_UNDERLYING_SAMPLES,
    PRIORITY,
    UNDERLYING_RULES,
    Decision,
    Evaluation,
    EvaluationInputs,
    ExitAction,
    MarketSnapshot,
    Metrics,
    PersistedWatchState,
    PositionFacts,
    Rule,
    WatchState,
)
from engine.domain.guards import (
    TimedQuote,
    leg_guard_reasons,
    missing_quote_reasons,
    underlying_guard_reasons,
)
from engine.domain.occ import OptionRight
from engine.domain.pricing import SpreadPricer, Valuation, dollars, leg_mid
from engine.domain.strategy import Strategy, is_credit, is_debit
from engine.domain.volatility import (
    bs_delta,
    implied_volatility,
    to_decimal,
    years_to_expiry,
)

__all__ = [
    "MAX_UNDERLYING_SAMPLES",
    "PRIORITY",
    "UNDERLYING_RULES",
    "Decision",
    "Evaluation",
    "EvaluationInputs",
    "ExitAction",
    "ExitEvaluator",
    "MarketSnapshot",
    "Metrics",
    "PersistedWatchState",
    "PositionFacts",
    "Rule",
    "WatchState",
    "evaluate",
    "replay",
    "stop_loss_limit",
]

_NEW_YORK: Final = ZoneInfo("America/New_York")

_BULLISH = frozenset(
    {Strategy.BULL_PUT_CREDIT, Strategy.BULL_CALL_DEBIT, Strategy.SHORT_PUT, Strategy.LONG_CALL}
)
_BEARISH = frozenset(
    {Strategy.BEAR_CALL_CREDIT, Strategy.BEAR_PUT_DEBIT, Strategy.SHORT_CALL, Strategy.LONG_PUT}
)


def replay(record: Mapping[str, Any]) -> Evaluation:
    """Evaluate again from a :meth:`Evaluation.to_record` (decoded from JSON or not)."""
    inputs = msgspec.convert(record["inputs"], EvaluationInputs)
    return evaluate(inputs.plan, inputs.position, inputs.state, inputs.snapshot)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tick:
    """One evaluation's inputs and everything derived from them before the rules run."""

    evaluator: ExitEvaluator  # the position's constants
    plan: ExitPlan
    position: PositionFacts
    state: WatchState
    snapshot: MarketSnapshot
    quotes: tuple[TimedQuote, ...]
    valuation: Valuation
    clean: bool  # no leg guard: state may learn from this tick
    underlying_fresh: bool  # present and not stale
    high_water_mark: Decimal | None
    trailing_armed: bool
    short_iv: Decimal | None
    short_delta: Decimal | None
    entry_iv: Decimal | None
    entry_underlying: Decimal | None
    days_to_expiration: int | None
    days_in_trade: int
    reached_tiers: tuple[int, ...]


def evaluate(
    plan: ExitPlan, position: PositionFacts, state: WatchState, snapshot: MarketSnapshot
) -> Evaluation:
    """Decide whether to exit now. Pure: the same inputs always give the same evaluation."""
    return ExitEvaluator(plan, position).evaluate(state, snapshot)


_SWITCHES: Final[dict[Rule, str]] = {
    Rule.UNDERLYING_BREACH: "underlying_breach_buffer",
    Rule.UNDERLYING_MOVE: "underlying_move_fraction",
    Rule.UNDERLYING_SPIKE: "underlying_spike_fraction",
    Rule.SHORT_DELTA: "short_delta_max",
    Rule.EXPIRATION_DAY: "dte_exit_days",
    Rule.MAX_DAYS: "max_days_in_trade",
    Rule.IV_CRUSH: "iv_crush_ratio",
    Rule.TRAILING_PROFIT: "trailing_arm",
    Rule.PROFIT_TARGET: "profit_target",
    Rule.LOW_VALUE: "low_value_price",
    Rule.SCALE_OUT: "scale_out_tiers",
}
"""The plan field that turns each rule on (None or no tiers: off, and the rule never fires,
so an evaluator does not ask it). The stop is always asked: it also keeps its debounce."""


class ExitEvaluator:
    """:func:`evaluate` for one position under one plan, tick after tick: what does not change
    between ticks is worked out once (prices' constants, the stop's limit, the plan's
    thresholds, the rules the plan turns on, the day the trade opened). A watcher keeps one per
    trade and makes a new one when the trade changes."""

    __slots__ = (
        "_auto_exited",
        "_checks",
        "_opened_day",
        "_plan_values",
        "_pricer",
        "plan",
        "position",
        "stop_limit",
    )

    def __init__(self, plan: ExitPlan, position: PositionFacts) -> None:
        self.plan = plan
        self.position = position
        strategy = position.strategy
        self._auto_exited = is_credit(strategy) or is_debit(strategy)
        self._pricer = SpreadPricer(position.spread, position.entry_price)
        self.stop_limit = stop_loss_limit(plan, position, self._pricer.max_loss)
        # The rules after the stop that the plan turns on, in priority order, with their checks.
        self._checks = tuple(
            (rule, _RULES[rule])
            for rule in PRIORITY[1:]
            if getattr(plan, _SWITCHES[rule]) not in (None, ())
        )
        self._plan_values = _plan_values(plan)
        self._opened_day = position.opened_at.astimezone(_NEW_YORK).date()

    def evaluate(
        self, state: WatchState, snapshot: MarketSnapshot, *, lazy_model: bool = False
    ) -> Evaluation:
        """:func:`evaluate` with this evaluator's plan and position.

        ``lazy_model``: run the volatility model (the short legs' IV and delta) only when this
        tick's decision or new state can read it (see :func:`_model_decides`); otherwise the
        metrics' ``short_iv`` and ``short_delta`` are None and the model's notes absent. The
        decision, rules fired, quantity, tiers, guard reasons and new state are the same either
        way. A watcher evaluates lazily on every tick and in full for what it records."""
        plan, position = self.plan, self.position
        inputs = EvaluationInputs(plan=plan, position=position, state=state, snapshot=snapshot)
        if len(snapshot.legs) != len(position.spread.legs):
            raise ValueError(f"{len(snapshot.legs)} quotes for {len(position.spread.legs)} legs")
        if not self._auto_exited:
            return _hold(inputs, ("custom_strategy",))
        if not position.managed:
            return _hold(inputs, ("unmanaged",))
        missing = missing_quote_reasons(position.spread, snapshot.legs)
        if missing:
            return _hold(inputs, missing)
        quotes = tuple(q for q in snapshot.legs if q is not None)
        valuation = self._pricer.valuate(quotes)
        assert valuation is not None, "no quote is missing, so there is a mark"
        leg_reasons = leg_guard_reasons(plan, position.spread, quotes)
        underlying_reasons = underlying_guard_reasons(plan, snapshot.underlying_age_seconds)
        notes: list[str] = []
        tick = _derive(
            self,
            inputs,
            quotes,
            valuation,
            not leg_reasons,
            not underlying_reasons,
            notes,
            lazy_model=lazy_model,
        )
        stop_fires, stop_state = _stop_loss(tick)
        fired = [Rule.STOP_LOSS] if stop_fires else []
        for rule, check in self._checks:
            if check(tick):
                fired.append(rule)
        return _decide(
            tick, inputs, tuple(fired), leg_reasons, underlying_reasons, stop_state, tuple(notes)
        )


def _hold(inputs: EvaluationInputs, notes: tuple[str, ...]) -> Evaluation:
    return Evaluation(
        decision=Decision.HOLD,
        rule=None,
        rules_fired=(),
        action=None,
        quantity=None,
        tiers=(),
        metrics=None,
        thresholds={},
        guard_reasons=(),
        notes=notes,
        new_state=inputs.state,
        rule_version=RULE_VERSION,
        inputs=inputs,
    )


def _derive(
    evaluator: ExitEvaluator,
    inputs: EvaluationInputs,
    quotes: tuple[TimedQuote, ...],
    valuation: Valuation,
    clean: bool,
    underlying_ok: bool,
    notes: list[str],
    *,
    lazy_model: bool,
) -> _Tick:
    plan, position, state, snapshot = inputs.plan, inputs.position, inputs.state, inputs.snapshot
    fraction = valuation.profit_fraction
    hwm = state.high_water_mark
    if fraction is not None and (hwm is None or fraction > hwm):
        hwm = fraction
    armed = state.trailing_armed or (
        plan.trailing_arm is not None and hwm is not None and hwm >= plan.trailing_arm
    )
    underlying_fresh = underlying_ok and snapshot.underlying_price is not None
    entry_iv = state.entry_iv if position.entry_short_iv is None else position.entry_short_iv
    short_iv, short_delta = (
        _short_leg_model(plan, position, quotes, snapshot, notes)
        if not lazy_model
        or _model_decides(plan, position, state, entry_iv, fraction, clean and underlying_fresh)
        else (None, None)
    )
    entry_underlying = position.entry_underlying_price
    if entry_underlying is None:
        entry_underlying = state.entry_underlying_price
    ny_today = snapshot.market_time.astimezone(_NEW_YORK).date()
    expiration = position.spread.expiration
    return _Tick(
        evaluator=evaluator,
        plan=plan,
        position=position,
        state=state,
        snapshot=snapshot,
        quotes=quotes,
        valuation=valuation,
        clean=clean,
        underlying_fresh=underlying_fresh,
        high_water_mark=hwm,
        trailing_armed=armed,
        short_iv=short_iv,
        short_delta=short_delta,
        entry_iv=entry_iv,
        entry_underlying=entry_underlying,
        days_to_expiration=None if expiration is None else (expiration - ny_today).days,
        days_in_trade=(ny_today - evaluator._opened_day).days,
        reached_tiers=tuple(
            index
            for index, tier in enumerate(plan.scale_out_tiers)
            if index not in state.fired_tiers
            and fraction is not None
            and fraction >= tier.profit_fraction
        ),
    )


def _model_decides(
    plan: ExitPlan,
    position: PositionFacts,
    state: WatchState,
    entry_iv: Decimal | None,
    fraction: Decimal | None,
    learns: bool,
) -> bool:
    """Whether the volatility model can change this tick's decision or new state: the delta
    rule is on; or IV crush is on and either the entry IV is still to be captured (on a tick the
    state ``learns`` from) or the profit has reached the crush's minimum, the one condition of
    :func:`_iv_crush` that does not read the model. Solving an implied volatility is most of an
    evaluation's cost, and most ticks of most trades need none."""
    if plan.short_delta_max is not None:
        return True
    if plan.iv_crush_ratio is None:
        return False
    if learns and state.entry_iv is None and position.entry_short_iv is None:
        return True
    return entry_iv is not None and fraction is not None and fraction >= plan.iv_crush_min_profit


def _short_leg_model(
    plan: ExitPlan,
    position: PositionFacts,
    quotes: tuple[TimedQuote, ...],
    snapshot: MarketSnapshot,
    notes: list[str],
) -> tuple[Decimal | None, Decimal | None]:
    """Mean implied volatility of the short legs and their largest absolute delta, computed
    only when a rule needs them (IV crush, short delta; credit strategies)."""
    wanted = plan.iv_crush_ratio is not None or plan.short_delta_max is not None
    if not wanted or not is_credit(position.strategy):
        return None, None
    spot = snapshot.underlying_price
    if spot is None or spot <= 0:
        notes.append("underlying_missing")
        return None, None
    years = years_to_expiry(snapshot.market_time, position.spread.legs[0].symbol.expiration)
    rate = plan.risk_free_rate
    vols: list[float] = []
    deltas: list[float] = []
    for leg, quote in zip(position.spread.legs, quotes, strict=True):
        if not leg.is_short:
            continue
        mid = leg_mid(quote)
        symbol = leg.symbol
        vol = (
            None
            if mid is None
            else implied_volatility(symbol.right, mid, spot, symbol.strike, years, rate)
        )
        if vol is None:
            notes.append(f"iv_unsolved:{leg.occ}")
            return None, None
        vols.append(vol)
        deltas.append(abs(bs_delta(symbol.right, spot, symbol.strike, years, vol, rate)))
    if not vols:
        return None, None
    return to_decimal(sum(vols) / len(vols)), to_decimal(max(deltas))


# ---------------------------------------------------------------------------------------------
# The rules, one function each (the stop is separate: it also advances the debounce)
# ---------------------------------------------------------------------------------------------


def stop_loss_limit(
    plan: ExitPlan, position: PositionFacts, max_loss: Decimal | None
) -> Decimal | None:
    """The loss per spread at which the stop is breached; None when the stop is off or has no
    basis (the max-loss basis on a position without a bounded max loss)."""
    if plan.stop_loss is None:
        return None
    if plan.stop_loss_basis is StopBasis.CREDIT:
        limit = plan.stop_loss * position.entry_price
        return limit if max_loss is None else min(limit, max_loss)
    return None if max_loss is None else plan.stop_loss * max_loss


def _stop_loss(tick: _Tick) -> tuple[bool, tuple[int, float | None]]:
    """Whether the debounced stop fires, and the debounce progress to keep. Only a clean tick
    moves the debounce: a breach advances it, a clean tick back inside resets it."""
    state, plan = tick.state, tick.plan
    progress = (state.stop_breach_count, state.stop_first_breach_at)
    limit = tick.evaluator.stop_limit
    if limit is None:
        return False, (0, None)
    breached = -tick.valuation.pnl >= limit
    now = tick.snapshot.monotonic
    if tick.clean:
        first = state.stop_first_breach_at
        progress = (
            (state.stop_breach_count + 1, now if first is None else first)
            if breached
            else (0, None)
        )
    count, first_at = progress
    # On a guarded tick the progress is the state's: not advanced, not reset. A stop that was
    # already due still fires there, and the guard then holds it back and says so.
    fires = (
        breached
        and first_at is not None
        and count >= plan.stop_debounce_ticks
        and now - first_at >= float(plan.stop_debounce_seconds)
    )
    return fires, progress


def _profit_target(tick: _Tick) -> bool:
    target, fraction = tick.plan.profit_target, tick.valuation.profit_fraction
    return target is not None and fraction is not None and fraction >= target


def _trailing_profit(tick: _Tick) -> bool:
    fraction, hwm = tick.valuation.profit_fraction, tick.high_water_mark
    if tick.plan.trailing_arm is None or not tick.trailing_armed:
        return False
    return (
        fraction is not None and hwm is not None and fraction <= hwm - tick.plan.trailing_giveback
    )


def _scale_out(tick: _Tick) -> bool:
    return bool(tick.reached_tiers)


def _expiration_day(tick: _Tick) -> bool:
    days, dte = tick.plan.dte_exit_days, tick.days_to_expiration
    if days is None or dte is None:
        return False
    if dte < 0:
        return True  # past expiration and still held: overdue
    return dte <= days and _past_cutoff(tick.snapshot, tick.plan.dte_exit_time)


def _past_cutoff(snapshot: MarketSnapshot, cutoff: dt.time) -> bool:
    """Whether the day's cutoff has passed. The cutoff keeps its distance before the session's
    close: 15:50 is ten minutes before a 16:00 close, so on a half day closing at 13:00 it is
    12:50. Without a close (no session that day, or no calendar) the plan's time stands."""
    close = snapshot.session_close
    if close is None:
        return snapshot.market_time.astimezone(_NEW_YORK).time() >= cutoff
    day = close.astimezone(_NEW_YORK).date()
    early_by = dt.datetime.combine(day, REGULAR_CLOSE, _NEW_YORK) - close
    return snapshot.market_time >= dt.datetime.combine(day, cutoff, _NEW_YORK) - early_by


def _max_days(tick: _Tick) -> bool:
    limit = tick.plan.max_days_in_trade
    return limit is not None and tick.days_in_trade >= limit


def _low_value(tick: _Tick) -> bool:
    level = tick.plan.low_value_price
    return (
        level is not None
        and is_credit(tick.position.strategy)
        and tick.valuation.mark_close_price <= level
    )


def _iv_crush(tick: _Tick) -> bool:
    ratio, fraction = tick.plan.iv_crush_ratio, tick.valuation.profit_fraction
    if ratio is None or tick.short_iv is None or tick.entry_iv is None or fraction is None:
        return False
    return tick.short_iv <= ratio * tick.entry_iv and fraction >= tick.plan.iv_crush_min_profit


def _underlying_breach(tick: _Tick) -> bool:
    buffer, spot = tick.plan.underlying_breach_buffer, tick.snapshot.underlying_price
    if buffer is None or spot is None or not is_credit(tick.position.strategy):
        return False
    for leg in tick.position.spread.legs:
        if not leg.is_short:
            continue
        strike = leg.symbol.strike
        if leg.symbol.right is OptionRight.PUT and spot <= strike * (1 - buffer):
            return True
        if leg.symbol.right is OptionRight.CALL and spot >= strike * (1 + buffer):
            return True
    return False


def _against(strategy: Strategy, change: Decimal) -> Decimal:
    """How far a relative underlying change goes against the position (negative = in favour)."""
    if strategy in _BULLISH:
        return -change
    if strategy in _BEARISH:
        return change
    return abs(change)  # iron condor: either way is against


def _underlying_move(tick: _Tick) -> bool:
    limit, spot, entry = (
        tick.plan.underlying_move_fraction,
        tick.snapshot.underlying_price,
        tick.entry_underlying,
    )
    if limit is None or spot is None or entry is None or entry <= 0:
        return False
    return _against(tick.position.strategy, (spot - entry) / entry) >= limit


def _underlying_spike(tick: _Tick) -> bool:
    limit, spot = tick.plan.underlying_spike_fraction, tick.snapshot.underlying_price
    if limit is None or spot is None:
        return False
    since = tick.snapshot.monotonic - float(tick.plan.underlying_spike_seconds)
    window = [price for at, price in tick.state.underlying_samples if at >= since and price > 0]
    strategy = tick.position.strategy
    return any(_against(strategy, (spot - price) / price) > limit for price in window)


def _short_delta(tick: _Tick) -> bool:
    level = tick.plan.short_delta_max
    return level is not None and tick.short_delta is not None and tick.short_delta > level


_RULES = {
    Rule.UNDERLYING_BREACH: _underlying_breach,
    Rule.UNDERLYING_MOVE: _underlying_move,
    Rule.UNDERLYING_SPIKE: _underlying_spike,
    Rule.SHORT_DELTA: _short_delta,
    Rule.EXPIRATION_DAY: _expiration_day,
    Rule.MAX_DAYS: _max_days,
    Rule.IV_CRUSH: _iv_crush,
    Rule.TRAILING_PROFIT: _trailing_profit,
    Rule.PROFIT_TARGET: _profit_target,
    Rule.LOW_VALUE: _low_value,
    Rule.SCALE_OUT: _scale_out,
}
assert set(_RULES) | {Rule.STOP_LOSS} == set(Rule)
assert set(_SWITCHES) == set(_RULES), (
    "every rule but the stop needs the plan field that turns it on"
)
assert PRIORITY[0] is Rule.STOP_LOSS, "losses first: the evaluator asks the stop before the rest"


# ---------------------------------------------------------------------------------------------
# Decision, quantity and the new state
# ---------------------------------------------------------------------------------------------


def _decide(
    tick: _Tick,
    inputs: EvaluationInputs,
    fired: tuple[Rule, ...],
    leg_reasons: tuple[str, ...],
    underlying_reasons: tuple[str, ...],
    stop_progress: tuple[int, float | None],
    notes: tuple[str, ...],
) -> Evaluation:
    def guarded(rule: Rule) -> bool:
        return bool(leg_reasons) or (rule in UNDERLYING_RULES and bool(underlying_reasons))

    actionable = [rule for rule in fired if not guarded(rule)]
    action: ExitAction | None = None
    quantity: int | None = None
    tiers: tuple[int, ...] = ()
    if actionable:
        decision, rule = Decision.EXIT, actionable[0]
        action, quantity = ExitAction.FULL, tick.position.quantity
        if rule is Rule.SCALE_OUT:
            tiers = tick.reached_tiers
            quantity = _tier_quantity(tick, tiers)
            if quantity < tick.position.quantity:
                action = ExitAction.PARTIAL
    elif fired:
        decision, rule = Decision.HELD_BY_GUARD, fired[0]
    else:
        decision, rule = Decision.HOLD, None
    used_reasons = leg_reasons + (
        underlying_reasons if any(r in UNDERLYING_RULES for r in fired) else ()
    )
    return Evaluation(
        decision=decision,
        rule=rule,
        rules_fired=fired,
        action=action,
        quantity=quantity,
        tiers=tiers,
        metrics=_metrics(tick),
        thresholds=_thresholds(tick),
        guard_reasons=used_reasons if fired else leg_reasons + underlying_reasons,
        notes=notes,
        new_state=_new_state(tick, stop_progress, tiers),
        rule_version=RULE_VERSION,
        inputs=inputs,
    )


def _tier_quantity(tick: _Tick, tiers: tuple[int, ...]) -> int:
    """Spreads to close for these tiers: each ``floor(fraction x opening)``, at least 1; the
    total capped at the current quantity."""
    opening = Decimal(tick.position.opening_quantity)
    total = 0
    for index in tiers:
        share = tick.plan.scale_out_tiers[index].close_fraction * opening
        total += max(1, int(share.to_integral_value(rounding=ROUND_FLOOR)))
    return min(total, tick.position.quantity)


def _new_state(
    tick: _Tick, stop_progress: tuple[int, float | None], tiers: tuple[int, ...]
) -> WatchState:
    state, snapshot = tick.state, tick.snapshot
    samples = state.underlying_samples
    if tick.underlying_fresh and snapshot.underlying_price is not None:
        since = snapshot.monotonic - float(tick.plan.underlying_spike_seconds)
        # Samples are in time order, so the ones inside the window are a tail: find where it
        # starts instead of testing every sample.
        first = 0 if not samples or samples[0][0] >= since else _first_at(samples, since)
        kept = samples[max(first, len(samples) + 1 - MAX_UNDERLYING_SAMPLES) :]
        samples = (*kept, (snapshot.monotonic, snapshot.underlying_price))
    if not tick.clean:
        # Nothing learnt from a bad print: no high-water mark, no entry IV, no debounce step.
        return msgspec.structs.replace(state, underlying_samples=samples)
    entry_iv = state.entry_iv
    if entry_iv is None and tick.position.entry_short_iv is None and tick.underlying_fresh:
        entry_iv = tick.short_iv
    entry_underlying = state.entry_underlying_price
    if entry_underlying is None and tick.position.entry_underlying_price is None:
        entry_underlying = snapshot.underlying_price if tick.underlying_fresh else None
    count, first_at = stop_progress
    return WatchState(
        high_water_mark=tick.high_water_mark,
        fired_tiers=tuple(sorted({*state.fired_tiers, *tiers})),
        entry_iv=entry_iv,
        entry_underlying_price=entry_underlying,
        trailing_armed=tick.trailing_armed,
        stop_breach_count=count,
        stop_first_breach_at=first_at,
        underlying_samples=samples,
    )


def _first_at(samples: tuple[tuple[float, Decimal], ...], since: float) -> int:
    return bisect.bisect_left(samples, since, key=lambda sample: sample[0])


def _metrics(tick: _Tick) -> Metrics:
    v, quantity = tick.valuation, tick.position.quantity
    return Metrics(
        mark=v.mark,
        natural_value=v.natural_value,
        mark_close_price=v.mark_close_price,
        natural_close_price=v.natural_close_price,
        pnl=v.pnl,
        natural_pnl=v.natural_pnl,
        pnl_dollars=dollars(v.pnl, quantity),
        natural_pnl_dollars=dollars(v.natural_pnl, quantity),
        max_profit=v.max_profit,
        max_loss=v.max_loss,
        profit_fraction=v.profit_fraction,
        loss_fraction=v.loss_fraction,
        high_water_mark=tick.high_water_mark,
        underlying_price=tick.snapshot.underlying_price,
        short_iv=tick.short_iv,
        entry_iv=tick.entry_iv,
        short_delta=tick.short_delta,
        days_to_expiration=tick.days_to_expiration,
        days_in_trade=tick.days_in_trade,
    )


def _plan_values(plan: ExitPlan) -> dict[str, Any]:
    """The plan values in force (rules that are off are left out)."""
    return {
        name: value
        for name in plan.__struct_fields__
        if (value := getattr(plan, name)) is not None and value != ()
    }


def _thresholds(tick: _Tick) -> dict[str, Any]:
    """The plan values in force and the levels derived from them for this position."""
    plan = tick.plan
    values = dict(tick.evaluator._plan_values)
    values["stop_loss_limit"] = tick.evaluator.stop_limit
    if plan.trailing_arm is not None and tick.trailing_armed and tick.high_water_mark is not None:
        values["trailing_fire_at"] = tick.high_water_mark - plan.trailing_giveback
    return values
