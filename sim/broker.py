"""The simulated broker: one account with cash, positions and orders, and a fill model.

Orders live through ``pending -> open -> partially_filled -> filled``, or end ``rejected``,
``canceled`` or ``expired``. A limit (or net debit / net credit) order fills when the natural
price (buy at the ask, sell at the bid) reaches its limit, at that natural price (so at the limit
or better); a market order fills at the natural price. A multileg order fills all legs together,
``fill_lot`` spreads at a time when the scenario configures partial fills. Every status change is
an account event.

Prices and money are Decimal; quotes arrive in integer cents from the market model.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from decimal import Decimal

import msgspec

from sim.market import Market
from sim.scenario import EASTERN, OpenOrder, Scenario, parse_duration

__all__ = [
    "FINAL_STATUSES",
    "Broker",
    "Fill",
    "Holding",
    "LegRequest",
    "Modification",
    "Order",
    "OrderLeg",
    "OrderRequest",
    "Placement",
]

FINAL_STATUSES = frozenset({"filled", "canceled", "rejected", "expired"})
_HUNDRED = Decimal(100)
_CENT = Decimal("0.01")


class LegRequest(msgspec.Struct, frozen=True):
    option_symbol: str
    side: str  # buy_to_open | buy_to_close | sell_to_open | sell_to_close
    quantity: int


class OrderRequest(msgspec.Struct, frozen=True):
    """A syntactically valid order (the REST layer checked types and enums)."""

    order_class: str  # option | multileg
    symbol: str
    type: str
    duration: str
    legs: tuple[LegRequest, ...]
    price: Decimal | None = None
    stop: Decimal | None = None
    tag: str | None = None


class Placement(msgspec.Struct, frozen=True):
    order_id: int | None
    errors: tuple[str, ...] = ()


class Fill(msgspec.Struct, frozen=True):
    at: dt.datetime
    quantity: int
    price: Decimal


class Modification(msgspec.Struct, frozen=True):
    at: dt.datetime
    price: Decimal | None
    type: str
    duration: str


class OrderLeg(msgspec.Struct):
    id: int
    option_symbol: str
    side: str
    quantity: int
    ratio: int
    status: str = "pending"
    exec_quantity: int = 0
    filled_value: Decimal = Decimal(0)  # sum of price * quantity
    last_fill_price: Decimal = Decimal(0)
    last_fill_quantity: int = 0

    @property
    def avg_fill_price(self) -> Decimal:
        return self.filled_value / self.exec_quantity if self.exec_quantity else Decimal(0)

    @property
    def is_buy(self) -> bool:
        return self.side.startswith("buy")


class Order(msgspec.Struct):
    """Invariants: ``exec_quantity <= quantity``; status in FINAL_STATUSES never changes."""

    id: int | None
    order_class: str
    symbol: str
    type: str
    duration: str
    quantity: int  # spreads (multileg) or contracts (option)
    legs: list[OrderLeg]
    price: Decimal | None
    stop: Decimal | None
    tag: str | None
    create_date: dt.datetime
    transaction_date: dt.datetime
    origin: str = "api"  # api | scenario | manual
    status: str = "pending"
    exec_quantity: int = 0
    filled_value: Decimal = Decimal(0)
    last_fill_price: Decimal = Decimal(0)
    last_fill_quantity: int = 0
    reason_description: str | None = None
    modifications: list[Modification] = msgspec.field(default_factory=list)
    fills: list[Fill] = msgspec.field(default_factory=list)
    last_fill_offset: float = -math.inf
    reject_after_accept: str | None = None

    @property
    def remaining(self) -> int:
        return self.quantity - self.exec_quantity

    @property
    def avg_fill_price(self) -> Decimal:
        return self.filled_value / self.exec_quantity if self.exec_quantity else Decimal(0)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Holding(msgspec.Struct):
    id: int
    symbol: str
    quantity: int  # negative = short
    cost_basis: Decimal  # total, signed: negative for shorts
    date_acquired: dt.datetime


class Broker:
    """Owner of the account. ``on_event(order, leg_or_None)`` is called on each status change."""

    def __init__(self, scenario: Scenario, market: Market) -> None:
        self.scenario = scenario
        self.market = market
        self.account_id = scenario.account_id
        self.cash = scenario.broker.cash
        self.orders: dict[int, Order] = {}
        self.rejected: list[Order] = []  # refused at placement: no id at the broker
        self.holdings: dict[str, Holding] = {}
        self.realized_pnl = Decimal(0)
        self.on_event: Callable[[Order, OrderLeg | None], None] = lambda order, leg: None
        self._ids = iter(range(1_000_001, 1_000_000_000))
        self._fill_lot = scenario.broker.fill_lot
        self._fill_interval = parse_duration(scenario.broker.fill_interval)
        self._reject_queue: list[tuple[str, bool]] = []  # (reason, after_accept)
        for position in scenario.positions:
            basis = position.cost_basis
            if basis is None:
                quote = market.true_quote(position.symbol)
                mid = Decimal(round(quote.mid_cents)) / 100 if quote else Decimal(0)
                basis = mid * _HUNDRED * position.quantity
            self.holdings[position.symbol] = Holding(
                next(self._ids), position.symbol, position.quantity, basis,
                position.date_acquired or market.clock.start - dt.timedelta(days=1))
        for seeded in scenario.orders:
            self._seed_order(seeded)

    # -- placing ----------------------------------------------------------------------------

    def reject_next(self, count: int, reason: str, after_accept: bool) -> None:
        self._reject_queue.extend([(reason, after_accept)] * count)

    def check(self, request: OrderRequest) -> list[str]:
        """Business validation, Tradier's HTTP 200 + ``errors`` cases."""
        errors: list[str] = []
        seen: set[str] = set()
        for leg in request.legs:
            contract = self.market.contract(leg.option_symbol)
            if contract is None:
                errors.append(f"Invalid option symbol: {leg.option_symbol}")
                continue
            if contract.underlying.symbol != request.symbol:
                errors.append(f"Leg {leg.option_symbol} is not an option on {request.symbol}")
            if leg.option_symbol in seen:
                errors.append(f"Duplicate leg {leg.option_symbol}")
            seen.add(leg.option_symbol)
            errors.extend(self._check_position(leg))
        if request.order_class == "multileg":
            buys = any(leg.side.startswith("buy") for leg in request.legs)
            sells = any(leg.side.startswith("sell") for leg in request.legs)
            if request.type == "debit" and not buys:
                errors.append("A debit order needs at least one buy leg")
            if request.type == "credit" and not sells:
                errors.append("A credit order needs at least one sell leg")
        return errors

    def _check_position(self, leg: LegRequest) -> list[str]:
        held = self.holdings.get(leg.option_symbol)
        quantity = held.quantity if held else 0
        if leg.side.endswith("_to_open"):
            if (leg.side == "buy_to_open" and quantity < 0) or (
                leg.side == "sell_to_open" and quantity > 0
            ):
                return [f"Cannot {leg.side} {leg.option_symbol}: position is "
                        f"{quantity}; close it instead"]
            return []
        wanted_sign = 1 if leg.side == "sell_to_close" else -1
        available = max(0, quantity * wanted_sign) - self._closing_in_flight(leg)
        if available <= 0:
            kind = "long" if wanted_sign > 0 else "short"
            return [f"Cannot {leg.side} {leg.option_symbol}: no {kind} position to close"]
        if leg.quantity > available:
            return [f"Cannot {leg.side} {leg.quantity} {leg.option_symbol}: only "
                    f"{available} available to close"]
        return []

    def _closing_in_flight(self, leg: LegRequest) -> int:
        total = 0
        for order in self.orders.values():
            if order.is_final:
                continue
            for other in order.legs:
                if other.option_symbol == leg.option_symbol and other.side == leg.side:
                    total += other.quantity - other.exec_quantity
        return total

    def place(self, request: OrderRequest, *, origin: str = "api") -> Placement:
        now = self.market.clock.now()
        order = self._new_order(request, now, origin)
        errors = self.check(request)
        reject_after = None
        if not errors and self._reject_queue:
            reason, after_accept = self._reject_queue.pop(0)
            if after_accept:
                reject_after = reason
            else:
                errors = [reason]
        if errors:
            order.status = "rejected"
            order.reason_description = "; ".join(errors)
            self.rejected.append(order)
            return Placement(None, tuple(errors))
        order.id = next(self._ids)
        order.reject_after_accept = reject_after
        self.orders[order.id] = order
        self._notify(order)
        return Placement(order.id)

    def preview(self, request: OrderRequest) -> Placement:
        return Placement(None, tuple(self.check(request)))

    def _new_order(self, request: OrderRequest, now: dt.datetime, origin: str) -> Order:
        units = math.gcd(*(leg.quantity for leg in request.legs))
        legs = [
            OrderLeg(next(self._ids), leg.option_symbol, leg.side, leg.quantity,
                     leg.quantity // units)
            for leg in request.legs
        ]
        return Order(
            id=None, order_class=request.order_class, symbol=request.symbol,
            type=request.type, duration=request.duration, quantity=units, legs=legs,
            price=request.price, stop=request.stop, tag=request.tag, create_date=now,
            transaction_date=now, origin=origin,
        )

    def _seed_order(self, seeded: OpenOrder) -> None:
        first = self.market.contract(seeded.legs[0].option_symbol)
        assert first is not None  # the scenario checked the roots
        request = OrderRequest(
            order_class=seeded.order_class, symbol=first.underlying.symbol, type=seeded.type,
            duration=seeded.duration, price=seeded.price, tag=seeded.tag,
            legs=tuple(LegRequest(leg.option_symbol, leg.side, leg.quantity)
                       for leg in seeded.legs),
        )
        order = self._new_order(request, self.market.clock.now(), "scenario")
        order.id = next(self._ids)
        self._set_status(order, "open", notify=False)
        self.orders[order.id] = order

    # -- changing ---------------------------------------------------------------------------

    def modify(self, order_id: int, *, type: str | None, duration: str | None,
               price: Decimal | None, stop: Decimal | None) -> str | None:
        """Change an open order; returns an error text (for a 400) or None."""
        order = self.orders.get(order_id)
        if order is None:
            return "order not found"
        if order.is_final:
            return f"order already in finalized state: {order.status}"
        order.type = type or order.type
        order.duration = duration or order.duration
        order.price = price if price is not None else order.price
        order.stop = stop if stop is not None else order.stop
        now = self.market.clock.now()
        order.transaction_date = now
        order.modifications.append(Modification(now, order.price, order.type, order.duration))
        return None

    def cancel(self, order_id: int, *, reason: str | None = None) -> str | None:
        """Cancel an order; returns an error text (for a 400) or None."""
        order = self.orders.get(order_id)
        if order is None:
            return "order not found"
        if order.is_final:
            return f"order already in finalized state: {order.status}"
        order.reason_description = reason
        self._set_status(order, "canceled")
        return None

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if not o.is_final]

    # -- the clock moves --------------------------------------------------------------------

    def on_tick(self) -> None:
        """Accept pending orders, expire day orders after the close (13:00 on a half day),
        fill what crosses."""
        now = self.market.clock.now()
        after_close = now >= self.market.close_on(now.astimezone(EASTERN).date())
        for order in list(self.orders.values()):
            if order.is_final:
                continue
            if order.status == "pending":
                if order.reject_after_accept is not None:
                    order.reason_description = order.reject_after_accept
                    self._set_status(order, "rejected")
                    continue
                self._set_status(order, "open")
                continue
            expires = order.create_date.astimezone(EASTERN).date() < now.astimezone(EASTERN).date()
            if order.duration == "day" and (after_close or expires):
                self._set_status(order, "expired")
                continue
            self._try_fill(order)

    def _natural_cents(self, order: Order) -> int | None:
        """Net cents per spread to do the order now: positive = pay (debit)."""
        net = 0
        for leg in order.legs:
            quote = self.market.true_quote(leg.option_symbol)
            if quote is None:
                return None
            net += leg.ratio * (quote.ask if leg.is_buy else -quote.bid)
        return net

    def _crosses(self, order: Order, net: int) -> bool:
        limit = None if order.price is None else int(order.price * 100)
        kind = order.type
        if kind == "market":
            return True
        if kind == "even":
            return net <= 0
        if kind == "debit":
            return limit is not None and net <= limit
        if kind == "credit":
            return limit is not None and -net >= limit
        buy = order.legs[0].is_buy
        if kind in {"stop", "stop_limit"}:
            stop = int((order.stop or Decimal(0)) * 100)
            triggered = net >= stop if buy else -net <= stop
            if not triggered:
                return False
            if kind == "stop":
                return True
        if limit is None:
            return False
        return net <= limit if buy else -net >= limit

    def _try_fill(self, order: Order) -> None:
        if self.market.offset - order.last_fill_offset < self._fill_interval:
            return
        net = self._natural_cents(order)
        if net is None or not self._crosses(order, net):
            return
        lot = order.remaining if self._fill_lot == 0 else min(self._fill_lot, order.remaining)
        self._fill(order, lot)

    def _fill(self, order: Order, lot: int) -> None:
        now = self.market.clock.now()
        net = 0
        for leg in order.legs:
            quote = self.market.true_quote(leg.option_symbol)
            assert quote is not None
            cents = quote.ask if leg.is_buy else quote.bid
            net += leg.ratio * (cents if leg.is_buy else -cents)
            price = Decimal(cents) / 100
            quantity = lot * leg.ratio
            self._book_fill(leg.option_symbol, quantity if leg.is_buy else -quantity, price, now)
            leg.exec_quantity += quantity
            leg.filled_value += price * quantity
            leg.last_fill_price, leg.last_fill_quantity = price, quantity
            self.market.record_trade(leg.option_symbol, cents, quantity)
        price = (Decimal(abs(net)) / 100).quantize(_CENT)
        order.exec_quantity += lot
        order.filled_value += price * lot
        order.last_fill_price, order.last_fill_quantity = price, lot
        order.last_fill_offset = self.market.offset
        order.fills.append(Fill(now, lot, price))
        status = "filled" if order.remaining == 0 else "partially_filled"
        for leg in order.legs:
            leg.status = "filled" if leg.exec_quantity == leg.quantity else "partially_filled"
        self._set_status(order, status, legs_too=False)

    def _book_fill(self, symbol: str, delta: int, price: Decimal, now: dt.datetime) -> None:
        """Move cash and the position for one leg fill (``delta`` > 0 bought)."""
        amount = price * _HUNDRED * abs(delta)
        self.cash += -amount if delta > 0 else amount
        held = self.holdings.get(symbol)
        if held is None or held.quantity == 0:
            self.holdings[symbol] = Holding(next(self._ids), symbol, delta,
                                            amount if delta > 0 else -amount, now)
            return
        if (held.quantity > 0) == (delta > 0):
            held.quantity += delta
            held.cost_basis += amount if delta > 0 else -amount
            return
        closing = min(abs(delta), abs(held.quantity))
        per_contract = held.cost_basis / held.quantity  # positive for both longs and shorts
        if held.quantity > 0:
            self.realized_pnl += (price * _HUNDRED - per_contract) * closing
        else:
            self.realized_pnl += (per_contract - price * _HUNDRED) * closing
        remaining = held.quantity + (closing if delta > 0 else -closing)
        held.cost_basis = per_contract * remaining
        held.quantity = remaining
        if remaining == 0:
            del self.holdings[symbol]
        leftover = abs(delta) - closing
        if leftover:  # the fill flipped the position: the rest opens the other side
            self.holdings.pop(symbol, None)
            sign = 1 if delta > 0 else -1
            self.holdings[symbol] = Holding(next(self._ids), symbol, sign * leftover,
                                            sign * price * _HUNDRED * leftover, now)

    def _set_status(self, order: Order, status: str, *, notify: bool = True,
                    legs_too: bool = True) -> None:
        order.status = status
        order.transaction_date = self.market.clock.now()
        if legs_too:
            for leg in order.legs:
                leg.status = status
        if notify:
            self._notify(order)

    def _notify(self, order: Order) -> None:
        """One account event for the order, then (multileg) one per leg."""
        self.on_event(order, None)
        if order.order_class == "multileg":
            for leg in order.legs:
                self.on_event(order, leg)

    # -- outside the API --------------------------------------------------------------------

    def manual_close(self, symbols: list[str], quantity: int | None = None) -> int | None:
        """Someone closes positions by hand at the broker: an untagged market order (filled on
        the next tick). Returns its id, or None when nothing is held."""
        legs = []
        for symbol in symbols:
            held = self.holdings.get(symbol)
            if held is None:
                continue
            size = abs(held.quantity) if quantity is None else min(quantity, abs(held.quantity))
            side = "sell_to_close" if held.quantity > 0 else "buy_to_close"
            legs.append(LegRequest(symbol, side, size))
        contract = self.market.contract(legs[0].option_symbol) if legs else None
        if contract is None:
            return None
        request = OrderRequest(
            order_class="multileg" if len(legs) > 1 else "option",
            symbol=contract.underlying.symbol, type="market", duration="day", legs=tuple(legs))
        order = self._new_order(request, self.market.clock.now(), "manual")
        order.id = next(self._ids)
        self.orders[order.id] = order
        self._set_status(order, "open")
        return order.id

    def broker_cancel(self, order_id: int | None = None, tag: str | None = None) -> list[int]:
        """The broker cancels open orders (by id, by tag, or all of them)."""
        cancelled = []
        for order in self.open_orders():
            if order_id is not None and order.id != order_id:
                continue
            if tag is not None and order.tag != tag:
                continue
            assert order.id is not None
            self.cancel(order.id, reason="Canceled by broker")
            cancelled.append(order.id)
        return cancelled
