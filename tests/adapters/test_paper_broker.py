"""PaperBroker: an in-memory OrderBroker filling against the quotes it is given, by the
simulator's fill rules (natural from the touch, limit crossing, lot-by-lot partial fills,
position checks), with Tradier's error semantics and an order-event stream."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import trio
import trio.testing

from engine.brokers import (
    BrokerOrderStatus,
    BrokerOrderUpdate,
    BrokerPosition,
    OrderBroker,
    OrderDuration,
)
from engine.brokers.paper import EVENT_BUFFER, PaperBroker
from engine.brokers.paper.book import PaperLeg, PaperOrder, natural_price, order_crosses
from engine.conflate import ConflatingMailbox
from engine.domain.orders import ExitOrder, OrderClass
from engine.errors import BrokerUnavailable, OrderAlreadyFinal, OrderRejected
from engine.messages import (
    FeedEvent,
    FeedState,
    FeedStatusChanged,
    OrderLeg,
    OrderLegSide,
    OrderType,
    Quote,
)

SHORT_650 = "SPY251219P00650000"  # the short leg of a bull put credit spread
LONG_645 = "SPY251219P00645000"  # its long leg
NOW = dt.datetime(2025, 12, 9, 15, 0, tzinfo=dt.UTC)

D = Decimal


def _broker(spreads: int = 2, *, lot_size: int | None = None) -> PaperBroker:
    """An account short ``spreads`` 650/645 bull put spreads opened for 2.50 - 0.50 credit."""
    return PaperBroker(
        account_id="PAPER1",
        positions=[
            BrokerPosition(symbol=SHORT_650, quantity=-spreads, cost_basis=D(-250) * spreads),
            BrokerPosition(symbol=LONG_645, quantity=spreads, cost_basis=D(50) * spreads),
        ],
        clock=lambda: NOW,
        lot_size=lot_size,
    )


def _close(spreads: int, limit: str | None = "1.00") -> ExitOrder:
    """Close ``spreads`` credit spreads: a debit order (a market order when ``limit`` is None)."""
    return ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT if limit is not None else OrderType.MARKET,
        quantity=spreads,
        limit_price=None if limit is None else D(limit),
        legs=(
            OrderLeg(option_symbol=SHORT_650, side=OrderLegSide.BUY_TO_CLOSE, quantity=spreads),
            OrderLeg(option_symbol=LONG_645, side=OrderLegSide.SELL_TO_CLOSE, quantity=spreads),
        ),
    )


def _quote(symbol: str, bid: str | None, ask: str | None) -> Quote:
    return Quote(
        symbol=symbol,
        bid=None if bid is None else D(bid),
        ask=None if ask is None else D(ask),
        received_at=0.0,
    )


def _market(broker: PaperBroker, short_ask: str, long_bid: str) -> None:
    """Quote both legs; the close's natural is ``short_ask - long_bid``."""
    broker.on_quotes(
        [
            _quote(SHORT_650, str(D(short_ask) - D("0.05")), short_ask),
            _quote(LONG_645, long_bid, str(D(long_bid) + D("0.05"))),
        ]
    )


async def _held(broker: PaperBroker) -> dict[str, tuple[int, Decimal]]:
    return {p.symbol: (p.quantity, p.cost_basis) for p in await broker.get_positions()}


def test_paper_broker_is_an_order_broker() -> None:
    # mypy checks this assignment structurally against the Protocol.
    broker: OrderBroker = _broker()
    assert broker is not None


async def test_credit_spread_close_fills_once_the_natural_crosses_the_debit_limit() -> None:
    broker = _broker()
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    assert order_id == "paper-1"

    broker.on_quote(_quote(SHORT_650, "0.50", "0.60"))  # one leg alone: no natural yet
    _market(broker, short_ask="1.15", long_bid="0.10")  # natural 1.05 > 1.00
    assert (await broker.get_order(order_id)).status is BrokerOrderStatus.OPEN
    _market(broker, short_ask="1.01", long_bid="0.01")  # natural exactly 1.00: crosses
    order = await broker.get_order(order_id)
    assert order.status is BrokerOrderStatus.FILLED
    assert (order.filled_quantity, order.remaining_quantity) == (2, 0)
    assert order.avg_fill_price == D("1.00")
    assert order.client_order_id == "sw-1-a-1"
    assert [(leg.filled_quantity, leg.avg_fill_price) for leg in order.legs] == [
        (2, D("1.01")),
        (2, D("0.01")),
    ]
    assert await broker.get_positions() == []
    assert broker.wanted_symbols() == frozenset()


async def test_fill_is_at_the_natural_so_price_improvement_is_kept() -> None:
    broker = _broker()
    _market(broker, short_ask="0.80", long_bid="0.05")  # natural 0.75, limit 1.00
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    order = await broker.get_order(order_id)
    assert order.status is BrokerOrderStatus.FILLED  # filled on submit, on the quotes it had
    assert order.avg_fill_price == D("0.75")


async def test_market_order_fills_at_the_natural() -> None:
    broker = _broker()
    _market(broker, short_ask="3.10", long_bid="0.60")
    order_id = await broker.submit_order(_close(1, limit=None), client_order_id="sw-1-m-1")
    order = await broker.get_order(order_id)
    assert (order.status, order.avg_fill_price, order.limit_price) == (
        BrokerOrderStatus.FILLED,
        D("2.50"),
        None,
    )
    assert await _held(broker) == {SHORT_650: (-1, D(-250)), LONG_645: (1, D(50))}


async def test_a_missing_quote_side_means_no_fill() -> None:
    broker = _broker()
    order_id = await broker.submit_order(_close(2, limit=None), client_order_id="sw-1-m-1")
    broker.on_quotes([_quote(SHORT_650, "0.90", "1.00"), _quote(LONG_645, None, "0.10")])
    assert (await broker.get_order(order_id)).status is BrokerOrderStatus.OPEN
    broker.on_quote(_quote(LONG_645, "0.00", "0.10"))  # a zero bid is a real quote
    assert (await broker.get_order(order_id)).avg_fill_price == D("1.00")


async def test_debit_spread_close_is_a_credit_order_priced_as_the_credit_received() -> None:
    # Long the 650 put, short the 645 put (a bear put debit spread), closed for a credit.
    broker = PaperBroker(
        account_id="PAPER1",
        positions=[
            BrokerPosition(symbol=SHORT_650, quantity=1, cost_basis=D(300)),
            BrokerPosition(symbol=LONG_645, quantity=-1, cost_basis=D(-100)),
        ],
        clock=lambda: NOW,
    )
    close = ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.CREDIT,
        quantity=1,
        limit_price=D("3.00"),
        legs=(
            OrderLeg(option_symbol=SHORT_650, side=OrderLegSide.SELL_TO_CLOSE, quantity=1),
            OrderLeg(option_symbol=LONG_645, side=OrderLegSide.BUY_TO_CLOSE, quantity=1),
        ),
    )
    order_id = await broker.submit_order(close, client_order_id="sw-2-a-1")
    broker.on_quotes([_quote(SHORT_650, "3.50", "3.60"), _quote(LONG_645, "0.50", "0.60")])
    assert (await broker.get_order(order_id)).status is BrokerOrderStatus.OPEN  # 2.90 < 3.00
    broker.on_quote(_quote(SHORT_650, "3.70", "3.80"))  # receive 3.70 - 0.60 = 3.10
    order = await broker.get_order(order_id)
    assert (order.status, order.avg_fill_price) == (BrokerOrderStatus.FILLED, D("3.10"))
    assert await broker.get_positions() == []


async def test_a_limit_never_crossed_stays_open_until_modified_across() -> None:
    broker = _broker()
    order_id = await broker.submit_order(_close(2, limit="0.50"), client_order_id="sw-1-a-1")
    for _ in range(5):
        _market(broker, short_ask="0.70", long_bid="0.05")  # natural 0.65 > 0.50
    order = await broker.get_order(order_id)
    assert (order.status, order.filled_quantity) == (BrokerOrderStatus.OPEN, 0)
    assert await _held(broker) == {SHORT_650: (-2, D(-500)), LONG_645: (2, D(100))}

    await broker.modify_price(order_id, D("0.65"))  # crosses the quotes it has, at once
    order = await broker.get_order(order_id)
    assert (order.status, order.limit_price, order.avg_fill_price) == (
        BrokerOrderStatus.FILLED,
        D("0.65"),
        D("0.65"),
    )
    assert await broker.get_positions() == []


async def test_partial_fills_lot_by_lot_reduce_positions_by_exactly_what_filled() -> None:
    broker = _broker(3, lot_size=1)
    order_id = await broker.submit_order(_close(3), client_order_id="sw-1-a-1")

    _market(broker, short_ask="0.90", long_bid="0.05")  # 0.85: one lot per chance to fill
    order = await broker.get_order(order_id)
    assert order.status is BrokerOrderStatus.PARTIALLY_FILLED
    assert (order.filled_quantity, order.remaining_quantity) == (1, 2)
    assert [leg.filled_quantity for leg in order.legs] == [1, 1]
    # Cost basis is kept per contract on what remains.
    assert await _held(broker) == {SHORT_650: (-2, D(-500)), LONG_645: (2, D(100))}

    _market(broker, short_ask="1.20", long_bid="0.05")  # 1.15: does not cross, nothing moves
    assert (await broker.get_order(order_id)).filled_quantity == 1

    _market(broker, short_ask="0.80", long_bid="0.05")  # 0.75
    order = await broker.get_order(order_id)
    assert (order.filled_quantity, order.remaining_quantity) == (2, 1)
    assert order.avg_fill_price == D("0.80")  # (0.85 + 0.75) / 2
    assert await _held(broker) == {SHORT_650: (-1, D(-250)), LONG_645: (1, D(50))}

    _market(broker, short_ask="0.80", long_bid="0.05")
    order = await broker.get_order(order_id)
    assert (order.status, order.filled_quantity, order.remaining_quantity) == (
        BrokerOrderStatus.FILLED,
        3,
        0,
    )
    assert await broker.get_positions() == []


async def test_cancel_a_working_order_after_a_partial_fill() -> None:
    broker = _broker(3, lot_size=1)
    order_id = await broker.submit_order(_close(3), client_order_id="sw-1-a-1")
    _market(broker, short_ask="0.90", long_bid="0.05")
    await broker.cancel_order(order_id)
    _market(broker, short_ask="0.10", long_bid="0.05")  # would cross: a cancelled order waits
    order = await broker.get_order(order_id)
    assert (order.status, order.filled_quantity) == (BrokerOrderStatus.CANCELLED, 1)
    assert await _held(broker) == {SHORT_650: (-2, D(-500)), LONG_645: (2, D(100))}
    assert broker.wanted_symbols() == frozenset()
    # What was working is free to close again.
    again = await broker.submit_order(_close(2), client_order_id="sw-1-a-2")
    assert again == "paper-2"


async def test_cancel_or_modify_a_filled_order_raises_already_final() -> None:
    broker = _broker()
    _market(broker, short_ask="0.80", long_bid="0.05")
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    with pytest.raises(OrderAlreadyFinal) as cancelled:
        await broker.cancel_order(order_id)
    assert cancelled.value.state == "filled"
    with pytest.raises(OrderAlreadyFinal) as modified:
        await broker.modify_price(order_id, D("0.50"))
    assert modified.value.state == "filled"
    assert (await broker.get_order(order_id)).status is BrokerOrderStatus.FILLED


async def test_cancel_twice_reports_canceled_as_tradier_spells_it() -> None:
    broker = _broker()
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    await broker.cancel_order(order_id)
    with pytest.raises(OrderAlreadyFinal) as again:
        await broker.cancel_order(order_id)
    assert again.value.state == "canceled"


async def test_unknown_order_id_is_rejected() -> None:
    broker = _broker()
    with pytest.raises(OrderRejected):
        await broker.get_order("paper-9")
    with pytest.raises(OrderRejected):
        await broker.cancel_order("paper-9")


async def test_closing_more_than_held_is_rejected_and_changes_nothing() -> None:
    broker = _broker(2)
    _market(broker, short_ask="0.80", long_bid="0.05")  # would cross at once
    with pytest.raises(OrderRejected) as rejected:
        await broker.submit_order(_close(3), client_order_id="sw-1-a-1")
    assert rejected.value.reasons == (
        f"Cannot buy_to_close 3 {SHORT_650}: only 2 available to close",
        f"Cannot sell_to_close 3 {LONG_645}: only 2 available to close",
    )
    assert await broker.get_orders() == []
    assert await _held(broker) == {SHORT_650: (-2, D(-500)), LONG_645: (2, D(100))}
    assert broker.wanted_symbols() == frozenset()


async def test_closes_already_working_count_against_what_is_held() -> None:
    broker = _broker(2)
    await broker.submit_order(_close(1, limit="0.10"), client_order_id="sw-1-a-1")
    with pytest.raises(OrderRejected):
        await broker.submit_order(_close(2), client_order_id="sw-1-b-1")
    assert len(await broker.get_orders()) == 1


async def test_closing_a_leg_held_the_other_way_is_rejected() -> None:
    broker = _broker(2)
    flipped = ExitOrder(
        order_class=OrderClass.OPTION,
        underlying="SPY",
        order_type=OrderType.LIMIT,
        quantity=1,
        limit_price=D("1.00"),
        legs=(OrderLeg(option_symbol=SHORT_650, side=OrderLegSide.SELL_TO_CLOSE, quantity=1),),
    )
    with pytest.raises(OrderRejected) as rejected:
        await broker.submit_order(flipped, client_order_id="sw-1-a-1")
    assert rejected.value.reasons == (
        f"Cannot sell_to_close {SHORT_650}: no long position to close",
    )


async def test_invalid_symbol_and_bad_shape_are_rejected() -> None:
    broker = _broker()
    bad = ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT,
        quantity=1,
        limit_price=D("1.00"),
        legs=(
            OrderLeg(option_symbol="SPY", side=OrderLegSide.SELL_TO_CLOSE, quantity=1),
            OrderLeg(option_symbol=LONG_645, side=OrderLegSide.SELL_TO_CLOSE, quantity=1),
        ),
    )
    with pytest.raises(OrderRejected) as rejected:
        await broker.submit_order(bad, client_order_id="sw-1-a-1")
    assert rejected.value.reasons == (
        "Invalid option symbol: SPY",
        "A debit order needs at least one buy leg",
    )


async def test_single_leg_limit_sell_fills_at_the_bid() -> None:
    broker = _broker()
    order = ExitOrder(
        order_class=OrderClass.OPTION,
        underlying="SPY",
        order_type=OrderType.LIMIT,
        quantity=2,
        limit_price=D("0.40"),
        legs=(OrderLeg(option_symbol=LONG_645, side=OrderLegSide.SELL_TO_CLOSE, quantity=2),),
    )
    order_id = await broker.submit_order(order, client_order_id="sw-1-a-1")
    broker.on_quote(_quote(LONG_645, "0.35", "0.45"))
    assert (await broker.get_order(order_id)).status is BrokerOrderStatus.OPEN
    broker.on_quote(_quote(LONG_645, "0.42", "0.45"))
    filled = await broker.get_order(order_id)
    assert (filled.multileg, filled.quantity, filled.avg_fill_price) == (False, 2, D("0.42"))
    assert await _held(broker) == {SHORT_650: (-2, D(-500))}


async def test_order_events_stream_delivers_updates_in_order() -> None:
    broker = _broker(2, lot_size=1)
    with trio.fail_after(5):
        async with broker.order_events() as events:
            filled_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
            _market(broker, short_ask="0.90", long_bid="0.05")
            _market(broker, short_ask="0.70", long_bid="0.05")
            seen = [await events.receive() for _ in range(3)]
        assert seen == [
            BrokerOrderUpdate(
                broker_order_id=filled_id,
                client_order_id="sw-1-a-1",
                status=BrokerOrderStatus.OPEN,
                filled_quantity=0,
                remaining_quantity=2,
                at=NOW,
            ),
            BrokerOrderUpdate(
                broker_order_id=filled_id,
                client_order_id="sw-1-a-1",
                status=BrokerOrderStatus.PARTIALLY_FILLED,
                filled_quantity=1,
                remaining_quantity=1,
                last_fill_quantity=1,
                last_fill_price=D("0.85"),
                avg_fill_price=D("0.85"),
                at=NOW,
            ),
            BrokerOrderUpdate(
                broker_order_id=filled_id,
                client_order_id="sw-1-a-1",
                status=BrokerOrderStatus.FILLED,
                filled_quantity=2,
                remaining_quantity=0,
                last_fill_quantity=1,
                last_fill_price=D("0.65"),
                avg_fill_price=D("0.75"),
                at=NOW,
            ),
        ]


async def test_cancel_is_an_event_on_every_open_stream() -> None:
    broker = _broker()
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    with trio.fail_after(5):
        async with broker.order_events() as first, broker.order_events() as second:
            await broker.cancel_order(order_id)
            updates = [await first.receive(), await second.receive()]
    # Streams opened after the submit see only what happened since: the cancel.
    for update in updates:
        assert update is not None
        assert (update.broker_order_id, update.status) == (order_id, BrokerOrderStatus.CANCELLED)


async def test_a_subscriber_that_falls_behind_is_dropped_and_fills_go_on() -> None:
    spreads = EVENT_BUFFER + 10
    broker = _broker(spreads, lot_size=1)
    async with broker.order_events() as events:
        order_id = await broker.submit_order(_close(spreads), client_order_id="sw-1-a-1")
        for _ in range(spreads):  # one lot per quote batch, nobody reading
            _market(broker, short_ask="0.90", long_bid="0.05")
        order = await broker.get_order(order_id)
        assert order.status is BrokerOrderStatus.FILLED  # the stream never held fills up
        received = 0
        with pytest.raises(BrokerUnavailable):
            while True:
                await events.receive()
                received += 1
        assert received == EVENT_BUFFER  # what was buffered is delivered, then the drop shows


async def test_run_feeds_quotes_from_a_quote_stream_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker = _broker()
    mailbox: ConflatingMailbox[str, FeedEvent] = ConflatingMailbox()
    changed = broker.symbols_changed()
    order_id = await broker.submit_order(_close(2), client_order_id="sw-1-a-1")
    assert changed.is_set()
    assert broker.wanted_symbols() == frozenset({SHORT_650, LONG_645})
    changed = broker.symbols_changed()
    assert not changed.is_set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.run, mailbox)
            mailbox.put(
                "__feed__",
                FeedStatusChanged(state=FeedState.CONNECTED, reason="up", at=NOW),
            )
            mailbox.put(SHORT_650, _quote(SHORT_650, "1.00", "1.10"))
            mailbox.put(LONG_645, _quote(LONG_645, "0.05", "0.10"))
            await trio.testing.wait_all_tasks_blocked()
            assert (await broker.get_order(order_id)).status is BrokerOrderStatus.OPEN
            mailbox.put(SHORT_650, _quote(SHORT_650, "0.85", "0.95"))  # natural 0.90
            await changed.wait()  # the order filled: nothing is wanted any more
            mailbox.close()
    assert broker.wanted_symbols() == frozenset()
    assert (await broker.get_order(order_id)).avg_fill_price == D("0.90")


async def test_quotes_of_symbols_no_longer_followed_are_forgotten() -> None:
    broker = _broker(2)
    await broker.submit_order(_close(1), client_order_id="sw-1-a-1")
    _market(broker, short_ask="0.80", long_bid="0.05")  # fills, the legs stop being followed
    later = await broker.submit_order(_close(1), client_order_id="sw-1-b-1")
    # The old quotes would cross, but they are no longer live: the order waits for new ones.
    assert (await broker.get_order(later)).status is BrokerOrderStatus.OPEN


async def test_a_client_order_id_used_before_is_accepted_like_tradier() -> None:
    broker = _broker(2)
    first = await broker.submit_order(_close(1), client_order_id="sw-1-a-1")
    second = await broker.submit_order(_close(1), client_order_id="sw-1-a-1")
    orders = await broker.get_orders()
    assert [(o.broker_order_id, o.client_order_id) for o in orders] == [
        (first, "sw-1-a-1"),
        (second, "sw-1-a-1"),
    ]
    assert orders[0].created_at == NOW


def test_crossing_rules_match_the_simulator() -> None:
    def order(order_type: OrderType, limit: str | None, side: OrderLegSide) -> PaperOrder:
        return PaperOrder(
            broker_order_id="paper-1",
            client_order_id="t",
            multileg=False,
            order_type=order_type,
            underlying="SPY",
            duration=OrderDuration.DAY,
            quantity=1,
            limit_price=None if limit is None else D(limit),
            legs=[PaperLeg(option_symbol=LONG_645, side=side, quantity=1, ratio=1)],
            created_at=NOW,
            updated_at=NOW,
        )

    credit = order(OrderType.CREDIT, "1.00", OrderLegSide.SELL_TO_CLOSE)
    assert order_crosses(credit, D("-1.00"))  # receive 1.00 >= 1.00
    assert not order_crosses(credit, D("-0.99"))
    buy = order(OrderType.LIMIT, "1.00", OrderLegSide.BUY_TO_CLOSE)
    assert order_crosses(buy, D("1.00")) and not order_crosses(buy, D("1.01"))
    even = order(OrderType.EVEN, None, OrderLegSide.BUY_TO_CLOSE)
    assert order_crosses(even, D(0)) and not order_crosses(even, D("0.01"))
    quotes = {LONG_645: _quote(LONG_645, "0.40", "0.50")}
    assert natural_price(buy.legs, quotes) == D("0.50")
    assert natural_price(credit.legs, quotes) == D("-0.40")
    assert natural_price(buy.legs, {}) is None
