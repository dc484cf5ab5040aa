"""The New York market calendar: regular days, holidays, half days, weekends, DST, and years
outside the ones loaded."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from engine.calendar import MarketCalendar, Session

NY = ZoneInfo("America/New_York")


def ny(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=NY)


@pytest.fixture(scope="module")
def calendar() -> MarketCalendar:
    return MarketCalendar.load(dt.date(2026, 6, 1))


def test_a_regular_day_runs_from_09_30_to_16_00(calendar: MarketCalendar) -> None:
    session = calendar.session(dt.date(2026, 11, 25))
    assert session == Session(ny(2026, 11, 25, 9, 30), ny(2026, 11, 25, 16))
    assert session.open.tzinfo == dt.UTC and session.close.tzinfo == dt.UTC


@pytest.mark.parametrize(
    "day",
    [
        dt.date(2026, 11, 26),  # Thanksgiving
        dt.date(2026, 12, 25),  # Christmas
        dt.date(2026, 4, 3),  # Good Friday
        dt.date(2026, 7, 3),  # Independence Day observed (the 4th is a Saturday)
        dt.date(2026, 11, 28),  # a Saturday
        dt.date(2026, 11, 29),  # a Sunday
    ],
)
def test_no_session_on_holidays_and_weekends(calendar: MarketCalendar, day: dt.date) -> None:
    assert calendar.session(day) is None
    assert calendar.close_of(day) is None
    assert not calendar.is_open(dt.datetime.combine(day, dt.time(12), NY))


@pytest.mark.parametrize("day", [dt.date(2026, 11, 27), dt.date(2026, 12, 24), dt.date(2025, 7, 3)])
def test_half_days_close_at_13_00(calendar: MarketCalendar, day: dt.date) -> None:
    assert calendar.close_of(day) == dt.datetime.combine(day, dt.time(13), NY)
    assert calendar.is_open(dt.datetime.combine(day, dt.time(12, 59, 59), NY))
    assert not calendar.is_open(dt.datetime.combine(day, dt.time(13), NY))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (ny(2026, 11, 25, 9, 29, 59), False),
        (ny(2026, 11, 25, 9, 30), True),  # the open is in the session
        (ny(2026, 11, 25, 15, 59, 59), True),
        (ny(2026, 11, 25, 16), False),  # the close is not
        (ny(2026, 11, 25, 20), False),
    ],
)
def test_is_open_at_the_edges(
    calendar: MarketCalendar, moment: dt.datetime, expected: bool
) -> None:
    assert calendar.is_open(moment) is expected


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # Winter (EST, UTC-5): the open is 14:30 UTC; summer (EDT, UTC-4): 13:30 UTC.
        (dt.datetime(2026, 3, 6, 14, 29, tzinfo=dt.UTC), False),
        (dt.datetime(2026, 3, 6, 14, 30, tzinfo=dt.UTC), True),
        (dt.datetime(2026, 3, 6, 20, 59, tzinfo=dt.UTC), True),
        # Monday after the clocks went forward (Sunday 2026-03-08): an hour earlier in UTC.
        (dt.datetime(2026, 3, 9, 13, 30, tzinfo=dt.UTC), True),
        (dt.datetime(2026, 3, 9, 20, 0, tzinfo=dt.UTC), False),
        # Monday after they went back (Sunday 2026-11-01).
        (dt.datetime(2026, 11, 2, 13, 30, tzinfo=dt.UTC), False),
        (dt.datetime(2026, 11, 2, 14, 30, tzinfo=dt.UTC), True),
    ],
)
def test_session_hours_follow_daylight_saving(
    calendar: MarketCalendar, utc: dt.datetime, expected: bool
) -> None:
    assert calendar.is_open(utc) is expected


def test_the_new_york_date_decides_the_session(calendar: MarketCalendar) -> None:
    # 02:00 UTC on Saturday the 28th is still Friday the 27th (a half day) in New York.
    late_friday = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)
    assert calendar.session_at(late_friday) == calendar.session(dt.date(2026, 11, 27))
    assert not calendar.is_open(late_friday)
    # The answer for one day is cached; asking about another day must not reuse it.
    assert calendar.session_at(ny(2026, 11, 28, 12)) is None
    assert calendar.session_at(ny(2026, 11, 30, 12)) == calendar.session(dt.date(2026, 11, 30))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (ny(2026, 11, 25, 8, 0), ny(2026, 11, 25, 9, 30)),  # before today's open
        (ny(2026, 11, 25, 10, 0), ny(2026, 11, 27, 9, 30)),  # open now: the next one, over
        (ny(2026, 11, 27, 13, 5), ny(2026, 11, 30, 9, 30)),  # Thanksgiving, and a weekend
        (ny(2026, 12, 24, 13, 0), ny(2026, 12, 28, 9, 30)),  # Christmas and a weekend
    ],
)
def test_next_open(calendar: MarketCalendar, moment: dt.datetime, expected: dt.datetime) -> None:
    assert calendar.next_open(moment) == expected


def test_years_outside_the_loaded_ones_are_read_when_asked(calendar: MarketCalendar) -> None:
    # Loaded around 2026: 2024-2028. Thanksgiving 2035 is 22 November; the next day closes early.
    assert calendar.session(dt.date(2035, 11, 22)) is None
    assert calendar.close_of(dt.date(2035, 11, 23)) == ny(2035, 11, 23, 13)
    assert calendar.session(dt.date(2019, 7, 4)) is None
    assert calendar.close_of(dt.date(2019, 7, 3)) == ny(2019, 7, 3, 13)
