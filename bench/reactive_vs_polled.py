"""Reacting to every tick against polling every 60 s and every 300 s (issue 6, item 3).

Not a test: a measurement of what the replaced systems' cadences cost a trader. The same seeded
price paths are run through the engine's pure exit plan
(:func:`engine.domain.exit_rules.evaluate`, default plan per strategy) three ways:

- **reactive**: evaluated on every tick (one tick per second of market time), as a
  PositionWatcher does: the :class:`WatchState` of each evaluation is carried into the next;
- **poll 60 s / poll 300 s**: evaluated only on the ticks at whole multiples of the cadence from
  the session open (a cron job aligned to the clock), the state carried from poll to poll.

The polled plans are the same plan with the stop debounce off (one breached poll decides): the
replaced cron jobs had none, and a debounce of three *evaluations* would add two whole periods to
every polled stop and flatter the reactive engine. The result also holds the same figures with
the plan's own debounce (``same_plan_debounce``), for completeness.

**Market.** Each spread (bull put credit, bear call credit, bull call debit, bear put debit, iron
condor, in turn; 0-2 days to expiration; opened between 09:30 and 12:30 New York time) gets its
own underlying path (:class:`bench.paths.UnderlyingPath`: GBM with a random drift and jumps) and
leg quotes from Black-Scholes a few percent wide (:func:`bench.paths.quote_cents`). The entry
price is the mark at the opening tick. Market time advances with the ticks, so the
expiration-day rule (15:50 when two days or fewer remain) closes whatever the price rules left.

**Definitions** (per spread; times are market seconds):

- *first satisfying tick*: the first tick on which the plan, evaluated there with the state
  carried from every earlier tick, decides an exit. It is the reactive decision by definition,
  so the reactive delay is 0 ticks. A debounced stop therefore satisfies on its third breached
  tick, not its first: what the debounce costs shows up in the reactive slippage.
- *delay* (per cadence): decision time - first satisfying tick. Negative when a poll without
  the debounce decided inside the reactive run's debounce window.
- *threshold*: the P&L per spread at which the reactive run's deciding rule is exactly met -
  the stop limit (``-stop_loss_limit``), ``profit_target x max profit``, the trailing fire level
  (``(high-water mark - give-back) x max profit`` as the reactive run saw it), the low-value
  price; for rules with no price level (expiration day) the P&L at the first satisfying tick.
- *slippage* (per cadence): ``(threshold P&L - P&L at the decision) x 100`` dollars per spread,
  both at the mark: how far past the threshold the mark had moved by the decision, positive =
  worse for the trader. Past a profit target it is negative (the mark went on in the trader's
  favour), so medians over every exit mix signs; the per-rule figures separate them.
- *extra slippage* (per polled cadence): polled slippage - reactive slippage, spread by spread:
  what polling gave up against reacting (the same as the difference of the two decisions' P&L).
- *missed*: the reactive run exited and the polled run never did before the close; *other rule*:
  the polled run exited by a different rule. Spreads the reactive run never exits are left out.

    .venv/bin/python -m bench.reactive_vs_polled [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/reactive_vs_polled.json``.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import msgspec

from bench import standalone
from bench.paths import (
    SECONDS_PER_YEAR,
    SHAPES,
    UnderlyingPath,
    build_spread,
    cents,
    quote_cents,
)
from engine.clock import NEW_YORK
from engine.domain.exit_plan import ExitPlan, default_plan, plan_with_overrides
from engine.domain.exit_rules import evaluate
from engine.domain.exit_types import (
    Decision,
    Evaluation,
    MarketSnapshot,
    PositionFacts,
    Rule,
    WatchState,
)
from engine.domain.guards import TimedQuote
from engine.domain.occ import OptionRight
from engine.domain.pricing import mark_close_price
from engine.domain.spread import Spread
from engine.domain.strategy import Strategy, is_credit

__all__ = ["CADENCES", "main", "run"]

CADENCES: Final[tuple[int, ...]] = (60, 300)
"""The replaced systems' polling periods, in seconds."""
SIZES: Final = {"full": 200, "tiny": 8}
"""Spreads per size: full is the issue's "at least 200"; tiny is for the test suite."""

SESSION_DATE: Final = dt.date(2025, 12, 9)  # a Tuesday
SESSION_OPEN: Final = dt.datetime(2025, 12, 9, 9, 30, tzinfo=NEW_YORK)
SESSION_SECONDS: Final = 6 * 3600 + 30 * 60  # 09:30 to 16:00; the last tick is 15:59:59
_OPEN_WINDOW = 3 * 3600  # trades open between 09:30 and 12:30
_CLOSE = dt.time(16, 0)
_NO_DEBOUNCE: Final = {"stop_debounce_ticks": 1, "stop_debounce_seconds": 0}
_SCENARIOS = ("against", "with", "reversal")
_FAVOUR = {  # which way the underlying must go for the position to profit
    Strategy.BULL_PUT_CREDIT: 1,
    Strategy.BULL_CALL_DEBIT: 1,
    Strategy.BEAR_CALL_CREDIT: -1,
    Strategy.BEAR_PUT_DEBIT: -1,
}


@dataclass(frozen=True, slots=True)
class _Case:
    """One spread and its market: the position, its path and how its legs are priced."""

    position: PositionFacts
    path: UnderlyingPath
    vol: float
    open_second: int  # session second of the opening tick
    expiry_second: float  # session second of 16:00 New York time on the expiration date
    legs: tuple[tuple[OptionRight, float], ...]  # right and strike of each leg, in leg order


@dataclass(frozen=True, slots=True)
class _Exit:
    second: int
    rule: Rule
    pnl: Decimal  # per spread, at the mark, when decided
    evaluation: Evaluation


# ---------------------------------------------------------------------------------------------
# The market
# ---------------------------------------------------------------------------------------------


def _snapshot(case: _Case, second: int) -> MarketSnapshot:
    """Every leg freshly quoted (age 0) at this tick, as the watcher's newest quotes."""
    spot = case.path.at(second - case.open_second)
    years = (case.expiry_second - second) / SECONDS_PER_YEAR
    quotes = []
    for right, strike in case.legs:
        bid, ask = quote_cents(right, spot, strike, years, case.vol)
        quotes.append(TimedQuote(bid=cents(bid), ask=cents(ask)))
    return MarketSnapshot(
        legs=tuple(quotes),
        underlying_price=cents(round(spot * 100)),
        underlying_age_seconds=0.0,
        market_time=SESSION_OPEN + dt.timedelta(seconds=second),
        monotonic=float(second),
    )


def _entry_ok(spread: Spread, entry: Decimal) -> bool:
    """A tradeable entry: neither nearly worthless nor nearly the whole width."""
    width = spread.width
    assert width is not None
    return Decimal("0.15") <= entry <= width - Decimal("0.15")


def _distance(strategy: Strategy, sigma: float, rng: random.Random) -> float:
    """Strike distance from spot in standard deviations of the move left to expiry: short
    strikes a little out of the money (a condor's a little further), a debit spread's long
    strike near the money."""
    if strategy is Strategy.IRON_CONDOR:
        return sigma * rng.uniform(0.4, 1.2)
    if is_credit(strategy):
        return sigma * rng.uniform(0.2, 1.0)
    return sigma * rng.uniform(-0.3, 0.3)


def _path(strategy: Strategy, scenario: str, rng: random.Random) -> tuple[UnderlyingPath, float]:
    """The underlying path of one spread and its volatility. The scenario sets the trend:
    ``against`` the position (toward the stop), ``with`` it (toward the target), or with it and
    then against it (``reversal``: toward a trailing stop). Noise and jumps do the rest."""
    favour = _FAVOUR.get(strategy) or rng.choice((1, -1))
    against = strategy is Strategy.IRON_CONDOR  # a condor's favourable path is a quiet one
    trend = rng.uniform(15.0, 45.0)  # per trading year: 1 % takes 30 min at about 33
    vol = rng.uniform(0.20, 0.45)
    drift, turn_at, drift_after = 0.0, None, 0.0
    if scenario == "against":
        drift = -favour * trend
    elif scenario == "with":
        drift = 0.0 if against else favour * trend
        vol = vol / 2 if against else vol
    else:
        drift, drift_after = favour * trend, -favour * trend * 1.5
        turn_at = rng.randrange(600, 2400)
    path = UnderlyingPath(
        start=500.0,
        vol=vol,
        drift=drift,
        seed=rng.getrandbits(64),
        jumps_per_hour=0.5,
        jump_size=0.003,
        turn_at=turn_at,
        drift_after=drift_after,
    )
    return path, vol


def _case(index: int, rng: random.Random) -> _Case:
    """The index-th spread: shape and scenario by turn, everything else drawn from ``rng``."""
    strategy = SHAPES[index % len(SHAPES)]
    scenario = _SCENARIOS[index // len(SHAPES) % len(_SCENARIOS)]
    expiration = SESSION_DATE + dt.timedelta(days=rng.choice((0, 1, 2)))
    close = dt.datetime.combine(expiration, _CLOSE, tzinfo=NEW_YORK)
    expiry_second = (close - SESSION_OPEN).total_seconds()
    path, vol = _path(strategy, scenario, rng)
    open_second = rng.randrange(_OPEN_WINDOW)
    sigma = vol * math.sqrt((expiry_second - open_second) / SECONDS_PER_YEAR)
    while True:  # redraw strikes until the entry is tradeable; the range narrows each time
        spread = build_spread(
            strategy,
            root="SPY",
            expiration=expiration,
            spot=path.at(0),
            distance=_distance(strategy, sigma, rng),
            width=rng.choice((2, 3, 5)),
        )
        sigma *= 0.9
        legs = tuple((leg.symbol.right, float(leg.symbol.strike)) for leg in spread.legs)
        facts = PositionFacts(
            spread=spread,
            entry_price=Decimal(0),
            opening_quantity=1,
            opened_at=SESSION_OPEN + dt.timedelta(seconds=open_second),
        )
        case = _Case(facts, path, vol, open_second, expiry_second, legs)
        entry = mark_close_price(spread, _snapshot(case, open_second).legs)
        if entry is not None and _entry_ok(spread, entry):
            position = msgspec.structs.replace(facts, entry_price=entry)
            return _Case(position, path, vol, open_second, expiry_second, legs)


# ---------------------------------------------------------------------------------------------
# Running a plan at a cadence
# ---------------------------------------------------------------------------------------------


def _run_plan(plan: ExitPlan, case: _Case, seconds: Iterable[int]) -> tuple[_Exit | None, int]:
    """Evaluate at these ticks, carrying the state as the watcher does, until the first exit.
    Returns the exit (None if the session ended first) and the number of evaluations."""
    state = WatchState()
    position = case.position
    count = 0
    for second in seconds:
        evaluation = evaluate(plan, position, state, _snapshot(case, second))
        count += 1
        if evaluation.decision is Decision.EXIT:
            assert evaluation.rule is not None and evaluation.metrics is not None
            return _Exit(second, evaluation.rule, evaluation.metrics.pnl, evaluation), count
        # Default plans have no scale-out tiers, so the watcher's "a tier counts as fired only
        # once sent" rewrite of the state never changes anything here.
        state = evaluation.new_state
    return None, count


def _poll_seconds(case: _Case, cadence: int) -> range:
    first = -(-case.open_second // cadence) * cadence
    return range(first, SESSION_SECONDS, cadence)


def _threshold_pnl(case: _Case, exit_: _Exit) -> Decimal:
    """The P&L per spread at which the deciding rule is exactly met (see the module doc)."""
    evaluation = exit_.evaluation
    metrics, thresholds, plan = evaluation.metrics, evaluation.thresholds, evaluation.inputs.plan
    assert metrics is not None
    max_profit = metrics.max_profit
    if exit_.rule is Rule.STOP_LOSS:
        limit: Decimal = thresholds["stop_loss_limit"]
        return -limit
    if exit_.rule is Rule.PROFIT_TARGET and plan.profit_target is not None and max_profit:
        return plan.profit_target * max_profit
    if exit_.rule is Rule.TRAILING_PROFIT and max_profit:
        fire_at: Decimal = thresholds["trailing_fire_at"]
        return fire_at * max_profit
    if exit_.rule is Rule.LOW_VALUE and plan.low_value_price is not None:
        return case.position.entry_price - plan.low_value_price
    return exit_.pnl


@dataclass(slots=True)
class _Outcome:
    """One spread's exits: the reactive one and, per label, the polled one."""

    case: _Case
    reactive: _Exit
    threshold: Decimal
    polled: dict[str, _Exit | None]


def _slippage(outcome: _Outcome, exit_: _Exit) -> float:
    return float((outcome.threshold - exit_.pnl) * 100)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(values: Sequence[float], places: int = 2) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p95": None, "mean": None}
    return {
        "median": round(statistics.median(values), places),
        "p95": round(_percentile(values, 0.95), places),
        "mean": round(statistics.fmean(values), places),
    }


def _ratio(polled: float | None, reactive: float | None) -> float | None:
    """polled / reactive, or None where the reactive figure is not positive (no scale)."""
    if polled is None or reactive is None or reactive <= 0:
        return None
    return round(polled / reactive, 2)


def _reactive_figures(outcomes: Sequence[_Outcome]) -> dict[str, Any]:
    slips = [_slippage(o, o.reactive) for o in outcomes]
    return {
        "cadence_seconds": 1,
        "exits": len(outcomes),
        "delay_seconds": _summary([0.0] * len(outcomes), 1),
        "slippage_usd": _summary(slips),
        "slippage_usd_by_rule": _by_rule(outcomes, lambda o: o.reactive),
        "rules": dict(Counter(str(o.reactive.rule) for o in outcomes).most_common()),
    }


def _by_rule(outcomes: Sequence[_Outcome], pick: Any, extra: bool = False) -> dict[str, Any]:
    """Slippage (or extra slippage) grouped by the reactive run's rule, whose threshold it is
    measured from. ``pick`` chooses the exit of one cadence (None: no exit, left out)."""
    groups: dict[str, list[float]] = {}
    for outcome in outcomes:
        exit_ = pick(outcome)
        if exit_ is None:
            continue
        value = _slippage(outcome, exit_)
        if extra:
            value -= _slippage(outcome, outcome.reactive)
        groups.setdefault(str(outcome.reactive.rule), []).append(value)
    return {rule: {"count": len(v), **_summary(v)} for rule, v in sorted(groups.items())}


def _polled_figures(
    outcomes: Sequence[_Outcome], label: str, cadence: int, reactive: dict[str, Any]
) -> dict[str, Any]:
    decided = [(o, e) for o in outcomes if (e := o.polled[label]) is not None]
    delays = [float(e.second - o.reactive.second) for o, e in decided]
    slips = [_slippage(o, e) for o, e in decided]
    extra = [_slippage(o, e) - _slippage(o, o.reactive) for o, e in decided]
    delay, slippage = _summary(delays, 1), _summary(slips)
    by_rule = _by_rule(outcomes, lambda o: o.polled[label])
    stops = by_rule.get(str(Rule.STOP_LOSS), {})
    reactive_stops = reactive["slippage_usd_by_rule"].get(str(Rule.STOP_LOSS), {})
    return {
        "cadence_seconds": cadence,
        "exits": len(decided),
        "missed": len(outcomes) - len(decided),
        "other_rule": sum(1 for o, e in decided if e.rule is not o.reactive.rule),
        "earlier_than_reactive": sum(1 for d in delays if d < 0),
        "delay_seconds": delay,
        "slippage_usd": slippage,
        "slippage_usd_by_rule": by_rule,
        "extra_slippage_usd": _summary(extra),
        "extra_slippage_usd_by_rule": _by_rule(outcomes, lambda o: o.polled[label], extra=True),
        "ratio_to_reactive": {
            "slippage_median": _ratio(slippage["median"], reactive["slippage_usd"]["median"]),
            "slippage_p95": _ratio(slippage["p95"], reactive["slippage_usd"]["p95"]),
            "stop_loss_slippage_median": _ratio(stops.get("median"), reactive_stops.get("median")),
            "stop_loss_slippage_p95": _ratio(stops.get("p95"), reactive_stops.get("p95")),
            # The reactive delay is 0 by definition, so the delay is given in reactive ticks
            # (one per second of market time) instead of as a ratio.
            "delay_median_in_ticks": delay["median"],
            "delay_p95_in_ticks": delay["p95"],
        },
        "rules": dict(Counter(str(e.rule) for _, e in decided).most_common()),
    }


def _label(cadence: int) -> str:
    return f"poll_{cadence}"


def _sentence(figures: dict[str, Any]) -> str:
    cadence = figures["cadence_seconds"]
    every = f"{cadence // 60} minutes" if cadence % 60 == 0 and cadence > 60 else f"{cadence} s"
    delay, extra = figures["delay_seconds"], figures["extra_slippage_usd"]
    stops = figures["extra_slippage_usd_by_rule"].get(str(Rule.STOP_LOSS))
    on_stops = (
        ""
        if stops is None
        else f"; on the {stops['count']} stops alone, a median ${stops['median']:.2f} "
        f"(p95 ${stops['p95']:.2f})"
    )
    return (
        f"Polling every {every} decided exits a median {delay['median']:g} s late "
        f"(p95 {delay['p95']:g} s) and gave up a median ${extra['median']:.2f} per spread "
        f"(p95 ${extra['p95']:.2f}, mean ${extra['mean']:.2f}) more than reacting to every "
        f"tick{on_stops}. It missed {figures['missed']} of "
        f"{figures['exits'] + figures['missed']} exits and took {figures['other_rule']} by "
        "a different rule."
    )


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _simulate(cases: Sequence[_Case]) -> tuple[list[_Outcome], int, Counter[str]]:
    """Every case reactively and at every cadence (with and without the plan's debounce)."""
    outcomes: list[_Outcome] = []
    no_exit = 0
    evaluations: Counter[str] = Counter()
    for case in cases:
        plan = default_plan(case.position.strategy)
        polled_plan = plan_with_overrides(plan, _NO_DEBOUNCE)
        reactive, count = _run_plan(plan, case, range(case.open_second, SESSION_SECONDS))
        evaluations["reactive"] += count
        if reactive is None:
            no_exit += 1
            continue
        polled: dict[str, _Exit | None] = {}
        for cadence in CADENCES:
            for label, chosen in ((_label(cadence), polled_plan), (f"{_label(cadence)}_d", plan)):
                polled[label], count = _run_plan(chosen, case, _poll_seconds(case, cadence))
                evaluations[label] += count
        outcomes.append(_Outcome(case, reactive, _threshold_pnl(case, reactive), polled))
    return outcomes, no_exit, evaluations


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Generate the spreads, run them at every cadence, and return the figures (JSON-able)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    cases = [_case(index, rng) for index in range(SIZES[size])]
    outcomes, no_exit, evaluations = _simulate(cases)
    reactive = _reactive_figures(outcomes)
    cadences: dict[str, Any] = {"reactive": reactive}
    debounced: dict[str, Any] = {}
    for cadence in CADENCES:
        label = _label(cadence)
        cadences[label] = _polled_figures(outcomes, label, cadence, reactive)
        same = _polled_figures(outcomes, f"{label}_d", cadence, reactive)
        debounced[label] = {
            key: same[key]
            for key in ("exits", "missed", "delay_seconds", "slippage_usd", "extra_slippage_usd")
        }
    return {
        "benchmark": "reactive_vs_polled",
        "size": size,
        "seed": seed,
        "spreads": len(cases),
        "spreads_by_strategy": dict(Counter(str(c.position.strategy) for c in cases)),
        "spreads_without_reactive_exit": no_exit,
        "evaluations": dict(evaluations),
        "cadences": cadences,
        "same_plan_debounce": debounced,
        "summary": [_sentence(cadences[_label(c)]) for c in CADENCES],
        "seconds": round(time.perf_counter() - started, 2),
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        f"{'cadence':<10}{'exits':>6}{'missed':>7}{'other':>6}"
        f"{'delay med':>10}{'delay p95':>10}{'slip med $':>11}{'slip p95 $':>11}"
    ]
    for label, figures in result["cadences"].items():
        delay, slip = figures["delay_seconds"], figures["slippage_usd"]
        rows.append(
            f"{label:<10}{figures['exits']:>6}{figures.get('missed', 0):>7}"
            f"{figures.get('other_rule', 0):>6}{delay['median']:>10g}{delay['p95']:>10g}"
            f"{slip['median']:>11.2f}{slip['p95']:>11.2f}"
        )
    return "\n".join(rows)


def _report(result: dict[str, Any]) -> list[str]:
    return [
        f"reactive_vs_polled: {result['spreads']} spreads, "
        f"{result['spreads_without_reactive_exit']} without an exit, {result['seconds']} s",
        _table(result),
        *result["summary"],
    ]


def main() -> None:
    standalone.main("reactive_vs_polled", __doc__, run, _report)


if __name__ == "__main__":
    main()
