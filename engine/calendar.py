"""The New York market calendar: session hours, exchange holidays and half days.

The sessions come from ``exchange_calendars`` (the XNYS calendar), read once when the calendar
is loaded and kept as plain Python data (date -> :class:`Session`, UTC-aware datetimes), so a
query on the tick path is a dict lookup and never touches pandas. Why that library rather than
the broker's ``/v1/markets/calendar`` endpoint: it is maintained (holiday rules and the
exchange's ad hoc closings are updated in its releases), it has early closes (13:00 on the day
after Thanksgiving, Christmas Eve...) and late opens, it works before any broker is configured
and in every test without a network, and the simulator and the engine then agree by
construction. The broker's endpoint would need a token, a month-by-month cache and a fallback
for when it is down.

Days outside the loaded years are read from the library when first asked for (once per year;
the only time a query touches pandas), so a long-running engine never runs off the end.

``exchange_calendars`` imports pandas (a third of a second): it is imported only when a
calendar is loaded, never when the CLI starts.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from typing import Final
from zoneinfo import ZoneInfo

import msgspec

__all__ = ["REGULAR_CLOSE", "REGULAR_OPEN", "MarketCalendar", "Session"]

REGULAR_OPEN: Final = dt.time(9, 30)
REGULAR_CLOSE: Final = dt.time(16, 0)
"""The regular session's hours in New York; a half day closes earlier (13:00)."""

_NEW_YORK: Final = ZoneInfo("America/New_York")
_EXCHANGE: Final = "XNYS"
_YEARS_AROUND: Final = 2  # years loaded on each side of the year the calendar is loaded around
_WEEK: Final = 10  # days looked ahead for the next session (the longest closure is 4 days)


class Session(msgspec.Struct, frozen=True):
    """One trading day's regular session, both ends timezone-aware (UTC)."""

    open: dt.datetime
    close: dt.datetime

    def contains(self, moment: dt.datetime) -> bool:
        return self.open <= moment < self.close


class MarketCalendar:
    """New York sessions by date. Invariant: every date of every year in ``_years`` that is
    a trading day is in ``_sessions``; a date of a loaded year absent from it has no session."""

    def __init__(self, sessions: dict[dt.date, Session], years: set[int]) -> None:
        self._sessions = sessions
        self._years = years
        # The New York day of the last query, as UTC bounds, and its session: the tick path
        # asks about the same day over and over, so it costs two comparisons.
        self._day_bounds: tuple[dt.datetime, dt.datetime] | None = None
        self._day_session: Session | None = None

    @classmethod
    def load(cls, around: dt.datetime | dt.date) -> MarketCalendar:
        """The calendar for the years around ``around`` (market time: the simulator's date,
        not the wall clock's, in simulation). Blocking for a fraction of a second the first
        time in a process; run it in a thread from async code."""
        year = around.year
        years = set(range(year - _YEARS_AROUND, year + _YEARS_AROUND + 1))
        return cls(dict(_read_sessions(min(years), max(years))), years)

    # -- queries ----------------------------------------------------------------------------

    def session(self, day: dt.date) -> Session | None:
        """The session of a New York date, or None on a weekend or holiday."""
        if day.year not in self._years:
            self._load_year(day.year)
        return self._sessions.get(day)

    def session_at(self, moment: dt.datetime) -> Session | None:
        """The session of ``moment``'s New York date (open or not at that instant)."""
        bounds = self._day_bounds
        if bounds is not None and bounds[0] <= moment < bounds[1]:
            return self._day_session
        day = moment.astimezone(_NEW_YORK).date()
        start = dt.datetime.combine(day, dt.time(0), _NEW_YORK).astimezone(dt.UTC)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), _NEW_YORK)
        self._day_bounds = (start, end.astimezone(dt.UTC))
        self._day_session = self.session(day)
        return self._day_session

    def is_open(self, moment: dt.datetime) -> bool:
        """Whether the regular session is open at ``moment`` (open inclusive, close exclusive)."""
        session = self.session_at(moment)
        return session is not None and session.contains(moment)

    def close_of(self, day: dt.date) -> dt.datetime | None:
        """When the session of a New York date closes (UTC), or None when there is none."""
        session = self.session(day)
        return None if session is None else session.close

    def next_open(self, moment: dt.datetime) -> dt.datetime:
        """The first session open strictly after ``moment`` (UTC)."""
        day = moment.astimezone(_NEW_YORK).date()
        for offset in range(_WEEK):
            session = self.session(day + dt.timedelta(days=offset))
            if session is not None and session.open > moment:
                return session.open
        raise LookupError(f"no {_EXCHANGE} session within {_WEEK} days after {moment}")

    def _load_year(self, year: int) -> None:
        self._sessions.update(_read_sessions(year, year))
        self._years.add(year)


@functools.cache
def _read_sessions(first_year: int, last_year: int) -> tuple[tuple[dt.date, Session], ...]:
    """Every session of the years from the library; cached, so the engine and the simulator
    in one process (the tests) read them once."""
    import exchange_calendars  # pandas: imported only here (CLI import time)

    with warnings.catch_warnings():
        # The library's own use of a pandas API deprecated in pandas 3.1: not ours to fix.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        calendar = exchange_calendars.get_calendar(
            _EXCHANGE, start=f"{first_year}-01-01", end=f"{last_year}-12-31"
        )
    schedule = calendar.schedule
    days = [stamp.date() for stamp in schedule.index]
    opens = [stamp.to_pydatetime() for stamp in schedule["open"]]
    closes = [stamp.to_pydatetime() for stamp in schedule["close"]]
    return tuple(
        (day, Session(opened.astimezone(dt.UTC), closed.astimezone(dt.UTC)))
        for day, opened, closed in zip(days, opens, closes, strict=True)
    )
