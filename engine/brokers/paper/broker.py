"""The paper broker: an :class:`~engine.brokers.OrderBroker` that fills against live quotes.

:class:`PaperBroker` keeps one paper account in memory (positions, orders, the newest quote per
symbol: :class:`~engine.brokers.paper.book.PaperBook`) and fills its orders by the simulator's
rules (see that module) against whatever quotes it is given, so the engine can paper-trade
against any quote source, live Tradier quotes included.

Quotes come in through :meth:`PaperBroker.on_quote` / :meth:`~PaperBroker.on_quotes`, or
through :meth:`PaperBroker.run`, which drains one QuoteStream mailbox. The composition root
subscribes that mailbox to :meth:`~PaperBroker.wanted_symbols` (the legs of working orders)
and again whenever :meth:`~PaperBroker.symbols_changed` fires.

Semantics follow Tradier's adapter: a refused order raises ``OrderRejected`` with the broker's
words and books nothing; modify/cancel of a finished order raises ``OrderAlreadyFinal``
(``state`` spelled as Tradier spells it); an unknown order id raises ``OrderRejected``. Like
Tradier, a ``client_order_id`` already used is accepted again (the tag is not a key at the
broker; the engine's own ``orders`` table is what keeps it unique). Orders do not expire: a
DAY order works until filled or cancelled (there is no market calendar here).

Every status change and every fill is an update on each open :meth:`~PaperBroker.order_events`
stream. A stream that falls behind is dropped rather than allowed to hold up fills: its
``receive`` then raises ``BrokerUnavailable``, as a lost connection would, and the router
catches up by reading the orders.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal

import trio

from engine.brokers import (
    BrokerOrder,
    BrokerOrderStatus,
    BrokerOrderUpdate,
    BrokerPosition,
    OrderDuration,
)
from engine.brokers.paper.book import PaperBook, PaperOrder
from engine.conflate import ConflatingMailbox
from engine.domain.orders import ExitOrder
from engine.errors import BrokerUnavailable, OrderAlreadyFinal, OrderRejected
from engine.log import Logger, get_logger
from engine.messages import FeedEvent, Quote

__all__ = ["EVENT_BUFFER", "PaperBroker", "PaperOrderEvents"]

EVENT_BUFFER = 1024
"""Updates an order-event subscriber may have unread before it is dropped. One quote batch
makes at most one update per working order and a submit two, so this holds a burst over a
thousand working orders; a router that is further behind than that has stopped reading, and
dropping it (it also polls) is better than blocking fills or buffering without bound."""

_ACTOR = "paper_broker"

# How Tradier spells a final state in "order already in finalized state: <state>".
_TRADIER_STATE: dict[BrokerOrderStatus, str] = {
    BrokerOrderStatus.FILLED: "filled",
    BrokerOrderStatus.CANCELLED: "canceled",
    BrokerOrderStatus.REJECTED: "rejected",
    BrokerOrderStatus.EXPIRED: "expired",
}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PaperBroker:
    """One paper account as an :class:`~engine.brokers.OrderBroker`.

    ``positions`` seeds the account; ``clock`` gives the times written on orders, updates and
    new positions (UTC wall time by default; the market clock in simulation); ``lot_size``
    makes fills partial, that many units per chance to fill (None: the whole remainder).

    Invariants: all state is in ``_book`` and changes only in synchronous methods, so an
    update is published in the same step as the change it reports; ``_wanted`` is the book's
    wanted symbols as of the last change, and ``_symbols_changed`` is set (and replaced) each
    time that set changes.
    """

    def __init__(
        self,
        *,
        account_id: str,
        positions: Iterable[BrokerPosition] = (),
        clock: Callable[[], dt.datetime] | None = None,
        lot_size: int | None = None,
        log: Logger | None = None,
    ) -> None:
        self.account_id = account_id
        self._book = PaperBook(positions, lot_size=lot_size)
        self._clock = clock if clock is not None else _utc_now
        self._log = (log if log is not None else get_logger(_ACTOR)).bind(account_id=account_id)
        self._subscribers: list[trio.MemorySendChannel[BrokerOrderUpdate]] = []
        self._wanted: frozenset[str] = frozenset()
        self._symbols_changed = trio.Event()

    # -- reads --------------------------------------------------------------------------------

    async def get_positions(self) -> list[BrokerPosition]:
        await trio.lowlevel.checkpoint()
        return sorted(self._book.positions.values(), key=lambda p: p.symbol)

    async def get_orders(self) -> list[BrokerOrder]:
        await trio.lowlevel.checkpoint()
        return [order.view() for order in self._book.orders.values()]

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        await trio.lowlevel.checkpoint()
        return self._order(broker_order_id).view()

    def _order(self, broker_order_id: str) -> PaperOrder:
        order = self._book.orders.get(broker_order_id)
        if order is None:
            raise OrderRejected(f"paper: order {broker_order_id} not found", reasons=("not found",))
        return order

    # -- writes -------------------------------------------------------------------------------

    async def submit_order(
        self,
        order: ExitOrder,
        *,
        client_order_id: str,
        duration: OrderDuration = OrderDuration.DAY,
    ) -> str:
        await trio.lowlevel.checkpoint()
        errors = self._book.check(order)
        if errors:
            self._log.info("paper_broker.rejected", client_order_id=client_order_id, reasons=errors)
            raise OrderRejected(f"paper: rejected: {'; '.join(errors)}", reasons=tuple(errors))
        paper = self._book.accept(
            order, client_order_id=client_order_id, duration=duration, now=self._clock()
        )
        self._log.info(
            "paper_broker.accepted",
            client_order_id=client_order_id,
            broker_order_id=paper.broker_order_id,
            order_type=paper.order_type,
            quantity=paper.quantity,
            limit_price=paper.limit_price,
        )
        self._publish(paper.update())
        self._note_symbols()
        self._fill([paper])
        return paper.broker_order_id

    async def modify_price(self, broker_order_id: str, limit_price: Decimal) -> None:
        await trio.lowlevel.checkpoint()
        order = self._working(broker_order_id, "modify")
        if order.limit_price is None:
            raise OrderRejected(
                f"paper: order {broker_order_id} is a market order: it has no price to move",
                reasons=("market order",),
            )
        if not limit_price.is_finite() or limit_price <= 0:
            raise OrderRejected(
                f"paper: price {limit_price} is not a positive price", reasons=("bad price",)
            )
        previous = order.limit_price
        order.limit_price, order.updated_at = limit_price, self._clock()
        self._log.info(
            "paper_broker.modified",
            broker_order_id=broker_order_id,
            previous_price=previous,
            limit_price=limit_price,
        )
        # Like the simulator, a modify is no account event; the new limit may cross at once.
        self._fill([order])

    async def cancel_order(self, broker_order_id: str) -> None:
        await trio.lowlevel.checkpoint()
        order = self._working(broker_order_id, "cancel")
        order.status, order.updated_at = BrokerOrderStatus.CANCELLED, self._clock()
        self._log.info(
            "paper_broker.cancelled",
            broker_order_id=broker_order_id,
            filled_quantity=order.filled_quantity,
        )
        self._publish(order.update())
        self._note_symbols()

    def _working(self, broker_order_id: str, what: str) -> PaperOrder:
        order = self._order(broker_order_id)
        if order.is_final:
            state = _TRADIER_STATE[order.status]
            text = f"order already in finalized state: {state}"
            raise OrderAlreadyFinal(f"paper: {what} order: {text}", state=state, reasons=(text,))
        return order

    # -- quotes and fills -----------------------------------------------------------------------

    def on_quote(self, quote: Quote) -> None:
        """Take one quote and fill what it lets fill."""
        self.on_quotes((quote,))

    def on_quotes(self, quotes: Iterable[Quote]) -> None:
        """Take a batch of quotes (newest per symbol last), then give each working order on
        one of their symbols one chance to fill: one lot per batch, not one per leg quoted."""
        symbols: set[str] = set()
        for quote in quotes:
            self._book.quotes[quote.symbol] = quote
            symbols.add(quote.symbol)
        touched = [
            order
            for order in self._book.working()
            if any(leg.option_symbol in symbols for leg in order.legs)
        ]
        if touched:
            self._fill(touched)

    async def run(
        self,
        mailbox: ConflatingMailbox[str, FeedEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Feed the quotes of a QuoteStream mailbox to :meth:`on_quotes` until cancelled (or
        until the mailbox is closed and drained). Feed-status and trade items are ignored:
        a dead feed simply brings no quotes, and nothing fills on stale prices it never sent."""
        task_status.started()
        while True:
            try:
                batch = await mailbox.get_batch()
            except trio.EndOfChannel:
                return
            self.on_quotes(item for item in batch.values() if isinstance(item, Quote))

    def _fill(self, orders: list[PaperOrder]) -> None:
        now = self._clock()
        finished = False
        for order in orders:
            filled = self._book.try_fill(order, now)
            if filled is None:
                continue
            lot, price = filled
            self._log.info(
                "paper_broker.filled",
                broker_order_id=order.broker_order_id,
                client_order_id=order.client_order_id,
                last_fill_quantity=lot,
                last_fill_price=price,
                filled_quantity=order.filled_quantity,
                remaining_quantity=order.remaining,
            )
            self._publish(order.update(last_fill_quantity=lot, last_fill_price=price))
            finished = finished or order.is_final
        if finished:  # only a finished order can change what is wanted
            self._note_symbols()

    # -- the symbols working orders need -------------------------------------------------------

    def wanted_symbols(self) -> frozenset[str]:
        """The option symbols of every working order: what the quote feed must deliver."""
        return self._wanted

    def symbols_changed(self) -> trio.Event:
        """An event set the next time :meth:`wanted_symbols` changes (ask again after it
        fires: each change sets the current event and makes a new one)."""
        return self._symbols_changed

    def _note_symbols(self) -> None:
        wanted = self._book.wanted_symbols()
        if wanted == self._wanted:
            return
        self._book.forget_quotes(self._wanted - wanted)
        self._wanted = wanted
        self._symbols_changed.set()
        self._symbols_changed = trio.Event()

    # -- order events ---------------------------------------------------------------------------

    @asynccontextmanager
    async def order_events(self) -> AsyncIterator[PaperOrderEvents]:
        send, receive = trio.open_memory_channel[BrokerOrderUpdate](EVENT_BUFFER)
        self._subscribers.append(send)
        try:
            with send, receive:
                yield PaperOrderEvents(receive)
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)

    def _publish(self, update: BrokerOrderUpdate) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(update)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # Closing our end lets the reader drain what it has, then see EndOfChannel.
                self._subscribers.remove(send)
                send.close()
                self._log.warning("paper_broker.event_stream_dropped", buffer=EVENT_BUFFER)


class PaperOrderEvents:
    """One subscription to the paper broker's updates, as an
    :class:`~engine.brokers.OrderEventSource`."""

    def __init__(self, receive: trio.MemoryReceiveChannel[BrokerOrderUpdate]) -> None:
        self._receive = receive

    async def receive(self) -> BrokerOrderUpdate | None:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise BrokerUnavailable(
                "paper: order-event stream dropped (the reader fell behind); read the orders"
            ) from None
