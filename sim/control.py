"""``/sim/...``: control and inspection, not part of Tradier's API (no token needed).

- ``GET /sim/clock``       market time, start, speed, elapsed market seconds
- ``GET /sim/orders``      every order received (rejected ones too) with parameters,
                            modifications, fills and state (the report's order shape)
- ``GET /sim/positions``   current positions with cost basis; ``GET /sim/account`` adds cash
- ``GET /sim/faults``      faults fired so far; ``POST /sim/faults`` injects one now
                            (JSON body as a scenario ``[[faults]]`` entry, ``at`` ignored)
- ``POST /sim/close``      a manual broker-side close now: ``{"symbols": [...], "quantity": n}``
- ``GET /sim/report``      the scenario report as of now
"""

from __future__ import annotations

from typing import Any

import msgspec

from sim.asgi import Request, Response, Router, json_response, text_response
from sim.report import build_report, order_summary
from sim.scenario import Fault
from sim.state import Simulator

__all__ = ["add_control_routes"]


class _CloseRequest(msgspec.Struct, forbid_unknown_fields=True):
    symbols: list[str]
    quantity: int | None = None


def add_control_routes(router: Router, sim: Simulator) -> None:
    broker = sim.broker

    async def clock(request: Request) -> Response:
        stats = sim.clock.statistics()
        return json_response({"market_time": stats.market_time.isoformat(),
                              "start": stats.start.isoformat(), "speed": stats.speed,
                              "elapsed_market_seconds": stats.elapsed_market_seconds,
                              "duration_seconds": sim.scenario.duration_seconds})

    async def orders(request: Request) -> Response:
        everything = sorted([*broker.orders.values(), *broker.rejected],
                            key=lambda o: (o.create_date, o.id or 0))
        return json_response({"orders": [order_summary(o) | {"origin": o.origin,
                                                             "reason": o.reason_description}
                                         for o in everything]})

    def _positions() -> list[dict[str, Any]]:
        return [{"symbol": h.symbol, "quantity": h.quantity, "cost_basis": h.cost_basis}
                for h in sorted(broker.holdings.values(), key=lambda h: h.symbol)]

    async def positions(request: Request) -> Response:
        return json_response({"positions": _positions()})

    async def account(request: Request) -> Response:
        return json_response({"account_id": broker.account_id, "cash": broker.cash,
                              "realized_pnl": broker.realized_pnl, "positions": _positions()})

    async def faults(request: Request) -> Response:
        return json_response({"faults": [msgspec.to_builtins(r) for r in sim.faults.log]})

    async def inject(request: Request) -> Response:
        try:
            fault = msgspec.json.decode(request.body, type=Fault)
        except msgspec.ValidationError as exc:
            return text_response(f"bad fault: {exc}", 400)
        except msgspec.DecodeError as exc:
            return text_response(f"bad fault: not JSON: {exc}", 400)
        return json_response({"injected": sim.faults.inject(fault)})

    async def close(request: Request) -> Response:
        try:
            body = msgspec.json.decode(request.body, type=_CloseRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return text_response(f"bad close request: {exc}", 400)
        order_id = broker.manual_close(body.symbols, body.quantity)
        if order_id is None:
            return text_response("nothing held in those symbols", 400)
        return json_response({"order_id": order_id})

    async def report(request: Request) -> Response:
        return json_response(build_report(sim))

    router.add("GET", "/sim/clock", clock)
    router.add("GET", "/sim/orders", orders)
    router.add("GET", "/sim/positions", positions)
    router.add("GET", "/sim/account", account)
    router.add("GET", "/sim/faults", faults)
    router.add("POST", "/sim/faults", inject)
    router.add("POST", "/sim/close", close)
    router.add("GET", "/sim/report", report)
