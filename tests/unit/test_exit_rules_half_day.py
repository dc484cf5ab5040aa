"""The expiration-day cutoff moves with an early close: it keeps its distance before the close
(15:50 on a 16:00 day is 12:50 on a 13:00 half day), read from the snapshot's session close."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from engine.calendar import MarketCalendar
from engine.domain.exit_plan import ExitPlan, default_plan
from engine.domain.exit_rules import (
    Decision,
    PositionFacts,
    Rule,
    WatchState,
    evaluate,
    replay,
)
from engine.domain.strategy import Strategy
from tests.unit.exit_fixtures import D, facts, fires, ny, only, snap, spread

HALF_DAY = dt.date(2026, 11, 27)  # the day after Thanksgiving: XNYS closes at 13:00
EXPIRING = spread("-500P", "+495P", expiration=HALF_DAY)
POSITION = facts(EXPIRING, D("1.00"), opened_at=ny(2026, 11, 20, 10, 0))
DTE = only(dte_exit_days=2)


def _fires(
    at: dt.datetime,
    close: dt.datetime | None,
    plan: ExitPlan = DTE,
    position: PositionFacts = POSITION,
) -> bool:
    snapshot = msgspec.structs.replace(snap(position.spread, "0.8", at=at), session_close=close)
    return fires(evaluate(plan, position, WatchState(), snapshot), Rule.EXPIRATION_DAY)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (ny(2026, 11, 27, 12, 49, 59), False),
        (ny(2026, 11, 27, 12, 50), True),  # ten minutes before the 13:00 close
        (ny(2026, 11, 27, 12, 59), True),
    ],
)
def test_on_a_half_day_the_cutoff_is_ten_minutes_before_the_early_close(
    at: dt.datetime, expected: bool
) -> None:
    assert _fires(at, ny(2026, 11, 27, 13)) is expected


@pytest.mark.parametrize(
    ("at", "expected"), [(ny(2026, 11, 25, 15, 49, 59), False), (ny(2026, 11, 25, 15, 50), True)]
)
def test_on_a_regular_day_the_cutoff_is_the_plans(at: dt.datetime, expected: bool) -> None:
    assert _fires(at, ny(2026, 11, 25, 16)) is expected


def test_a_half_day_before_expiration_moves_the_cutoff_too() -> None:
    later = spread("-500P", "+495P", expiration=dt.date(2026, 11, 30))  # 3 calendar days on
    position = facts(later, D("1.00"), opened_at=ny(2026, 11, 20, 10, 0))
    plan = only(dte_exit_days=3)
    close = ny(2026, 11, 27, 13)
    assert not _fires(ny(2026, 11, 27, 12, 49), close, plan, position)
    assert _fires(ny(2026, 11, 27, 12, 50), close, plan, position)


def test_other_cutoffs_keep_their_distance_from_the_close() -> None:
    close = ny(2026, 11, 27, 13)
    # "00:00" means any hour of the day: still any hour on a half day.
    any_hour = only(dte_exit_days=0, dte_exit_time=dt.time(0, 0))
    assert _fires(ny(2026, 11, 27, 0, 0), close, any_hour)
    # 14:00 is two hours before a regular close: 11:00 on a half day.
    early = only(dte_exit_days=0, dte_exit_time=dt.time(14, 0))
    assert not _fires(ny(2026, 11, 27, 10, 59), close, early)
    assert _fires(ny(2026, 11, 27, 11, 0), close, early)


def test_without_a_session_close_the_plans_time_stands() -> None:
    # No calendar (or a day without a session): 15:50 as written, even on that date.
    assert not _fires(ny(2026, 11, 27, 12, 50), None)
    assert _fires(ny(2026, 11, 27, 15, 50), None)


def test_the_default_plan_with_the_real_calendar_exits_at_12_50() -> None:
    calendar = MarketCalendar.load(HALF_DAY)
    close = calendar.close_of(HALF_DAY)
    assert close == ny(2026, 11, 27, 13)
    plan = default_plan(Strategy.BULL_PUT_CREDIT)
    # The mark at 0.80 on a 1.00 credit: no stop, no target; only time can decide.
    before = _fires(ny(2026, 11, 27, 12, 49, 59), close, plan)
    at = msgspec.structs.replace(
        snap(EXPIRING, "0.8", at=ny(2026, 11, 27, 12, 50)), session_close=close
    )
    result = evaluate(plan, POSITION, WatchState(), at)
    assert not before
    assert result.decision is Decision.EXIT and result.rule is Rule.EXPIRATION_DAY
    # The close is an input of the decision: a replay of the record decides the same.
    replayed = replay(msgspec.json.decode(msgspec.json.encode(result.to_record())))
    assert replayed.rule is Rule.EXPIRATION_DAY
    assert replayed.inputs.snapshot.session_close == close
