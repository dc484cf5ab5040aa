"""Broker-neutral types: what the engine asks of any broker, whatever its wire format.

Each broker package (``tradier``, ``alpaca``, ``paper``) translates its own answers into these
types at its boundary (``<broker>/broker.py``), so nothing above the adapters knows which broker
it talks to. The Protocols here are deliberately small, one capability each; the actors take the
one they need (PortfolioMirror takes a :class:`PositionSource`).

This module imports nothing from the broker packages and nothing heavy: the domain, actors and
storage may all import it. (It imports :mod:`engine.messages` for the order vocabulary, and
names :class:`engine.domain.orders.ExitOrder` for type checking only.)

Orders (issue 5): :class:`OrderBroker` is the one Protocol the OrderRouter needs: positions,
orders (open and today's), submit, modify price, cancel, and an order-event stream. The broker's
answers come back as :class:`BrokerOrder` (a read) and :class:`BrokerOrderUpdate` (a stream
event). Their ``status`` is a :class:`BrokerOrderStatus`, spelled as the ``orders`` table spells
it; any broker state we do not know reads as PENDING (still working: keep following it), never
as a final state, because believing an order finished when it is not is how duplicate closes
happen.
"""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import msgspec

from engine.messages import OrderLegSide, OrderType

if TYPE_CHECKING:
    from engine.domain.orders import ExitOrder

__all__ = [
    "FINAL_ORDER_STATUSES",
    "BrokerOrder",
    "BrokerOrderLeg",
    "BrokerOrderStatus",
    "BrokerOrderUpdate",
    "BrokerPosition",
    "OrderBroker",
    "OrderDuration",
    "OrderEventSource",
    "PositionSource",
]


class BrokerPosition(msgspec.Struct, frozen=True, kw_only=True):
    """One position as the broker reports it: one row per symbol, net of longs and shorts.

    ``symbol`` is an OCC option symbol in Tradier's form (``SPY240621P00500000``) or an equity
    ticker (stock left by an assignment). ``quantity`` is signed: negative when short; never
    fractional (adapters reject a fractional answer). ``cost_basis`` is the broker's total for
    the whole position in dollars, signed like the cash flow at entry: negative when the
    position was opened for a credit (a short option), positive for a debit. ``acquired_at`` is
    when the broker says the position was opened, if it says.
    """

    symbol: str
    quantity: int
    cost_basis: Decimal
    acquired_at: dt.datetime | None = None


class PositionSource(Protocol):
    """Reads the account's positions.

    ``get_positions`` returns every position held (``[]`` when the broker says there are none,
    which callers must not take at face value: see :mod:`engine.domain.reconcile`). It raises
    ``BrokerUnavailable`` / ``RateLimited`` for a failed read, ``BrokerAnswerInvalid`` for an
    answer that does not decode, ``AuthFailed`` when the credentials are refused.
    """

    async def get_positions(self) -> list[BrokerPosition]: ...


# ---------------------------------------------------------------------------------------------
# Orders
# ---------------------------------------------------------------------------------------------


class BrokerOrderStatus(StrEnum):
    # Spelled as the orders table spells them (the broker-facing subset of its statuses).
    PENDING = "PENDING"  # received, not yet working (and every state we do not know)
    OPEN = "OPEN"  # working, nothing filled
    PARTIALLY_FILLED = "PARTIALLY_FILLED"  # working, some filled
    FILLED = "FILLED"  # final
    CANCELLED = "CANCELLED"  # final (maybe after partial fills)
    REJECTED = "REJECTED"  # final
    EXPIRED = "EXPIRED"  # final (maybe after partial fills)


FINAL_ORDER_STATUSES: frozenset[BrokerOrderStatus] = frozenset(
    {
        BrokerOrderStatus.FILLED,
        BrokerOrderStatus.CANCELLED,
        BrokerOrderStatus.REJECTED,
        BrokerOrderStatus.EXPIRED,
    }
)


class OrderDuration(StrEnum):
    DAY = "day"
    GTC = "gtc"


class BrokerOrderLeg(msgspec.Struct, frozen=True, kw_only=True):
    """One leg of an order as the broker reports it. Quantities are contracts.
    ``avg_fill_price`` is per share for this leg; None before any fill."""

    option_symbol: str
    side: OrderLegSide | None  # None when the broker did not say (or said something else)
    quantity: int
    filled_quantity: int = 0
    avg_fill_price: Decimal | None = None


class BrokerOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One order as the broker reports it on a read.

    ``client_order_id`` is the broker tag (None for an order without one: not ours).
    Quantities are in the order's own unit: spreads for a multileg order, contracts for a
    single-option order; ``filled_quantity + remaining_quantity == quantity`` while the order
    works. ``avg_fill_price`` is the net per-unit price over everything filled (None before any
    fill); ``limit_price`` the order's current limit (None for a market order). ``legs`` are in
    the broker's order; a single-option order has one. ``reason`` holds the broker's words on
    a rejection or cancel, if any."""

    broker_order_id: str
    client_order_id: str | None
    status: BrokerOrderStatus
    multileg: bool
    order_type: OrderType | None  # None: a type the engine never sends (stop, ...)
    underlying: str | None
    quantity: int
    filled_quantity: int
    remaining_quantity: int
    avg_fill_price: Decimal | None
    limit_price: Decimal | None
    legs: tuple[BrokerOrderLeg, ...]
    reason: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


class BrokerOrderUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One order event from the broker's account stream: a status change of an order, or of
    one leg of a multileg order (then ``parent_order_id`` names the order). Streams lose
    events: an update says "read this order now", it is not a complete history. Quantities as in
    :class:`BrokerOrder`; None when the event did not carry them."""

    broker_order_id: str
    parent_order_id: str | None = None
    client_order_id: str | None = None
    status: BrokerOrderStatus
    filled_quantity: int | None = None
    remaining_quantity: int | None = None
    last_fill_quantity: int | None = None
    last_fill_price: Decimal | None = None
    avg_fill_price: Decimal | None = None
    at: dt.datetime | None = None


class OrderEventSource(Protocol):
    """One connection to the broker's order-event stream (open it with
    :meth:`OrderBroker.order_events`; a dropped connection raises ``BrokerUnavailable`` from
    ``receive`` and reconnecting means opening a new one)."""

    async def receive(self) -> BrokerOrderUpdate | None:
        """The next order update; None for a frame that carries none (a heartbeat)."""
        ...


class OrderBroker(PositionSource, Protocol):
    """Everything the OrderRouter asks of a broker. Order ids are text (``broker_order_id``).

    Errors (all from :mod:`engine.errors`): ``OrderRejected`` when the broker refused the
    request, with its words; ``OrderAlreadyFinal`` (an OrderRejected) when a modify or cancel
    found the order already finished: read the order, its fill is real; ``BrokerUnavailable``
    when the outcome is unknown (timeout, 5xx, dropped connection): read the orders (by
    ``client_order_id``) before anything else, never resend; ``RateLimited``; ``AuthFailed``
    (fatal); ``BrokerAnswerInvalid``.
    """

    async def get_orders(self) -> list[BrokerOrder]:
        """The account's open orders and today's finished ones."""
        ...

    async def get_order(self, broker_order_id: str) -> BrokerOrder: ...

    async def submit_order(
        self,
        order: ExitOrder,
        *,
        client_order_id: str,
        duration: OrderDuration = OrderDuration.DAY,
    ) -> str:
        """Send ``order`` tagged ``client_order_id``; the broker's order id. The order is
        recorded by the caller *before* this is called."""
        ...

    async def modify_price(self, broker_order_id: str, limit_price: Decimal) -> None:
        """Move a working order's limit (per unit, positive); the quantity never changes."""
        ...

    async def cancel_order(self, broker_order_id: str) -> None: ...

    def order_events(self) -> AbstractAsyncContextManager[OrderEventSource]:
        """Connect to the order-event stream (``async with broker.order_events() as s``)."""
        ...
