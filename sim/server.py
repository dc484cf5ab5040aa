"""The simulator's server: one port for REST (``/v1``), both WebSockets and ``/sim`` control.

Hypercorn's trio worker speaks HTTP/1.1 and WebSocket; the ASGI app below routes on method and
path. Every ``/v1`` request goes through the same gate, in this order:

1. ``Authorization: Bearer <scenario token>``, else 401 with Tradier's JSON fault;
2. ``Accept`` must include ``application/json`` (Tradier would answer XML): else 406 text;
3. the route (404 / 405 plain text);
4. the rate-limit group (standard / market data / trading), 60 s windows of market time from
   the first request; ``X-Ratelimit-*`` headers on every answer; 429 with a JSON fault when
   the window is used up;
5. injected latency, then injected HTTP errors (optionally after the request took effect).
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from sim.asgi import (
    Receive,
    Request,
    Response,
    Router,
    Send,
    json_response,
    read_request,
    send_response,
    text_response,
)
from sim.broker import Broker
from sim.clock import SimClock
from sim.control import add_control_routes
from sim.faults import Faults
from sim.market import Market
from sim.rest_account import add_account_routes
from sim.rest_market import add_market_routes
from sim.scenario import RateLimits, Scenario
from sim.state import HEARTBEAT_INTERVAL, Simulator

__all__ = ["RateLimiter", "SimHandle", "make_app", "serve_simulator"]

_WINDOW = 60.0  # market seconds


@dataclasses.dataclass(frozen=True)
class SimHandle:
    """What ``serve_simulator`` hands its starter: URLs, credentials and the live parts."""

    port: int
    base_url: str
    rest_url: str
    market_ws_url: str
    account_ws_url: str
    token: str
    account_id: str
    simulator: Simulator
    clock: SimClock
    market: Market
    broker: Broker
    faults: Faults


class RateLimiter:
    """Per-group request windows. A window opens at the group's first request and lasts
    60 market seconds; ``X-Ratelimit-Expiry`` is its end in market epoch milliseconds."""

    def __init__(self, limits: RateLimits | None, clock: SimClock) -> None:
        self._limits = limits
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, group: str) -> tuple[bool, list[tuple[str, str]]]:
        if self._limits is None:
            return True, []
        allowed = int(getattr(self._limits, group))
        now = self._clock.elapsed()
        start, used = self._windows.get(group, (now, 0))
        if now - start >= _WINDOW:
            start, used = now, 0
        ok = used < allowed
        if ok:
            used += 1
        self._windows[group] = (start, used)
        expiry = int((self._clock.start.timestamp() + start + _WINDOW) * 1000)
        return ok, [
            ("X-Ratelimit-Allowed", str(allowed)),
            ("X-Ratelimit-Used", str(used)),
            ("X-Ratelimit-Available", str(max(0, allowed - used))),
            ("X-Ratelimit-Expiry", str(expiry)),
        ]


def _group(request: Request, account_id: str) -> str:
    if request.path.startswith("/v1/markets/"):
        return "market_data"
    if request.method != "GET" and request.path.startswith(f"/v1/accounts/{account_id}/orders"):
        return "trading"
    return "standard"


def _fault(status: int, text: str, code: str) -> Response:
    return json_response({"fault": {"faultstring": text, "detail": {"errorcode": code}}},
                         status)


def make_app(sim: Simulator) -> Any:
    """The ASGI application for ``sim``."""
    api, control = Router(), Router()
    add_market_routes(api, sim)
    add_account_routes(api, sim)
    add_control_routes(control, sim)
    limiter = RateLimiter(sim.scenario.broker.limits(), sim.clock)
    token = f"Bearer {sim.scenario.token}"

    async def handle_api(request: Request) -> Response:
        if request.headers.get("authorization") != token:
            return _fault(401, "Invalid Access Token",
                          "keymanagement.service.invalid_access_token")
        if "application/json" not in request.headers.get("accept", ""):
            return text_response("Not Acceptable: the simulator answers JSON only; send "
                                 "Accept: application/json", 406)
        found = api.match(request.method, request.path)
        if isinstance(found, int):
            return text_response("Not Found" if found == 404 else "Method Not Allowed", found)
        handler, request.path_params = found
        ok, headers = limiter.take(_group(request, sim.scenario.account_id))
        if not ok:
            response = _fault(429, "Rate limit quota violation",
                              "policies.ratelimit.QuotaViolation")
        else:
            delay = sim.faults.latency(request.path)
            if delay:
                await trio.sleep(delay)
            injected = sim.faults.http_fault(request.method, request.path)
            if injected is None:
                response = await handler(request)
            else:
                if injected.apply:
                    await handler(request)
                text = "Datastore Error" if injected.status >= 500 else "Injected error"
                response = _fault(injected.status, text, "sim.injected_error")
        response.headers.extend(headers)
        return response

    async def handle_control(request: Request) -> Response:
        found = control.match(request.method, request.path)
        if isinstance(found, int):
            return text_response("Not Found" if found == 404 else "Method Not Allowed", found)
        handler, request.path_params = found
        return await handler(request)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            if scope["path"] == "/v1/markets/events":
                await sim.market_hub.serve(receive, send)
            elif scope["path"] == "/v1/accounts/events":
                await sim.account_hub.serve(receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "http":
            try:
                request = await read_request(scope, receive)
            except ValueError:
                await send_response(send, text_response("Request body too large", 413))
                return
            if request.path.startswith("/sim/"):
                response = await handle_control(request)
            else:
                response = await handle_api(request)
            await send_response(send, response)

    return app


def _config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    quiet = logging.getLogger("sim.hypercorn")
    quiet.setLevel(logging.WARNING)  # drop "Running on ..." info lines, keep errors
    config.errorlog = quiet
    # Long keep-alive: the autojump clock in tests would otherwise close idle connections.
    config.keep_alive_timeout = 3600.0
    config.websocket_max_message_size = 1 << 20
    return config


async def serve_simulator(
    scenario: Scenario,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    task_status: trio.TaskStatus[SimHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulator for ``scenario`` until cancelled. ``task_status.started`` receives a
    :class:`SimHandle` once the port is listening and the model has ticked once."""
    sim = Simulator(scenario, heartbeat_interval=heartbeat_interval)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        binds: list[str] = await nursery.start(partial(serve, make_app(sim), _config(host, port)))
        base_url = binds[0]
        bound_port = int(base_url.rsplit(":", 1)[1])
        ws_base = "ws" + base_url[len("http"):]
        task_status.started(SimHandle(
            port=bound_port,
            base_url=base_url,
            rest_url=f"{base_url}/v1",
            market_ws_url=f"{ws_base}/v1/markets/events",
            account_ws_url=f"{ws_base}/v1/accounts/events",
            token=scenario.token,
            account_id=scenario.account_id,
            simulator=sim,
            clock=sim.clock,
            market=sim.market,
            broker=sim.broker,
            faults=sim.faults,
        ))
