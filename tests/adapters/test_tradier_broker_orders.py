"""TradierBroker as an OrderBroker: Tradier's orders and order events as broker-neutral types,
submits routed to the right Tradier call, and a whole order life on the simulator."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import msgspec
import pytest
import trio

from engine.brokers import (
    BrokerOrder,
    BrokerOrderLeg,
    BrokerOrderStatus,
    BrokerOrderUpdate,
    OrderBroker,
)
from engine.brokers.tradier import wire
from engine.brokers.tradier.broker import (
    TradierBroker,
    order_from_wire,
    status_from_wire,
    update_from_wire,
)
from engine.brokers.tradier.rest import TradierRest
from engine.domain.orders import ExitOrder, OrderClass, build_exit_order, client_order_id
from engine.domain.spread import Leg, Spread
from engine.domain.strategy import Strategy
from engine.errors import BrokerAnswerInvalid, ConfigError, OrderAlreadyFinal
from engine.messages import OrderLeg, OrderLegSide, OrderType
from tests.sim.helpers import SPY_PUT_645, SPY_PUT_650, start_sim

MULTILEG: dict[str, Any] = {
    "id": 228749,
    "type": "debit",
    "symbol": "SPY",
    "side": "buy",
    "quantity": 2.00000000,
    "status": "partially_filled",
    "duration": "day",
    "price": 1.25,
    "avg_fill_price": 1.21,
    "exec_quantity": 1.00000000,
    "remaining_quantity": 1.00000000,
    "create_date": "2025-12-09T14:45:00.000Z",
    "transaction_date": "2025-12-09T14:46:30.500Z",
    "class": "multileg",
    "num_legs": 2,
    "strategy": "spread",
    "tag": "sw-7-7-abc-1",
    "leg": [
        {
            "id": 228750,
            "option_symbol": SPY_PUT_650,
            "side": "buy_to_close",
            "quantity": 2.0,
            "status": "partially_filled",
            "exec_quantity": 1.0,
            "avg_fill_price": 2.50,
        },
        {
            "id": 228751,
            "option_symbol": SPY_PUT_645,
            "side": "sell_to_close",
            "quantity": 2.0,
            "status": "partially_filled",
            "exec_quantity": 1.0,
            "avg_fill_price": 1.29,
        },
    ],
}


def _view(record: dict[str, Any]) -> wire.OrderView:
    return wire.decode_order(msgspec.json.encode({"order": record}))


def test_a_multileg_order_translates_with_legs_fills_and_tag() -> None:
    order = order_from_wire(_view(MULTILEG))
    assert order == BrokerOrder(
        broker_order_id="228749",
        client_order_id="sw-7-7-abc-1",
        status=BrokerOrderStatus.PARTIALLY_FILLED,
        multileg=True,
        order_type=OrderType.DEBIT,
        underlying="SPY",
        quantity=2,
        filled_quantity=1,
        remaining_quantity=1,
        avg_fill_price=Decimal("1.21"),
        limit_price=Decimal("1.25"),
        legs=(
            BrokerOrderLeg(
                option_symbol=SPY_PUT_650,
                side=OrderLegSide.BUY_TO_CLOSE,
                quantity=2,
                filled_quantity=1,
                avg_fill_price=Decimal("2.50"),
            ),
            BrokerOrderLeg(
                option_symbol=SPY_PUT_645,
                side=OrderLegSide.SELL_TO_CLOSE,
                quantity=2,
                filled_quantity=1,
                avg_fill_price=Decimal("1.29"),
            ),
        ),
        created_at=dt.datetime(2025, 12, 9, 14, 45, tzinfo=dt.UTC),
        updated_at=dt.datetime(2025, 12, 9, 14, 46, 30, 500000, tzinfo=dt.UTC),
    )
    assert not order.is_final


def test_a_single_option_order_is_its_own_leg_and_no_fill_is_no_price() -> None:
    record = {
        "id": 5,
        "type": "limit",
        "symbol": "SPY",
        "side": "buy_to_close",
        "quantity": "3.00000000",
        "status": "open",
        "price": "0.45",
        "avg_fill_price": 0.0,
        "exec_quantity": 0.0,
        "class": "option",
        "option_symbol": SPY_PUT_650,
    }
    order = order_from_wire(_view(record))
    assert not order.multileg and order.order_type is OrderType.LIMIT
    assert order.client_order_id is None  # not ours: no tag
    assert order.avg_fill_price is None and order.remaining_quantity == 3
    assert order.legs == (
        BrokerOrderLeg(option_symbol=SPY_PUT_650, side=OrderLegSide.BUY_TO_CLOSE, quantity=3),
    )


def test_a_collapsed_single_leg_list_and_a_market_order() -> None:
    record = {**MULTILEG, "type": "market", "leg": MULTILEG["leg"][0]}
    order = order_from_wire(_view(record))
    assert len(order.legs) == 1 and order.limit_price is None
    assert order.order_type is OrderType.MARKET


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("pending", BrokerOrderStatus.PENDING),
        ("open", BrokerOrderStatus.OPEN),
        ("partially_filled", BrokerOrderStatus.PARTIALLY_FILLED),
        ("filled", BrokerOrderStatus.FILLED),
        ("canceled", BrokerOrderStatus.CANCELLED),
        ("expired", BrokerOrderStatus.EXPIRED),
        ("rejected", BrokerOrderStatus.REJECTED),
        ("error", BrokerOrderStatus.REJECTED),
        ("held", BrokerOrderStatus.PENDING),
        ("calculated", BrokerOrderStatus.PENDING),
        ("accepted_for_bidding", BrokerOrderStatus.PENDING),
        ("something_new", BrokerOrderStatus.PENDING),  # unknown: keep following it
    ],
)
def test_statuses(text: str, status: BrokerOrderStatus) -> None:
    assert status_from_wire(text) is status


def test_a_fractional_quantity_makes_the_answer_invalid() -> None:
    with pytest.raises(BrokerAnswerInvalid, match="fractional"):
        order_from_wire(_view({**MULTILEG, "exec_quantity": 0.5}))


def test_an_order_event_translates() -> None:
    frame = (
        '{"id":228749,"event":"order","status":"partially_filled","type":"debit","price":1.25,'
        '"avg_fill_price":1.21,"exec_quantity":1.0,"last_fill_quantity":1.0,'
        '"last_fill_price":1.21,"remaining_quantity":1.0,'
        '"transaction_date":"2025-12-09T14:46:30.500Z","account":"VA1","tag":"sw-7-7-abc-1"}'
    )
    event = wire.decode_account_frame(frame)
    assert isinstance(event, wire.OrderEvent)
    assert update_from_wire(event) == BrokerOrderUpdate(
        broker_order_id="228749",
        client_order_id="sw-7-7-abc-1",
        status=BrokerOrderStatus.PARTIALLY_FILLED,
        filled_quantity=1,
        remaining_quantity=1,
        last_fill_quantity=1,
        last_fill_price=Decimal("1.21"),
        avg_fill_price=Decimal("1.21"),
        at=dt.datetime(2025, 12, 9, 14, 46, 30, 500000, tzinfo=dt.UTC),
    )
    leg_frame = '{"id":228750,"event":"order","status":"open","parent_id":228749}'
    leg_event = wire.decode_account_frame(leg_frame)
    assert isinstance(leg_event, wire.OrderEvent)
    update = update_from_wire(leg_event)
    assert update.parent_order_id == "228749" and update.avg_fill_price is None


def _mock_broker(seen: list[httpx.Request]) -> TradierBroker:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"order": {"id": 77, "status": "ok"}})

    rest = TradierRest(
        base_url="https://api.example/v1",
        token="tok",
        account_id="VA1",
        transport=httpx.MockTransport(handler),
    )
    return TradierBroker(rest)


async def test_submit_routes_spreads_to_multileg_and_singles_to_option() -> None:
    seen: list[httpx.Request] = []
    broker: OrderBroker = _mock_broker(seen)  # TradierBroker satisfies the Protocol (mypy)
    spread_order = ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT,
        quantity=1,
        limit_price=Decimal("0.85"),
        legs=(
            OrderLeg(option_symbol=SPY_PUT_645, side=OrderLegSide.SELL_TO_CLOSE, quantity=1),
            OrderLeg(option_symbol=SPY_PUT_650, side=OrderLegSide.BUY_TO_CLOSE, quantity=1),
        ),
    )
    single = ExitOrder(
        order_class=OrderClass.OPTION,
        underlying="SPY",
        order_type=OrderType.LIMIT,
        quantity=2,
        limit_price=Decimal("0.40"),
        legs=(OrderLeg(option_symbol=SPY_PUT_650, side=OrderLegSide.BUY_TO_CLOSE, quantity=2),),
    )
    assert await broker.submit_order(spread_order, client_order_id="sw-1-a-1") == "77"
    assert await broker.submit_order(single, client_order_id="sw-2-b-1") == "77"
    await broker.modify_price("77", Decimal("0.90"))
    await broker.cancel_order("77")
    multileg, option, modify, cancel = (dict(parse_qsl(r.content.decode())) for r in seen)
    assert multileg["class"] == "multileg" and multileg["tag"] == "sw-1-a-1"
    assert multileg["type"] == "debit" and multileg["price"] == "0.85"
    assert multileg["duration"] == "day" and multileg["side[1]"] == "buy_to_close"
    assert option == {
        "class": "option",
        "symbol": "SPY",
        "option_symbol": SPY_PUT_650,
        "side": "buy_to_close",
        "quantity": "2",
        "type": "limit",
        "duration": "day",
        "price": "0.40",
        "tag": "sw-2-b-1",
    }
    assert modify == {"price": "0.90"} and cancel == {}
    assert [r.method for r in seen] == ["POST", "POST", "PUT", "DELETE"]
    assert seen[3].url.path == "/v1/accounts/VA1/orders/77"


async def test_order_events_need_the_account_stream_url() -> None:
    broker = _mock_broker([])
    with pytest.raises(ConfigError):
        async with broker.order_events():
            pass  # pragma: no cover


async def test_a_market_close_on_the_simulator_fills_and_a_late_cancel_is_a_fill() -> None:
    """submit -> stream updates -> read back by tag -> cancel racing the fill."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with TradierRest(
                base_url=handle.rest_url, token=handle.token, account_id=handle.account_id
            ) as rest:
                broker = TradierBroker(rest, account_ws_url=handle.account_ws_url)
                held = {p.symbol: p.quantity for p in await broker.get_positions()}
                spread = Spread.from_legs(
                    [Leg.from_position(s, q) for s, q in held.items()], underlying="SPY"
                )
                order = build_exit_order(
                    spread, Strategy.BULL_PUT_CREDIT, 1, held, None, allow_market=True
                )
                assert isinstance(order, ExitOrder)
                tag = client_order_id(3, "3-feedbeef", 1)
                async with broker.order_events() as events:
                    broker_order_id = await broker.submit_order(order, client_order_id=tag)
                    statuses: list[BrokerOrderStatus] = []
                    while BrokerOrderStatus.FILLED not in statuses:
                        update = await events.receive()
                        if update is not None and update.broker_order_id == broker_order_id:
                            assert update.client_order_id == tag
                            statuses.append(update.status)
                assert statuses[-1] is BrokerOrderStatus.FILLED

                (found,) = [o for o in await broker.get_orders() if o.client_order_id == tag]
                assert found.broker_order_id == broker_order_id and found.is_final
                assert found.filled_quantity == 1 and found.avg_fill_price is not None
                assert {(lg.option_symbol, lg.side, lg.filled_quantity) for lg in found.legs} == {
                    (SPY_PUT_650, OrderLegSide.BUY_TO_CLOSE, 1),
                    (SPY_PUT_645, OrderLegSide.SELL_TO_CLOSE, 1),
                }
                assert await broker.get_order(broker_order_id) == found
                with pytest.raises(OrderAlreadyFinal) as caught:
                    await broker.cancel_order(broker_order_id)
                assert caught.value.state == "filled"
                # The simulator's record: one order received, one spread closed.
                assert [o.tag for o in handle.broker.orders.values()] == [tag]
                after = {p.symbol: p.quantity for p in await broker.get_positions()}
                assert after == {SPY_PUT_650: -1, SPY_PUT_645: 1}
            nursery.cancel_scope.cancel()
