"""ExitEvaluator: one position's evaluator reused tick after tick, and its lazy volatility model
(the watcher's per-tick call) deciding exactly as the full evaluation does."""

from __future__ import annotations

import itertools

import msgspec

from engine.domain.exit_plan import default_plan
from engine.domain.exit_rules import (
    MAX_UNDERLYING_SAMPLES,
    Decision,
    Evaluation,
    ExitEvaluator,
    Rule,
    WatchState,
    evaluate,
)
from engine.domain.guards import TimedQuote
from engine.domain.strategy import Strategy
from engine.domain.volatility import bs_price, years_to_expiry
from tests.unit.exit_fixtures import EXP, NOW, PUT_CREDIT, D, facts, only, run, snap

YEARS = years_to_expiry(NOW, EXP)


def priced(vol: float, spot: float, *, crossed: bool = False) -> tuple[TimedQuote, ...]:
    """PUT_CREDIT's legs a cent either side of their Black-Scholes price at ``vol``."""
    out = []
    for one in PUT_CREDIT.legs:
        value = D(repr(bs_price(one.symbol.right, spot, one.symbol.strike, YEARS, vol, 0.04)))
        mid = value.quantize(D("0.01"))
        bid, ask = (mid + D("0.02"), mid) if crossed else (mid - D("0.01"), mid + D("0.01"))
        out.append(TimedQuote(bid=max(bid, D(0)), ask=ask))
    return tuple(out)


def decided(evaluation: Evaluation) -> Evaluation:
    """The evaluation without what only a record reads from the model."""
    assert evaluation.metrics is not None
    metrics = msgspec.structs.replace(evaluation.metrics, short_iv=None, short_delta=None)
    return msgspec.structs.replace(evaluation, metrics=metrics, notes=())


def test_the_lazy_model_decides_exactly_as_the_full_one() -> None:
    plan = default_plan(Strategy.BULL_PUT_CREDIT)  # IV crush on, at 15 % profit and 0.85
    position = facts(PUT_CREDIT, D("1.20"))
    evaluator = ExitEvaluator(plan, position)
    state, skipped, crushed = WatchState(), 0, 0
    # Volatility falling then rising while the underlying wanders: the trade goes from a loss
    # through the crush's minimum profit and back; every fourth tick is crossed (guarded).
    ticks = zip(
        itertools.chain(
            [0.45, 0.45], [0.45 - 0.02 * i for i in range(18)], [0.2 + 0.03 * i for i in range(10)]
        ),
        itertools.cycle([505.0, 508.0, 512.0, 515.0, 510.0]),
        strict=False,
    )
    for index, (vol, spot) in enumerate(ticks):
        shown = snap(
            PUT_CREDIT,
            "0",
            legs=priced(vol, spot, crossed=index % 4 == 3),
            underlying=D(repr(spot)),
            t=float(index),
        )
        full = evaluator.evaluate(state, shown)
        lazy = evaluator.evaluate(state, shown, lazy_model=True)
        assert decided(lazy) == decided(full)
        assert full == evaluate(plan, position, state, shown)
        assert lazy.metrics is not None and full.metrics is not None
        skipped += lazy.metrics.short_iv is None and full.metrics.short_iv is not None
        crushed += lazy.rule is Rule.IV_CRUSH
        state = full.new_state
    assert state.entry_iv is not None  # captured on the first clean tick, lazily too
    assert skipped > 0 and crushed > 0  # the model was both skipped and deciding


def test_the_lazy_model_runs_whenever_the_delta_rule_is_on() -> None:
    plan = only(short_delta_max=D("0.99"))
    shown = snap(PUT_CREDIT, "0", legs=priced(0.3, 510.0))
    lazy = ExitEvaluator(plan, facts(PUT_CREDIT, D("5"))).evaluate(
        WatchState(entry_iv=D("0.3")), shown, lazy_model=True
    )
    assert lazy.metrics is not None and lazy.metrics.short_delta is not None


def test_the_lazy_model_waits_for_the_crush_minimum_once_the_entry_iv_is_known() -> None:
    plan = only(iv_crush_ratio=D("0.85"), iv_crush_min_profit=D("0.15"))
    shown = snap(PUT_CREDIT, "0", legs=priced(0.3, 510.0))
    state = WatchState(entry_iv=D("0.3"))
    losing = ExitEvaluator(plan, facts(PUT_CREDIT, D("0.10")))
    winning = ExitEvaluator(plan, facts(PUT_CREDIT, D("4.00")))
    for evaluator, expect_model in ((losing, False), (winning, True)):
        lazy = evaluator.evaluate(state, shown, lazy_model=True)
        assert lazy.metrics is not None and (lazy.metrics.short_iv is not None) is expect_model
        full = evaluator.evaluate(state, shown)
        assert full.metrics is not None and full.metrics.short_iv is not None


def test_a_rule_the_plan_turns_off_is_not_asked() -> None:
    on = run(only(profit_target=D("0.5"), low_value_price=D("0.5")), "0.05")
    assert on.rules_fired == (Rule.PROFIT_TARGET, Rule.LOW_VALUE)
    off = run(only(profit_target=D("0.5")), "0.05")
    assert (off.decision, off.rules_fired) == (Decision.EXIT, (Rule.PROFIT_TARGET,))


def test_spike_samples_keep_the_newest_inside_the_window() -> None:
    plan = only(underlying_spike_fraction=D("0.01"), underlying_spike_seconds=D(60))
    state = WatchState()
    for i in range(MAX_UNDERLYING_SAMPLES + 100):
        state = run(plan, "1", state=state, underlying=D(500 + i), t=i * 0.01).new_state
    samples = state.underlying_samples
    assert len(samples) == MAX_UNDERLYING_SAMPLES
    assert samples[0] == (100 * 0.01, D(600)) and samples[-1][1] == D(500 + 611)
    # 70 s later, the samples older than 60 s before the tick are gone, the rest kept in order.
    later = state
    for t in (70.0, 100.0, 135.0):
        later = run(plan, "1", state=later, underlying=D(700), t=t).new_state
    assert later.underlying_samples == ((100.0, D(700)), (135.0, D(700)))
