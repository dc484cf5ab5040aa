"""``/v1/markets/...``: quotes, chains, expirations, strikes, clock, calendar, stream sessions.

Market hours follow Tradier's clock states on every New York trading day of the engine's
calendar (:mod:`engine.calendar`): premarket 04:00 to the open, open 09:30-16:00 (to 13:00 on a
half day), postmarket for four hours after the close; closed otherwise, and all day on weekends
and exchange holidays.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
from typing import Any

from engine.calendar import MarketCalendar
from sim.asgi import Request, Response, Router, json_response, text_response
from sim.scenario import EASTERN
from sim.state import Simulator
from sim.wire import collapse, quote_record

__all__ = ["add_market_routes", "market_state"]

_PREMARKET = dt.time(4, 0)
_POSTMARKET = dt.timedelta(hours=4)


def _states(day: dt.date, calendar: MarketCalendar) -> list[tuple[dt.time, str]] | None:
    """The day's state changes (Eastern start, state), or None on a day without a session."""
    session = calendar.session(day)
    if session is None:
        return None
    opens, closes = session.open.astimezone(EASTERN), session.close.astimezone(EASTERN)
    return [
        (_PREMARKET, "premarket"),
        (opens.time(), "open"),
        (closes.time(), "postmarket"),
        ((closes + _POSTMARKET).time(), "closed"),
    ]


def _description(state: str, states: list[tuple[dt.time, str]] | None) -> str:
    if state == "closed" or states is None:
        return "Market is closed"
    bounds = {name: (start, end) for (start, name), (end, _) in itertools.pairwise(states)}
    start, end = bounds[state]
    where = "open" if state == "open" else f"in {state}"
    return f"Market is {where} from {start:%H:%M} to {end:%H:%M}"


def market_state(moment: dt.datetime, calendar: MarketCalendar) -> tuple[str, str, str]:
    """(state, next_change "HH:MM", next_state) at ``moment``."""
    local = moment.astimezone(EASTERN)
    states = _states(local.date(), calendar)
    if states is None:
        return "closed", "04:00", "premarket"
    state = "closed"
    for start, name in states:
        if local.time() >= start:
            state = name
    for start, name in states:
        if local.time() < start:
            return state, start.strftime("%H:%M"), name
    return state, "04:00", "premarket"


def add_market_routes(router: Router, sim: Simulator) -> None:
    market = sim.market

    def symbols_of(request: Request) -> list[str]:
        raw = request.param("symbols") or request.param("symbol") or ""
        return [s.strip() for s in raw.split(",") if s.strip()]

    async def quotes(request: Request) -> Response:
        with_greeks = request.flag("greeks")
        found, unmatched = [], []
        for symbol in symbols_of(request):
            record = quote_record(market, symbol, with_greeks)
            (found.append(record) if record is not None else unmatched.append(symbol))
        body: dict[str, Any] = {}
        if found:
            body["quote"] = collapse(found, None)
        if unmatched:
            body["unmatched_symbols"] = {"symbol": collapse(unmatched, None)}
        return json_response({"quotes": body or None})

    async def chains(request: Request) -> Response:
        symbol, expiration = request.param("symbol"), _date(request.param("expiration"))
        if not symbol or expiration is None:
            return text_response("Invalid Parameter: symbol and expiration are required", 400)
        with_greeks = request.flag("greeks")
        records = [quote_record(market, s, with_greeks) for s in market.chain(symbol, expiration)]
        options = [r for r in records if r is not None]
        return json_response({"options": {"option": collapse(options, None)} if options else None})

    async def expirations(request: Request) -> Response:
        symbol = request.param("symbol") or ""
        dates = market.expirations(symbol)
        if not dates:
            return json_response({"expirations": None})
        if request.flag("strikes"):
            underlying = market.underlying(symbol)
            assert underlying is not None
            strikes = underlying.strike_list()
            items = [{"date": d.isoformat(), "strikes": {"strike": strikes}} for d in dates]
            return json_response({"expirations": {"expiration": collapse(items, None)}})
        return json_response({"expirations": {"date": collapse([d.isoformat() for d in dates],
                                                               None)}})

    async def strikes(request: Request) -> Response:
        underlying = market.underlying(request.param("symbol") or "")
        expiration = _date(request.param("expiration"))
        if underlying is None or expiration not in underlying.expirations:
            return json_response({"strikes": None})
        return json_response({"strikes": {"strike": collapse(underlying.strike_list(), None)}})

    async def clock(request: Request) -> Response:
        now = sim.clock.now()
        state, next_change, next_state = market_state(now, market.calendar)
        today = now.astimezone(EASTERN).date()
        return json_response({"clock": {
            "date": today.isoformat(),
            "description": _description(state, _states(today, market.calendar)),
            "state": state,
            "timestamp": int(now.timestamp()),
            "next_change": next_change,
            "next_state": next_state,
        }})

    async def calendar_(request: Request) -> Response:
        today = sim.clock.now().astimezone(EASTERN).date()
        try:
            month = int(request.param("month") or today.month)
            year = int(request.param("year") or today.year)
            days_in_month = calendar.monthrange(year, month)[1]
        except (ValueError, calendar.IllegalMonthError):
            return text_response("Invalid Parameter: month/year", 400)
        days = [_calendar_day(dt.date(year, month, d), market.calendar)
                for d in range(1, days_in_month + 1)]
        return json_response({"calendar": {"month": month, "year": year,
                                           "days": {"day": days}}})

    async def market_session(request: Request) -> Response:
        session_id = sim.sessions.create("market")
        # Tradier answers its HTTP-streaming URL here; ours names this host's stream path.
        host = request.headers.get("host", "127.0.0.1")
        return json_response({"stream": {"url": f"http://{host}/v1/markets/events",
                                         "sessionid": session_id}})

    for method in ("GET", "POST"):
        router.add(method, "/v1/markets/quotes", quotes)
    router.add("GET", "/v1/markets/options/chains", chains)
    router.add("GET", "/v1/markets/options/expirations", expirations)
    router.add("GET", "/v1/markets/options/strikes", strikes)
    router.add("GET", "/v1/markets/clock", clock)
    router.add("GET", "/v1/markets/calendar", calendar_)
    router.add("POST", "/v1/markets/events/session", market_session)


def _calendar_day(day: dt.date, calendar: MarketCalendar) -> dict[str, Any]:
    states = _states(day, calendar)
    if states is None:
        return {"date": day.isoformat(), "status": "closed", "description": "Market is closed"}
    (pre, _), (opens, _), (closes, _), (post_end, _) = states
    return {
        "date": day.isoformat(),
        "status": "open",
        "description": "Market is open",
        "premarket": {"start": f"{pre:%H:%M}", "end": f"{opens:%H:%M}"},
        "open": {"start": f"{opens:%H:%M}", "end": f"{closes:%H:%M}"},
        "postmarket": {"start": f"{closes:%H:%M}", "end": f"{post_end:%H:%M}"},
    }


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None
