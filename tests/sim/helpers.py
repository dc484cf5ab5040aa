"""Shared helpers for the simulator's tests: start a simulator from TOML text, talk to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from sim.scenario import parse_scenario
from sim.server import SimHandle, serve_simulator

__all__ = [
    "BASE",
    "SPY_PUT_645",
    "SPY_PUT_650",
    "account_socket",
    "api",
    "market_socket",
    "messages_until",
    "start_sim",
]

SPY_PUT_650 = "SPY251219P00650000"
SPY_PUT_645 = "SPY251219P00645000"

# A small, fully specified market: SPY on keyframes, a put credit spread held.
BASE = """
name = "test"
start = 2025-12-09T09:45:00
speed = 1.0
duration = "30m"
seed = 1
token = "t0ken"
account_id = "VA1"

[market]
tick_interval_ms = 100
quote_interval_ms = 0

[broker]
cash = "10000"
{broker}

[[underlyings]]
symbol = "SPY"
volatility = 0.2
expirations = [2025-12-19]
strikes = {{ low = 640, high = 660, step = 5 }}
path = {{ kind = "keyframes", points = [{points}] }}

[[positions]]
symbol = "SPY251219P00650000"
quantity = -2
cost_basis = "-300.00"

[[positions]]
symbol = "SPY251219P00645000"
quantity = 2
cost_basis = "200.00"
{extra}
"""

FLAT = '{ at = "0s", price = 680.0 }'


def scenario_text(*, points: str = FLAT, broker: str = "", extra: str = "") -> str:
    return BASE.format(points=points, broker=broker, extra=extra)


async def start_sim(nursery: trio.Nursery, text: str | None = None, **kwargs: Any) -> SimHandle:
    scenario = parse_scenario(text if text is not None else scenario_text(**kwargs),
                              source="test.toml")
    handle: SimHandle = await nursery.start(serve_simulator, scenario)
    return handle


@asynccontextmanager
async def api(handle: SimHandle, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    base = {"Authorization": f"Bearer {handle.token}", "Accept": "application/json"}
    base.update(headers)
    async with httpx.AsyncClient(base_url=handle.rest_url, headers=base, timeout=None) as client:
        yield client


async def _session(handle: SimHandle, kind: str) -> str:
    async with api(handle) as client:
        answer = await client.post(f"/{kind}/events/session")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["stream"]["sessionid"])


@asynccontextmanager
async def market_socket(handle: SimHandle, symbols: list[str], *, session: str | None = None,
                        **payload: Any) -> AsyncIterator[WebSocketConnection]:
    sessionid = session or await _session(handle, "markets")
    async with open_websocket_url(handle.market_ws_url) as ws:
        await ws.send_message(json.dumps({"symbols": symbols, "sessionid": sessionid,
                                          **payload}))
        yield ws


@asynccontextmanager
async def account_socket(handle: SimHandle, *, events: tuple[str, ...] = ("order",)
                         ) -> AsyncIterator[WebSocketConnection]:
    sessionid = await _session(handle, "accounts")
    async with open_websocket_url(handle.account_ws_url) as ws:
        await ws.send_message(json.dumps({"events": list(events), "sessionid": sessionid,
                                          "excludeAccounts": []}))
        yield ws


async def messages_until(ws: WebSocketConnection, predicate: Any) -> list[dict[str, Any]]:
    """Decode events (one or more per frame) until ``predicate(event)`` holds; all seen."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await ws.get_message()
        for line in str(frame).split("\n"):
            event = json.loads(line)
            seen.append(event)
            if predicate(event):
                return seen
