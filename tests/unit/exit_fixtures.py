"""Shared builders for the exit-rule tests: spreads, quotes at a chosen close price, snapshots,
plans with one rule on. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from engine.domain import Leg, OptionSymbol, Side, Spread, is_credit
from engine.domain.exit_plan import ExitPlan
from engine.domain.exit_rules import (
    Evaluation,
    MarketSnapshot,
    PositionFacts,
    Rule,
    WatchState,
    evaluate,
)
from engine.domain.guards import TimedQuote

D = Decimal
NY = ZoneInfo("America/New_York")
EXP = dt.date(2025, 6, 20)
NOW = dt.datetime(2025, 6, 10, 11, 0, tzinfo=NY)  # 10 days to expiration
OPENED = dt.datetime(2025, 6, 2, 10, 0, tzinfo=NY)
HALF = D("0.50")
SPOT = D(510)  # the underlying unless a test says otherwise


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
ENTRY = {
    s.strategy: D(e)
    for s, e in [(PUT_CREDIT, "1"), (CALL_DEBIT, "2"), (CONDOR, "1.5"), (BEAR_CALL, "1")]
}


def facts(sp: Spread = PUT_CREDIT, entry: Decimal | None = None, **kw: Any) -> PositionFacts:
    """Facts of ``sp`` at its usual entry price; keyword arguments override PositionFacts
    fields (the opening quantity defaults to the current one)."""
    fields: dict[str, Any] = {"opening_quantity": sp.quantity, "opened_at": OPENED, **kw}
    return PositionFacts(
        spread=sp, entry_price=ENTRY[sp.strategy] if entry is None else entry, **fields
    )


def quotes(sp: Spread, close: Decimal, other: Decimal = HALF) -> tuple[TimedQuote, ...]:
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
    underlying: Decimal | None = SPOT,
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


def only(**fields: Any) -> ExitPlan:
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
    **kw: Any,
) -> Evaluation:
    """Evaluate one tick at the mark close price ``close``; keyword arguments go to snap()."""
    position = position or facts(sp)
    return evaluate(plan, position, state or WatchState(), snap(position.spread, close, **kw))


def fires(evaluation: Evaluation, rule: Rule) -> bool:
    return rule in evaluation.rules_fired


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0
) -> dt.datetime:
    """A New York wall-clock time."""
    return dt.datetime(year, month, day, hour, minute, sec, tzinfo=NY)


def sequence(
    plan: ExitPlan, closes: list[str], state: WatchState | None = None, **kw: Any
) -> list[Evaluation]:
    """Evaluate successive ticks at these closes, threading the state."""
    state, out = state or WatchState(), []
    for close in closes:
        out.append(run(plan, close, state=state, **kw))
        state = out[-1].new_state
    return out
