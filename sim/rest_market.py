"""``/v1/markets/...``: quotes, chains, expirations, strikes, clock, calendar, stream sessions.

Market hours follow Tradier's clock states on every weekday (no holidays are modelled):
premarket 04:00-09:30, open 09:30-16:00, postmarket 16:00-20:00 Eastern, closed otherwise.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from sim.asgi import Request, Response, Router, json_response, text_response
from sim.scenario import EASTERN
from sim.state import Simulator
from sim.wire import collapse, quote_record

__all__ = ["add_market_routes", "market_state"]

_SESSIONS = [
    (dt.time(4, 0), "premarket"),
    (dt.time(9, 30), "open"),
    (dt.time(16, 0), "postmarket"),
    (dt.time(20, 0), "closed"),
]
_DESCRIPTIONS = {
    "premarket": "Market is in premarket from 04:00 to 09:30",
    "open": "Market is open from 09:30 to 16:00",
    "postmarket": "Market is in postmarket from 16:00 to 20:00",
    "closed": "Market is closed",
}


def market_state(moment: dt.datetime) -> tuple[str, str, str]:
    """(state, next_change "HH:MM", next_state) at ``moment``."""
    local = moment.astimezone(EASTERN)
    if local.weekday() >= 5:
        return "closed", "04:00", "premarket"
    state = "closed"
    for start, name in _SESSIONS:
        if local.time() >= start:
            state = name
    for start, name in _SESSIONS:
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
        state, next_change, next_state = market_state(now)
        return json_response({"clock": {
            "date": now.astimezone(EASTERN).date().isoformat(),
            "description": _DESCRIPTIONS[state],
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
        days = [_calendar_day(dt.date(year, month, d)) for d in range(1, days_in_month + 1)]
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


def _calendar_day(day: dt.date) -> dict[str, Any]:
    if day.weekday() >= 5:
        return {"date": day.isoformat(), "status": "closed", "description": "Market is closed"}
    return {
        "date": day.isoformat(),
        "status": "open",
        "description": "Market is open",
        "premarket": {"start": "04:00", "end": "09:30"},
        "open": {"start": "09:30", "end": "16:00"},
        "postmarket": {"start": "16:00", "end": "20:00"},
    }


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None
