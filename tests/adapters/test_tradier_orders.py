"""TradierRest order writes: the exact form Tradier documents, every failure translated, and one
multileg close built by the domain placed on the real simulator and read back by its tag."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from urllib.parse import parse_qsl

import httpx
import pytest
import trio

from engine.brokers.tradier import wire
from engine.brokers.tradier.rest import TradierRest
from engine.domain.orders import ExitOrder, build_exit_order, client_order_id, price_ladder
from engine.domain.pricing import LegQuote, mark_close_price, natural_close_price
from engine.domain.spread import Leg, Spread
from engine.domain.strategy import Strategy
from engine.errors import BrokerUnavailable, OrderAlreadyFinal, OrderRejected, RateLimited
from engine.messages import OrderLeg, OrderLegSide, OrderType
from tests.sim.helpers import SPY_PUT_645, SPY_PUT_650, start_sim

Handler = Callable[[httpx.Request], httpx.Response]

LEGS = (
    OrderLeg(option_symbol=SPY_PUT_650, side=OrderLegSide.BUY_TO_CLOSE, quantity=2),
    OrderLeg(option_symbol=SPY_PUT_645, side=OrderLegSide.SELL_TO_CLOSE, quantity=2),
)
PLACED = {"order": {"id": 13832634, "status": "ok", "partner_id": "p-1"}}


def _rest(handler: Handler) -> TradierRest:
    return TradierRest(
        base_url="https://api.example/v1",
        token="tok-123",
        account_id="VA1",
        transport=httpx.MockTransport(handler),
    )


def _recorder(
    response: httpx.Response | Callable[[], httpx.Response],
) -> tuple[list[httpx.Request], Handler]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response() if callable(response) else response

    return seen, handler


def _form(request: httpx.Request) -> list[tuple[str, str]]:
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    return parse_qsl(request.content.decode(), keep_blank_values=True)


async def _place(rest: TradierRest) -> wire.PlacedOrder:
    return await rest.place_multileg(
        symbol="SPY",
        type=OrderType.DEBIT,
        duration="day",
        price=Decimal("1.25"),
        legs=LEGS,
        tag="sw-7-7-abc-1",
    )


# -- the form ----------------------------------------------------------------------------------


async def test_multileg_close_is_posted_with_tradiers_form_fields() -> None:
    seen, handler = _recorder(httpx.Response(200, json=PLACED))
    async with _rest(handler) as rest:
        placed = await _place(rest)
    assert placed == wire.PlacedOrder(id=13832634, status="ok", partner_id="p-1")
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/v1/accounts/VA1/orders"
    assert _form(request) == [
        ("class", "multileg"),
        ("symbol", "SPY"),
        ("type", "debit"),
        ("duration", "day"),
        ("price", "1.25"),
        ("option_symbol[0]", SPY_PUT_650),
        ("side[0]", "buy_to_close"),
        ("quantity[0]", "2"),
        ("option_symbol[1]", SPY_PUT_645),
        ("side[1]", "sell_to_close"),
        ("quantity[1]", "2"),
        ("tag", "sw-7-7-abc-1"),
    ]


async def test_single_option_close_and_market_orders_carry_no_price() -> None:
    seen, handler = _recorder(httpx.Response(200, json=PLACED))
    async with _rest(handler) as rest:
        await rest.place_option(
            symbol="SPY",
            option_symbol=SPY_PUT_650,
            side=OrderLegSide.BUY_TO_CLOSE,
            quantity=3,
            type=OrderType.LIMIT,
            duration="day",
            price=Decimal("1E+1"),  # plain digits on the wire, never an exponent
            tag="sw-1-x-1",
        )
        await rest.place_option(
            symbol="SPY",
            option_symbol=SPY_PUT_650,
            side="buy_to_close",
            quantity=1,
            type="market",
            duration="day",
            price=None,
            tag=None,
        )
    assert _form(seen[0]) == [
        ("class", "option"),
        ("symbol", "SPY"),
        ("option_symbol", SPY_PUT_650),
        ("side", "buy_to_close"),
        ("quantity", "3"),
        ("type", "limit"),
        ("duration", "day"),
        ("price", "10"),
        ("tag", "sw-1-x-1"),
    ]
    assert "price" not in dict(_form(seen[1])) and "tag" not in dict(_form(seen[1]))


async def test_preview_validates_without_placing() -> None:
    answer = {"order": {"status": "ok", "result": True, "cost": 250.0, "class": "multileg"}}
    seen, handler = _recorder(httpx.Response(200, json=answer))
    async with _rest(handler) as rest:
        preview = await rest.place_multileg(
            symbol="SPY",
            type="debit",
            duration="day",
            price=Decimal("1.25"),
            legs=LEGS,
            tag=None,
            preview=True,
        )
    assert preview.result is True and preview.cost == Decimal("250.0")
    assert dict(_form(seen[0]))["preview"] == "true"


async def test_a_multileg_order_needs_two_to_four_legs() -> None:
    seen, handler = _recorder(httpx.Response(200, json=PLACED))
    async with _rest(handler) as rest:
        with pytest.raises(ValueError, match="2 to 4 legs"):
            await rest.place_multileg(
                symbol="SPY",
                type="debit",
                duration="day",
                price=Decimal(1),
                legs=LEGS[:1],
                tag=None,
            )
    assert seen == []


async def test_modify_puts_the_price_and_cancel_deletes() -> None:
    seen, handler = _recorder(httpx.Response(200, json={"order": {"id": 55, "status": "ok"}}))
    async with _rest(handler) as rest:
        modified = await rest.modify_order(55, price=Decimal("1.30"))
        canceled = await rest.cancel_order(55)
    assert modified.id == canceled.id == 55
    put, delete = seen
    assert (put.method, put.url.path) == ("PUT", "/v1/accounts/VA1/orders/55")
    assert _form(put) == [("price", "1.30")]
    assert (delete.method, delete.url.path) == ("DELETE", "/v1/accounts/VA1/orders/55")
    assert delete.content == b""


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reasons"),
    [
        ({"errors": {"error": "Backoffice rejected override"}}, ("Backoffice rejected override",)),
        ({"errors": {"error": ["a", "b"]}}, ("a", "b")),
    ],
)
async def test_http_200_with_errors_is_a_rejection(
    body: dict[str, object], reasons: tuple[str, ...]
) -> None:
    async with _rest(lambda r: httpx.Response(200, json=body)) as rest:
        with pytest.raises(OrderRejected) as caught:
            await _place(rest)
    assert caught.value.reasons == reasons
    assert not isinstance(caught.value, OrderAlreadyFinal)


async def test_http_400_is_a_rejection_with_tradiers_words() -> None:
    answer = httpx.Response(400, text="Invalid Parameter: tag must be at most 255 letters")
    async with _rest(lambda r: answer) as rest:
        with pytest.raises(OrderRejected, match="tag must be") as caught:
            await _place(rest)
    assert not isinstance(caught.value, OrderAlreadyFinal)


@pytest.mark.parametrize("state", ["filled", "canceled", "expired"])
async def test_cancel_or_modify_of_a_finished_order_says_its_state(state: str) -> None:
    answer = httpx.Response(400, text=f"order already in finalized state: {state}")
    async with _rest(lambda r: answer) as rest:
        with pytest.raises(OrderAlreadyFinal) as on_cancel:
            await rest.cancel_order(9)
        with pytest.raises(OrderAlreadyFinal) as on_modify:
            await rest.modify_order(9, price=Decimal("1.00"))
    assert on_cancel.value.state == on_modify.value.state == state
    assert isinstance(on_cancel.value, OrderRejected)


@pytest.mark.parametrize(
    "failure",
    [
        lambda: httpx.Response(500, text="Datastore Error"),
        lambda: httpx.Response(502, text="Bad Gateway"),
        "timeout",
        "dropped",
    ],
)
async def test_ambiguous_outcomes_are_unavailable_and_never_resent(failure: object) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if failure == "timeout":
            raise httpx.ReadTimeout("read timed out", request=request)
        if failure == "dropped":
            raise httpx.RemoteProtocolError("peer closed connection", request=request)
        assert callable(failure)
        response: httpx.Response = failure()
        return response

    async with _rest(handler) as rest:
        with pytest.raises(BrokerUnavailable):
            await _place(rest)
        with pytest.raises(BrokerUnavailable):
            await rest.cancel_order(1)
    assert len(seen) == 2  # one request per call: the client never resends an order write


async def test_order_writes_count_in_the_trading_rate_limit_group() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        trading = request.method != "GET"
        headers = {
            "X-Ratelimit-Allowed": "60" if trading else "120",
            "X-Ratelimit-Used": "1",
            "X-Ratelimit-Available": "59" if trading else "119",
            "X-Ratelimit-Expiry": "1795000060000",
        }
        body = PLACED if trading else {"orders": "null"}
        return httpx.Response(200, json=body, headers=headers)

    async with _rest(handler) as rest:
        await _place(rest)
        await rest.modify_order(1, price=Decimal(1))
        await rest.cancel_order(1)
        await rest.get_orders()
        assert rest.rate_limits["trading"].allowed == 60
        assert rest.rate_limits["standard"].allowed == 120


async def test_a_rate_limited_order_write_is_rate_limited() -> None:
    async with _rest(lambda r: httpx.Response(429, text="slow down")) as rest:
        with pytest.raises(RateLimited):
            await _place(rest)


# -- against the simulator -------------------------------------------------------------------------


async def test_a_built_close_is_placed_on_the_simulator_and_found_by_its_tag() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            handle = await start_sim(nursery)
            async with TradierRest(
                base_url=handle.rest_url, token=handle.token, account_id=handle.account_id
            ) as rest:
                held = {p.symbol: int(p.quantity) for p in await rest.get_positions()}
                legs = [Leg.from_position(s, q) for s, q in held.items()]
                spread = Spread.from_legs(legs, underlying="SPY")
                quotes = {q.symbol: q for q in await rest.get_quotes(spread.symbols)}
                leg_quotes = [LegQuote(quotes[s].bid, quotes[s].ask) for s in spread.symbols]
                mark = mark_close_price(spread, leg_quotes)
                natural = natural_close_price(spread, leg_quotes)
                assert mark is not None and natural is not None and natural > mark
                ladder = price_ladder(mark, natural, 3, Decimal("0.8"))
                assert len(ladder) >= 2
                order = build_exit_order(spread, Strategy.BULL_PUT_CREDIT, 2, held, ladder[0])
                assert isinstance(order, ExitOrder)
                tag = client_order_id(7, "7-0a1b2c3d4e5f", 1)
                assert order.limit_price is not None
                placed = await rest.place_multileg(
                    symbol=order.underlying,
                    type=order.order_type,
                    duration="day",
                    price=order.limit_price,
                    legs=order.legs,
                    tag=tag,
                )

                (found,) = [o for o in await rest.get_orders() if o.tag == tag]
                assert found.id == placed.id and found.order_class == "multileg"
                assert found.type == "debit" and found.price == ladder[0]
                assert found.status in {"pending", "open"}
                assert {(leg.option_symbol, leg.side, leg.quantity) for leg in found.legs} == {
                    (SPY_PUT_650, "buy_to_close", Decimal(2)),
                    (SPY_PUT_645, "sell_to_close", Decimal(2)),
                }
                # The simulator's own record of what it received.
                received = handle.broker.orders[placed.id]
                assert received.tag == tag and received.type == "debit"
                assert received.price == ladder[0] and received.quantity == 2
                assert [(lg.option_symbol, lg.side, lg.quantity) for lg in received.legs] == [
                    (SPY_PUT_645, "sell_to_close", 2),
                    (SPY_PUT_650, "buy_to_close", 2),
                ]

                await rest.modify_order(placed.id, price=ladder[1])
                assert handle.broker.orders[placed.id].price == ladder[1]
                await rest.cancel_order(placed.id)
                with pytest.raises(OrderAlreadyFinal) as caught:
                    await rest.cancel_order(placed.id)
                assert caught.value.state == "canceled"
            nursery.cancel_scope.cancel()
