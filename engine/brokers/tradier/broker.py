"""Tradier behind the broker-neutral interface (:mod:`engine.brokers`).

:class:`TradierBroker` wraps a :class:`~engine.brokers.tradier.rest.TradierRest` and translates
its wire views into broker-neutral types. Errors pass through as the REST client raised them
(already our tree); translation problems found here raise ``BrokerAnswerInvalid``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from engine.brokers import (
    BrokerOrder,
    BrokerOrderLeg,
    BrokerOrderStatus,
    BrokerOrderUpdate,
    BrokerPosition,
    OrderDuration,
)
from engine.brokers.tradier import wire
from engine.brokers.tradier.rest import TradierRest
from engine.brokers.tradier.stream import AccountSocket, open_account_socket
from engine.domain.orders import ExitOrder, OrderClass
from engine.errors import BrokerAnswerInvalid, BrokerUnavailable, ConfigError
from engine.messages import OrderLegSide, OrderType

__all__ = [
    "TradierBroker",
    "TradierOrderEvents",
    "order_from_wire",
    "position_from_wire",
    "status_from_wire",
    "update_from_wire",
]


class TradierBroker:
    """One Tradier account as an :class:`~engine.brokers.OrderBroker` (and so a
    :class:`~engine.brokers.PositionSource`). ``account_ws_url`` is the account-event
    WebSocket (``wss://ws.tradier.com/v1/accounts/events``); without it :meth:`order_events`
    raises ConfigError and everything else works."""

    def __init__(self, rest: TradierRest, *, account_ws_url: str | None = None) -> None:
        self._rest = rest
        self._account_ws_url = account_ws_url

    async def get_positions(self) -> list[BrokerPosition]:
        return [position_from_wire(p) for p in await self._rest.get_positions()]

    # -- orders -------------------------------------------------------------------------------

    async def get_orders(self) -> list[BrokerOrder]:
        return [order_from_wire(o) for o in await self._rest.get_orders()]

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        return order_from_wire(await self._rest.get_order(_order_number(broker_order_id)))

    async def submit_order(
        self,
        order: ExitOrder,
        *,
        client_order_id: str,
        duration: OrderDuration = OrderDuration.DAY,
    ) -> str:
        if order.order_class is OrderClass.MULTILEG:
            placed = await self._rest.place_multileg(
                symbol=order.underlying,
                type=order.order_type,
                duration=duration,
                price=order.limit_price,
                legs=order.legs,
                tag=client_order_id,
            )
        else:
            (leg,) = order.legs
            placed = await self._rest.place_option(
                symbol=order.underlying,
                option_symbol=leg.option_symbol,
                side=leg.side,
                quantity=leg.quantity,
                type=order.order_type,
                duration=duration,
                price=order.limit_price,
                tag=client_order_id,
            )
        return str(placed.id)

    async def modify_price(self, broker_order_id: str, limit_price: Decimal) -> None:
        await self._rest.modify_order(_order_number(broker_order_id), price=limit_price)

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._rest.cancel_order(_order_number(broker_order_id))

    @asynccontextmanager
    async def order_events(self) -> AsyncIterator[TradierOrderEvents]:
        if self._account_ws_url is None:
            raise ConfigError("tradier: no account stream URL configured for order events")
        async with open_account_socket(self._rest, self._account_ws_url) as socket:
            yield TradierOrderEvents(socket)


class TradierOrderEvents:
    """The account stream as an :class:`~engine.brokers.OrderEventSource`."""

    def __init__(self, socket: AccountSocket) -> None:
        self._socket = socket

    async def receive(self) -> BrokerOrderUpdate | None:
        event = await self._socket.receive()
        if isinstance(event, wire.OrderEvent):
            return update_from_wire(event)
        if isinstance(event, wire.ErrorFrame):
            # A refused or expired session: a new connection with a fresh session is the cure.
            raise BrokerUnavailable(f"account stream error: {event.error}")
        return None  # a heartbeat, or a kind we do not follow


def _order_number(broker_order_id: str) -> int:
    """Tradier's order ids are numbers; ours are their text."""
    try:
        return int(broker_order_id)
    except ValueError:
        raise ValueError(f"not a Tradier order id: {broker_order_id!r}") from None


_STATUSES: dict[str, BrokerOrderStatus] = {
    "pending": BrokerOrderStatus.PENDING,
    "calculated": BrokerOrderStatus.PENDING,
    "accepted_for_bidding": BrokerOrderStatus.PENDING,
    "held": BrokerOrderStatus.PENDING,
    "open": BrokerOrderStatus.OPEN,
    "partially_filled": BrokerOrderStatus.PARTIALLY_FILLED,
    "filled": BrokerOrderStatus.FILLED,
    "canceled": BrokerOrderStatus.CANCELLED,
    "expired": BrokerOrderStatus.EXPIRED,
    "rejected": BrokerOrderStatus.REJECTED,
    "error": BrokerOrderStatus.REJECTED,
}


def status_from_wire(status: str) -> BrokerOrderStatus:
    """Tradier's order status; anything unknown is PENDING (still to be followed), never a
    final state."""
    return _STATUSES.get(status.lower(), BrokerOrderStatus.PENDING)


def order_from_wire(view: wire.OrderView) -> BrokerOrder:
    """Tradier's order view as a :class:`BrokerOrder`. Fractional quantities make the answer
    invalid (never rounded into something we did not send)."""
    what = f"order {view.id}"
    quantity = _whole(view.quantity, what) or 0
    filled = _whole(view.exec_quantity, what) or 0
    remaining = _whole(view.remaining_quantity, what)
    multileg = view.order_class == "multileg" or bool(view.legs)
    if multileg:
        legs = tuple(_leg_from_wire(leg, what) for leg in view.legs)
    else:
        legs = (
            BrokerOrderLeg(
                option_symbol=view.option_symbol or view.symbol or "",
                side=_side(view.side),
                quantity=quantity,
                filled_quantity=filled,
                avg_fill_price=_fill_price(view.avg_fill_price, filled),
            ),
        )
    return BrokerOrder(
        broker_order_id=str(view.id),
        client_order_id=view.tag or None,
        status=status_from_wire(view.status),
        multileg=multileg,
        order_type=_order_type(view.type),
        underlying=view.symbol,
        quantity=quantity,
        filled_quantity=filled,
        remaining_quantity=remaining if remaining is not None else max(quantity - filled, 0),
        avg_fill_price=_fill_price(view.avg_fill_price, filled),
        limit_price=None if view.type == "market" else view.price,
        legs=legs,
        reason=view.reason_description or None,
        created_at=_timestamp(view.create_date),
        updated_at=_timestamp(view.transaction_date),
    )


def _leg_from_wire(leg: wire.OrderLeg, what: str) -> BrokerOrderLeg:
    if not leg.option_symbol:
        raise BrokerAnswerInvalid(f"{what}: a leg without an option_symbol")
    filled = _whole(leg.exec_quantity, what) or 0
    return BrokerOrderLeg(
        option_symbol=leg.option_symbol,
        side=_side(leg.side),
        quantity=_whole(leg.quantity, what) or 0,
        filled_quantity=filled,
        avg_fill_price=_fill_price(leg.avg_fill_price, filled),
    )


def update_from_wire(event: wire.OrderEvent) -> BrokerOrderUpdate:
    """One account-stream order event as a :class:`BrokerOrderUpdate`."""
    what = f"order event {event.id}"
    filled = _whole(event.filled_quantity, what)
    return BrokerOrderUpdate(
        broker_order_id=str(event.id),
        parent_order_id=None if event.parent_id is None else str(event.parent_id),
        client_order_id=event.tag or None,
        status=status_from_wire(event.status),
        filled_quantity=filled,
        remaining_quantity=_whole(event.remaining_quantity, what),
        last_fill_quantity=_whole(event.last_fill_quantity, what),
        last_fill_price=event.last_fill_price if event.last_fill_quantity else None,
        avg_fill_price=_fill_price(event.avg_fill_price, filled or 0),
        at=_timestamp(event.transaction_date),
    )


def _whole(value: Decimal | None, what: str) -> int | None:
    if value is None:
        return None
    if not value.is_finite() or value != value.to_integral_value():
        raise BrokerAnswerInvalid(f"{what}: fractional quantity {value}")
    return int(value)


def _fill_price(price: Decimal | None, filled: int) -> Decimal | None:
    # Tradier sends 0.0 before the first fill: that is "no fill yet", not a price of zero.
    return price if filled > 0 else None


def _side(text: str | None) -> OrderLegSide | None:
    try:
        return OrderLegSide(text) if text else None
    except ValueError:
        return None


def _order_type(text: str | None) -> OrderType | None:
    try:
        return OrderType(text) if text else None
    except ValueError:
        return None


def position_from_wire(position: wire.Position) -> BrokerPosition:
    """Tradier's position view as a :class:`BrokerPosition`.

    Tradier sends quantities as decimals (``-2.00000000``). A fractional quantity is not an
    option position and cannot be mirrored as whole contracts, so it makes the whole answer
    invalid rather than being rounded into something we do not hold."""
    quantity = position.quantity
    if quantity != quantity.to_integral_value():
        raise BrokerAnswerInvalid(
            f"positions: fractional quantity {quantity} for {position.symbol!r}"
        )
    return BrokerPosition(
        symbol=position.symbol,
        quantity=int(quantity),
        cost_basis=Decimal(position.cost_basis),
        acquired_at=_acquired_at(position.date_acquired),
    )


def _acquired_at(text: str | None) -> dt.datetime | None:
    """Tradier's ``2018-08-08T14:41:11.405Z``; None when absent or unreadable (it is only a
    hint for an imported trade's open time, not worth failing the whole answer for)."""
    return _timestamp(text)


def _timestamp(text: str | None) -> dt.datetime | None:
    """An ISO-8601 time from Tradier as an aware UTC datetime; None when absent or unreadable
    (times are informative here, never worth failing an answer for)."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
