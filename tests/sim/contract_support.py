"""Support for the contract tests: a fast scenario, a simulator on real sockets, and checks
written from ``shared/reference/tradier-api.md`` (not from the simulator's own output).

The contract tests run on the real clock (real sockets), so the scenario runs at a high speed
with fast model ticks: an order placed now is open and filled within a few ticks.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from sim.scenario import parse_scenario
from sim.server import SimHandle, serve_simulator

__all__ = [
    "ACCOUNT",
    "CALL_700",
    "PUT_645",
    "PUT_650",
    "PUT_655",
    "TOKEN",
    "account_stream",
    "client",
    "contract_sim",
    "frames_until",
    "is_epoch_ms_text",
    "is_iso_utc",
    "is_json_number",
    "is_occ",
    "order_by_id",
    "scenario_text",
    "session_id",
]

TOKEN = "contract-token"
ACCOUNT = "VA0CONTRACT"
PUT_650 = "SPY251219P00650000"
PUT_645 = "SPY251219P00645000"
PUT_655 = "SPY251219P00655000"
CALL_700 = "SPY251219C00700000"

# Tradier's OCC form: root, YYMMDD, C|P, strike x 1000 in 8 digits, root not space-padded.
_OCC = re.compile(r"^[A-Z0-9]{1,6}\d{6}[CP]\d{8}$")
_ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")

_TEMPLATE = """
name = "contract"
start = 2025-12-09T09:45:00
speed = {speed}
duration = "2h"
seed = 11
token = "{token}"
account_id = "{account}"

[market]
tick_interval_ms = 20
quote_interval_ms = 0

[broker]
cash = "10000"
fill_lot = 0
rate_limits = {rate_limits}

[[underlyings]]
symbol = "SPY"
volatility = 0.2
expirations = [2025-12-19, 2026-01-16]
strikes = {{ low = 640, high = 700, step = 5 }}
path = {{ kind = "keyframes", points = [
    {{ at = "0s", price = 680.0 }}, {{ at = "2h", price = 700.0 }}] }}

[[underlyings]]
symbol = "QQQ"
volatility = 0.25
expirations = [2025-12-19]
strikes = {{ low = 600, high = 620, step = 5 }}
path = {{ kind = "keyframes", points = [
    {{ at = "0s", price = 610.0 }}, {{ at = "2h", price = 590.0 }}] }}
{positions}
"""

_SPREAD_HELD = f"""
[[positions]]
symbol = "{PUT_650}"
quantity = -2
cost_basis = "-300.00"

[[positions]]
symbol = "{PUT_645}"
quantity = 2
cost_basis = "200.00"
"""

_BIG_LIMITS = "{ standard = 100000, market_data = 100000, trading = 100000 }"


def scenario_text(*, speed: float = 60.0, rate_limits: str = _BIG_LIMITS,
                  positions: str = _SPREAD_HELD) -> str:
    return _TEMPLATE.format(speed=speed, token=TOKEN, account=ACCOUNT,
                            rate_limits=rate_limits, positions=positions)


async def contract_sim(nursery: trio.Nursery, text: str | None = None,
                       **serve_kwargs: Any) -> SimHandle:
    scenario = parse_scenario(text if text is not None else scenario_text(),
                              source="contract.toml")
    handle: SimHandle = await nursery.start(partial(serve_simulator, **serve_kwargs), scenario)
    return handle


@asynccontextmanager
async def client(handle: SimHandle, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that sends what the reference says every request sends."""
    base = {"Authorization": f"Bearer {handle.token}", "Accept": "application/json"}
    base.update(headers)
    async with httpx.AsyncClient(base_url=handle.rest_url, headers=base,
                                 timeout=10.0) as http:
        yield http


async def session_id(http: httpx.AsyncClient, kind: str) -> str:
    answer = await http.post(f"/{kind}/events/session", headers={"Content-Length": "0"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["stream"]["sessionid"])


async def frames_until(ws: WebSocketConnection, done: Callable[[dict[str, Any]], bool]
                       ) -> tuple[list[str], list[dict[str, Any]]]:
    """Raw frames and decoded events (newline-separated within a frame) until ``done``."""
    frames: list[str] = []
    events: list[dict[str, Any]] = []
    while True:
        frame = await ws.get_message()
        assert isinstance(frame, str)
        frames.append(frame)
        for line in frame.split("\n"):
            event = json.loads(line)
            events.append(event)
            if done(event):
                return frames, events


@asynccontextmanager
async def account_stream(http: httpx.AsyncClient, handle: SimHandle, events: list[str]
                         ) -> AsyncIterator[WebSocketConnection]:
    session = await session_id(http, "accounts")
    async with open_websocket_url(handle.account_ws_url) as ws:
        await ws.send_message(json.dumps({"events": events, "sessionid": session,
                                          "excludeAccounts": []}))
        yield ws


def order_by_id(listing: Any, order_id: int) -> dict[str, Any]:
    orders = listing["orders"]["order"]
    for order in orders if isinstance(orders, list) else [orders]:
        if order["id"] == order_id:
            return dict(order)
    raise AssertionError(f"order {order_id} not listed")


def is_json_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_epoch_ms_text(value: object) -> bool:
    # 13 digits: milliseconds since the epoch for any date in 2001..2286.
    return isinstance(value, str) and value.isdigit() and len(value) == 13


def is_iso_utc(value: object) -> bool:
    if not isinstance(value, str) or not _ISO_UTC.match(value):
        return False
    dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def is_occ(value: object) -> bool:
    return isinstance(value, str) and " " not in value and bool(_OCC.match(value))
