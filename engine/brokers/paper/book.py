"""The paper broker's book, pure: positions, orders, the newest quote per symbol, and the fill
model. :class:`~engine.brokers.paper.broker.PaperBroker` wraps it with the async
:class:`~engine.brokers.OrderBroker` surface, the event streams and the logs.

The fill rules are the simulator's (``sim/broker.py``), re-implemented here because the engine
never imports ``sim``; keep the two in step:

- an order's *natural* price per unit is the net of its legs at the touch, buy legs at the ask
  and sell legs at the bid (positive = pay); no natural while any leg lacks that side's quote;
- ``debit`` fills when natural <= limit, ``credit`` when -natural >= limit, ``limit`` (one
  leg) when a buy's natural <= limit or a sell's -natural >= limit, ``even`` when natural <= 0,
  ``market`` always;
- a fill is at the natural (so at the limit or better: the price improvement stays with us),
  each leg at its own touch price; all legs fill together, ``lot_size`` units at a time (the
  whole remainder when None), one lot per chance to fill (a quote update, a submit, a modify);
- placement is refused, with the simulator's words, when a leg is not an OCC symbol or appears
  twice, when a close would take more than is held once the closes already working are counted
  (that would open or flip a position), when an open would add to the opposite side, or when a
  debit has no buy leg / a credit no sell leg.

Quote sizes are ignored, as in the simulator. Differences from it, both on purpose: a quote side
can be missing here (no fill then; the simulator's model always quotes both); and an order's
``avg_fill_price`` is in the close-price convention (a debit's natural, a credit's
-natural) where the simulator writes ``abs(natural)``: the two agree for every fill except one
on a market crossed across strikes, where the signed price is the true one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from engine.brokers import (
    FINAL_ORDER_STATUSES,
    BrokerOrder,
    BrokerOrderLeg,
    BrokerOrderStatus,
    BrokerOrderUpdate,
    BrokerPosition,
    OrderDuration,
)
from engine.domain.occ import is_option_symbol
from engine.domain.orders import ExitOrder, OrderClass
from engine.messages import OrderLegSide, OrderType, Quote

__all__ = ["PaperBook", "PaperLeg", "PaperOrder", "natural_price", "order_crosses"]

_HUNDRED = Decimal(100)  # contract multiplier: cost basis is in dollars, prices per share


class PaperLeg(msgspec.Struct, kw_only=True):
    """One leg of a paper order. Invariant: ``filled_quantity == ratio x`` the order's filled
    units (legs fill together); ``filled_value`` is the sum of price x contracts filled."""

    option_symbol: str
    side: OrderLegSide
    quantity: int  # contracts
    ratio: int  # contracts per unit of the order
    filled_quantity: int = 0
    filled_value: Decimal = Decimal(0)

    @property
    def is_buy(self) -> bool:
        return self.side in (OrderLegSide.BUY_TO_OPEN, OrderLegSide.BUY_TO_CLOSE)


class PaperOrder(msgspec.Struct, kw_only=True):
    """One order in the book. Invariants: ``0 <= filled_quantity <= quantity``; a status in
    ``FINAL_ORDER_STATUSES`` never changes again; ``limit_price`` is None exactly for market."""

    broker_order_id: str
    client_order_id: str
    multileg: bool
    order_type: OrderType
    underlying: str
    duration: OrderDuration
    quantity: int  # units: spreads (multileg) or contracts (one leg)
    limit_price: Decimal | None
    legs: list[PaperLeg]
    created_at: dt.datetime
    updated_at: dt.datetime
    status: BrokerOrderStatus = BrokerOrderStatus.OPEN
    filled_quantity: int = 0
    filled_value: Decimal = Decimal(0)  # sum of unit price x units filled
    reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_quantity

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES

    def view(self) -> BrokerOrder:
        """The order as a broker read returns it."""
        return BrokerOrder(
            broker_order_id=self.broker_order_id,
            client_order_id=self.client_order_id,
            status=self.status,
            multileg=self.multileg,
            order_type=self.order_type,
            underlying=self.underlying,
            quantity=self.quantity,
            filled_quantity=self.filled_quantity,
            remaining_quantity=self.remaining,
            avg_fill_price=_average(self.filled_value, self.filled_quantity),
            limit_price=self.limit_price,
            legs=tuple(
                BrokerOrderLeg(
                    option_symbol=leg.option_symbol,
                    side=leg.side,
                    quantity=leg.quantity,
                    filled_quantity=leg.filled_quantity,
                    avg_fill_price=_average(leg.filled_value, leg.filled_quantity),
                )
                for leg in self.legs
            ),
            reason=self.reason,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def update(
        self, *, last_fill_quantity: int | None = None, last_fill_price: Decimal | None = None
    ) -> BrokerOrderUpdate:
        """The order's current state as a stream event (with the fill that caused it, if any)."""
        return BrokerOrderUpdate(
            broker_order_id=self.broker_order_id,
            client_order_id=self.client_order_id,
            status=self.status,
            filled_quantity=self.filled_quantity,
            remaining_quantity=self.remaining,
            last_fill_quantity=last_fill_quantity,
            last_fill_price=last_fill_price,
            avg_fill_price=_average(self.filled_value, self.filled_quantity),
            at=self.updated_at,
        )


def _average(value: Decimal, quantity: int) -> Decimal | None:
    return value / quantity if quantity else None


def natural_price(legs: Iterable[PaperLeg], quotes: Mapping[str, Quote]) -> Decimal | None:
    """Net per unit to trade ``legs`` now (buy at the ask, sell at the bid; positive = pay),
    or None while a leg has no quote on the side it needs."""
    net = Decimal(0)
    for leg in legs:
        quote = quotes.get(leg.option_symbol)
        touch = None if quote is None else (quote.ask if leg.is_buy else quote.bid)
        if touch is None:
            return None
        net += leg.ratio * (touch if leg.is_buy else -touch)
    return net


def order_crosses(order: PaperOrder, net: Decimal) -> bool:
    """True when an order whose natural is ``net`` fills now (the simulator's ``_crosses``)."""
    limit = order.limit_price
    match order.order_type:
        case OrderType.MARKET:
            return True
        case OrderType.EVEN:
            return net <= 0
        case OrderType.DEBIT:
            return limit is not None and net <= limit
        case OrderType.CREDIT:
            return limit is not None and -net >= limit
        case OrderType.LIMIT:
            if limit is None:
                return False
            return net <= limit if order.legs[0].is_buy else -net >= limit


def _unit_price(order_type: OrderType, net: Decimal) -> Decimal:
    """A fill's price per unit in the close-price convention: positive paid on a debit,
    positive received on a credit; a one-leg order's touch price; otherwise ``abs``."""
    if order_type is OrderType.DEBIT:
        return net
    if order_type is OrderType.CREDIT:
        return -net
    return abs(net)


class PaperBook:
    """Positions, orders and quotes of one paper account, and the fill model.

    Invariants: ``positions`` holds no zero quantity; ``orders`` keeps every accepted order
    (ids ``paper-1``, ``paper-2``, ...), working and final; the closes working on a symbol
    never exceed what is held on it (checked at placement, so fills never flip a position).
    """

    def __init__(self, positions: Iterable[BrokerPosition], *, lot_size: int | None) -> None:
        if lot_size is not None and lot_size < 1:
            raise ValueError(f"lot_size must be >= 1 or None, got {lot_size}")
        self.lot_size = lot_size
        self.positions: dict[str, BrokerPosition] = {p.symbol: p for p in positions if p.quantity}
        self.orders: dict[str, PaperOrder] = {}
        self.quotes: dict[str, Quote] = {}
        self._next_id = 1

    # -- placing ---------------------------------------------------------------------------

    def check(self, order: ExitOrder) -> list[str]:
        """Why the order would be refused (empty when it is accepted)."""
        errors: list[str] = []
        count = len(order.legs)
        if order.order_class is OrderClass.MULTILEG and not 2 <= count <= 4:
            errors.append(f"A multileg order needs 2 to 4 legs, got {count}")
        if order.order_class is OrderClass.OPTION and count != 1:
            errors.append(f"An option order needs exactly 1 leg, got {count}")
        if order.order_type is not OrderType.MARKET and (
            order.limit_price is None or order.limit_price <= 0
        ):
            errors.append(f"A {order.order_type} order needs a positive price")
        seen: set[str] = set()
        for leg in order.legs:
            if not is_option_symbol(leg.option_symbol):
                errors.append(f"Invalid option symbol: {leg.option_symbol}")
                continue
            if leg.option_symbol in seen:
                errors.append(f"Duplicate leg {leg.option_symbol}")
            seen.add(leg.option_symbol)
            if leg.quantity <= 0:
                errors.append(f"Leg {leg.option_symbol}: quantity must be positive")
                continue
            errors.extend(self._check_position(leg.option_symbol, leg.side, leg.quantity))
        if order.order_class is OrderClass.MULTILEG:
            sides = [leg.side.startswith("buy") for leg in order.legs]
            if order.order_type is OrderType.DEBIT and not any(sides):
                errors.append("A debit order needs at least one buy leg")
            if order.order_type is OrderType.CREDIT and all(sides):
                errors.append("A credit order needs at least one sell leg")
        return errors

    def _check_position(self, symbol: str, side: OrderLegSide, quantity: int) -> list[str]:
        held = self.positions.get(symbol)
        signed = held.quantity if held is not None else 0
        if side in (OrderLegSide.BUY_TO_OPEN, OrderLegSide.SELL_TO_OPEN):
            if (side is OrderLegSide.BUY_TO_OPEN and signed < 0) or (
                side is OrderLegSide.SELL_TO_OPEN and signed > 0
            ):
                return [f"Cannot {side} {symbol}: position is {signed}; close it instead"]
            return []
        wanted_sign = 1 if side is OrderLegSide.SELL_TO_CLOSE else -1
        available = max(0, signed * wanted_sign) - self._closing_in_flight(symbol, side)
        if available <= 0:
            kind = "long" if wanted_sign > 0 else "short"
            return [f"Cannot {side} {symbol}: no {kind} position to close"]
        if quantity > available:
            return [f"Cannot {side} {quantity} {symbol}: only {available} available to close"]
        return []

    def _closing_in_flight(self, symbol: str, side: OrderLegSide) -> int:
        return sum(
            leg.quantity - leg.filled_quantity
            for order in self.orders.values()
            if not order.is_final
            for leg in order.legs
            if leg.option_symbol == symbol and leg.side is side
        )

    def accept(
        self, order: ExitOrder, *, client_order_id: str, duration: OrderDuration, now: dt.datetime
    ) -> PaperOrder:
        """Book an order :meth:`check` passed, OPEN. Its quantity is in units of the legs'
        greatest common divisor, as a broker counts a multileg order it is sent."""
        units = math.gcd(*(leg.quantity for leg in order.legs))
        broker_order_id = f"paper-{self._next_id}"
        self._next_id += 1
        paper = PaperOrder(
            broker_order_id=broker_order_id,
            client_order_id=client_order_id,
            multileg=order.order_class is OrderClass.MULTILEG,
            order_type=order.order_type,
            underlying=order.underlying,
            duration=duration,
            quantity=units,
            limit_price=None if order.order_type is OrderType.MARKET else order.limit_price,
            legs=[
                PaperLeg(
                    option_symbol=leg.option_symbol,
                    side=leg.side,
                    quantity=leg.quantity,
                    ratio=leg.quantity // units,
                )
                for leg in order.legs
            ],
            created_at=now,
            updated_at=now,
        )
        self.orders[broker_order_id] = paper
        return paper

    # -- filling ---------------------------------------------------------------------------

    def working(self) -> list[PaperOrder]:
        return [order for order in self.orders.values() if not order.is_final]

    def try_fill(self, order: PaperOrder, now: dt.datetime) -> tuple[int, Decimal] | None:
        """Fill one lot of a working order if its natural crosses its limit: the units filled
        and their price per unit, or None when nothing filled."""
        if order.is_final:
            return None
        net = natural_price(order.legs, self.quotes)
        if net is None or not order_crosses(order, net):
            return None
        lot = order.remaining if self.lot_size is None else min(self.lot_size, order.remaining)
        for leg in order.legs:
            quote = self.quotes[leg.option_symbol]
            touch = quote.ask if leg.is_buy else quote.bid
            assert touch is not None  # natural_price found every side it needs
            contracts = lot * leg.ratio
            self._book_fill(leg.option_symbol, contracts if leg.is_buy else -contracts, touch, now)
            leg.filled_quantity += contracts
            leg.filled_value += touch * contracts
        price = _unit_price(order.order_type, net)
        order.filled_quantity += lot
        order.filled_value += price * lot
        order.status = (
            BrokerOrderStatus.FILLED if order.remaining == 0 else BrokerOrderStatus.PARTIALLY_FILLED
        )
        order.updated_at = now
        return lot, price

    def _book_fill(self, symbol: str, delta: int, price: Decimal, now: dt.datetime) -> None:
        """Move one leg's position by ``delta`` contracts (> 0 bought) at ``price`` per share.
        Cost basis is signed like the cash flow at entry; a reduction keeps the basis per
        contract; a position crossing zero (never, given the placement checks) reopens at the
        fill price."""
        amount = price * _HUNDRED * delta  # signed: positive paid
        held = self.positions.get(symbol)
        if held is None or (held.quantity > 0) == (delta > 0):
            quantity = (held.quantity if held else 0) + delta
            basis = (held.cost_basis if held else Decimal(0)) + amount
            acquired = held.acquired_at if held else now
        else:
            quantity = held.quantity + delta
            if quantity == 0:
                del self.positions[symbol]
                return
            if (quantity > 0) == (held.quantity > 0):
                basis, acquired = held.cost_basis / held.quantity * quantity, held.acquired_at
            else:
                basis, acquired = price * _HUNDRED * quantity, now
        self.positions[symbol] = BrokerPosition(
            symbol=symbol, quantity=quantity, cost_basis=basis, acquired_at=acquired
        )

    # -- the symbols working orders need -------------------------------------------------------

    def wanted_symbols(self) -> frozenset[str]:
        return frozenset(leg.option_symbol for order in self.working() for leg in order.legs)

    def forget_quotes(self, symbols: Iterable[str]) -> None:
        """Drop quotes no longer followed: kept, they would go stale and a later order on the
        same legs would fill at once against an old price."""
        for symbol in symbols:
            self.quotes.pop(symbol, None)
