"""``/v1/accounts/...`` and ``/v1/user/profile``: positions, balances, orders, account stream
sessions.

Malformed order parameters are HTTP 400 with a plain-text ``Invalid Parameter: <name> ...``;
orders the broker refuses for business reasons (closing more than is held, mismatched legs,
an injected rejection) are HTTP 200 with ``{"errors": {"error": [...]}}`` (a bare string for
one error) and never get an id.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from sim.asgi import Request, Response, Router, json_response, text_response
from sim.broker import LegRequest, Order, OrderRequest
from sim.scenario import EASTERN
from sim.state import OrderReceipt, Simulator
from sim.wire import balances_record, collapse, iso, order_record, position_record

__all__ = ["BadParameter", "add_account_routes", "parse_order_request"]

_TAG = re.compile(r"^[A-Za-z0-9-]{1,255}$")
_SIDES = {"buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"}
_TYPES = {"option": {"market", "limit", "stop", "stop_limit"},
          "multileg": {"market", "debit", "credit", "even"}}
_PRICED = {"limit", "stop_limit", "debit", "credit"}
_DURATIONS = {"day", "gtc", "pre", "post"}


class BadParameter(ValueError):
    """A request parameter is missing or malformed: HTTP 400."""


def _required(request: Request, name: str) -> str:
    value = request.param(name)
    if not value:
        raise BadParameter(f"Invalid Parameter: {name} is required")
    return value


def _decimal(request: Request, name: str) -> Decimal | None:
    text = request.param(name)
    if text in (None, ""):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadParameter(f"Invalid Parameter: {name} must be a number, got {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise BadParameter(f"Invalid Parameter: {name} must be > 0, got {text!r}")
    return value


def _quantity(text: str, name: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadParameter(f"Invalid Parameter: {name} must be a number, got {text!r}") from None
    if not value.is_finite() or value <= 0 or value != value.to_integral_value():
        raise BadParameter(f"Invalid Parameter: {name} must be a positive whole number")
    return int(value)


def _choice(request: Request, name: str, allowed: set[str]) -> str:
    value = _required(request, name)
    if value not in allowed:
        raise BadParameter(f"Invalid Parameter: {name} must be one of "
                           f"{', '.join(sorted(allowed))}, got {value!r}")
    return value


def parse_order_request(request: Request) -> OrderRequest:
    """Read an order from form/query parameters. Raises BadParameter (HTTP 400)."""
    order_class = _choice(request, "class", {"option", "multileg"})
    symbol = _required(request, "symbol").upper()
    order_type = _choice(request, "type", _TYPES[order_class])
    duration = _choice(request, "duration", _DURATIONS)
    price, stop = _decimal(request, "price"), _decimal(request, "stop")
    if order_type in _PRICED and price is None:
        raise BadParameter(f"Invalid Parameter: price is required for a {order_type} order")
    if order_type in {"stop", "stop_limit"} and stop is None:
        raise BadParameter(f"Invalid Parameter: stop is required for a {order_type} order")
    tag = request.param("tag")
    if tag is not None and not _TAG.match(tag):
        raise BadParameter("Invalid Parameter: tag must be at most 255 letters, digits and '-'")
    if order_class == "option":
        legs = [LegRequest(_required(request, "option_symbol"),
                           _choice(request, "side", _SIDES),
                           _quantity(_required(request, "quantity"), "quantity"))]
    else:
        legs = []
        for i in range(4):
            if request.param(f"option_symbol[{i}]") is None:
                break
            legs.append(LegRequest(
                _required(request, f"option_symbol[{i}]"),
                _choice(request, f"side[{i}]", _SIDES),
                _quantity(_required(request, f"quantity[{i}]"), f"quantity[{i}]"),
            ))
        if len(legs) < 2 or request.param("option_symbol[4]") is not None:
            raise BadParameter("Invalid Parameter: a multileg order needs 2 to 4 legs "
                               "(option_symbol[0..3], side[i], quantity[i])")
    return OrderRequest(order_class=order_class, symbol=symbol, type=order_type,
                        duration=duration, legs=tuple(legs), price=price, stop=stop, tag=tag)


def _errors(errors: tuple[str, ...] | list[str]) -> Response:
    return json_response({"errors": {"error": collapse(list(errors), None)}})


def add_account_routes(router: Router, sim: Simulator) -> None:
    broker = sim.broker
    account_id = sim.scenario.account_id
    base = f"/v1/accounts/{account_id}"

    def today_or_open(order: Order) -> bool:
        today = sim.clock.now().astimezone(EASTERN).date()
        return not order.is_final or order.create_date.astimezone(EASTERN).date() == today

    async def positions(request: Request) -> Response:
        if sim.faults.take_null_positions():
            return json_response({"positions": "null"})
        records = [position_record(h) for h in sorted(broker.holdings.values(),
                                                      key=lambda h: h.id)]
        return json_response({"positions": {"position": collapse(records, None)}
                              if records else "null"})

    async def balances(request: Request) -> Response:
        return json_response({"balances": balances_record(broker)})

    async def orders(request: Request) -> Response:
        tags = request.flag("includeTags")
        records = [order_record(o, tags) for o in broker.orders.values() if today_or_open(o)]
        return json_response({"orders": {"order": collapse(records, None)}
                              if records else "null"})

    async def one_order(request: Request) -> Response:
        order = _find(request)
        if order is None:
            return text_response("Order not found", 404)
        return json_response({"order": order_record(order, request.flag("includeTags"))})

    def _find(request: Request) -> Order | None:
        try:
            return broker.orders.get(int(request.path_params["order_id"]))
        except ValueError:
            return None

    async def place(request: Request) -> Response:
        received_ns = time.perf_counter_ns()
        try:
            order = parse_order_request(request)
        except BadParameter as exc:
            return text_response(str(exc), 400)
        sim.order_receipts.append(OrderReceipt(
            received_ns, order.tag, tuple(leg.option_symbol for leg in order.legs)))
        if request.flag("preview"):
            placement = broker.preview(order)
            return _errors(placement.errors) if placement.errors else \
                json_response({"order": _preview(order, sim)})
        placement = broker.place(order)
        if placement.errors:
            return _errors(placement.errors)
        return json_response({"order": {"id": placement.order_id, "status": "ok",
                                        "partner_id": "spreadwatch-sim"}})

    async def modify(request: Request) -> Response:
        order = _find(request)
        if order is None:
            return text_response("Order not found", 404)
        try:
            order_type = request.param("type")
            if order_type is not None and order_type not in _TYPES[order.order_class]:
                raise BadParameter(f"Invalid Parameter: type {order_type!r}")
            duration = request.param("duration")
            if duration is not None and duration not in _DURATIONS:
                raise BadParameter(f"Invalid Parameter: duration {duration!r}")
            price, stop = _decimal(request, "price"), _decimal(request, "stop")
        except BadParameter as exc:
            return text_response(str(exc), 400)
        assert order.id is not None
        error = broker.modify(order.id, type=order_type, duration=duration, price=price,
                              stop=stop)
        if error:
            return text_response(error, 400)
        return json_response({"order": {"id": order.id, "status": "ok"}})

    async def cancel(request: Request) -> Response:
        order = _find(request)
        if order is None:
            return text_response("Order not found", 404)
        assert order.id is not None
        error = broker.cancel(order.id)
        if error:
            return text_response(error, 400)
        return json_response({"order": {"id": order.id, "status": "ok"}})

    async def account_session(request: Request) -> Response:
        session_id = sim.sessions.create("account")
        host = request.headers.get("host", "127.0.0.1")
        return json_response({"stream": {"url": f"ws://{host}/v1/accounts/events",
                                         "sessionid": session_id}})

    async def profile(request: Request) -> Response:
        return json_response({"profile": {
            "id": f"id-{account_id.lower()}",
            "name": "Simulated Trader",
            "account": {
                "account_number": account_id,
                "classification": "individual",
                "date_created": iso(sim.scenario.start_time),
                "day_trader": False,
                "option_level": 6,
                "status": "active",
                "type": sim.scenario.broker.account_type,
                "last_update_date": iso(sim.scenario.start_time),
            },
        }})

    router.add("GET", f"{base}/positions", positions)
    router.add("GET", f"{base}/balances", balances)
    router.add("GET", f"{base}/orders", orders)
    router.add("POST", f"{base}/orders", place)
    router.add("GET", f"{base}/orders/{{order_id}}", one_order)
    router.add("PUT", f"{base}/orders/{{order_id}}", modify)
    router.add("DELETE", f"{base}/orders/{{order_id}}", cancel)
    router.add("POST", "/v1/accounts/events/session", account_session)
    router.add("GET", "/v1/user/profile", profile)


def _preview(order: OrderRequest, sim: Simulator) -> dict[str, Any]:
    units = order.legs[0].quantity if order.order_class == "option" else \
        min(leg.quantity for leg in order.legs)
    cost = (order.price or Decimal(0)) * 100 * units
    return {
        "status": "ok",
        "commission": 0.0,
        "cost": cost,
        "fees": 0.0,
        "symbol": order.symbol,
        "quantity": float(units),
        "type": order.type,
        "duration": order.duration,
        "result": True,
        "price": order.price,
        "order_cost": cost,
        "margin_change": 0.0,
        "request_date": iso(sim.clock.now()),
        "extended_hours": False,
        "class": order.order_class,
        "strategy": "option" if order.order_class == "option" else "spread",
        "day_trades": 0,
    }
