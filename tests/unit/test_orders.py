"""Closing orders: building them safely, walking their price, naming them."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.occ import OptionSymbol
from engine.domain.orders import (
    ClientOrderId,
    ExitOrder,
    ExitRefused,
    OrderClass,
    RefusalCode,
    build_exit_order,
    client_order_id,
    closable_quantity,
    parse_client_order_id,
    price_ladder,
)
from engine.domain.spread import Leg, Side, Spread
from engine.domain.strategy import Strategy
from engine.messages import OrderLeg, OrderLegSide, OrderType

EXP = dt.date(2025, 12, 19)


def leg(spec: str, quantity: int = 1) -> Leg:
    """``"+645P"`` is one long 645 put, ``"-650P"`` one short 650 put."""
    side = Side.LONG if spec[0] == "+" else Side.SHORT
    right = "C" if spec[-1] == "C" else "P"
    strike = Decimal(spec[1:-1])
    text = f"SPY{EXP:%y%m%d}{right}{int(strike * 1000):08d}"
    return Leg(symbol=OptionSymbol.parse(text), side=side, quantity=quantity)


def spread(*specs: str, quantity: int = 1) -> Spread:
    return Spread.from_legs([leg(s, quantity) for s in specs], underlying="SPY")


def held_all(s: Spread) -> dict[str, int]:
    return {lg.occ: lg.signed_quantity for lg in s.legs}


PUT_CREDIT = spread("-650P", "+645P", quantity=2)
CALL_DEBIT = spread("+680C", "-690C", quantity=3)
CONDOR = spread("+630P", "-640P", "-700C", "+710C", quantity=2)
SHORT_PUT = spread("-640P", quantity=2)
LONG_CALL = spread("+700C", quantity=1)

P650 = "SPY251219P00650000"
P645 = "SPY251219P00645000"


# -- the order's shape ----------------------------------------------------------------------


def test_credit_spread_closes_with_one_debit_multileg_order() -> None:
    order = build_exit_order(
        PUT_CREDIT, Strategy.BULL_PUT_CREDIT, 2, held_all(PUT_CREDIT), Decimal("1.25")
    )
    assert order == ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT,
        quantity=2,
        limit_price=Decimal("1.25"),
        legs=(
            OrderLeg(option_symbol=P645, side=OrderLegSide.SELL_TO_CLOSE, quantity=2),
            OrderLeg(option_symbol=P650, side=OrderLegSide.BUY_TO_CLOSE, quantity=2),
        ),
    )


def test_debit_spread_closes_with_a_credit_order_for_part_of_it() -> None:
    order = build_exit_order(
        CALL_DEBIT, Strategy.BULL_CALL_DEBIT, 1, held_all(CALL_DEBIT), Decimal("2.10")
    )
    assert isinstance(order, ExitOrder)
    assert order.order_type is OrderType.CREDIT and order.quantity == 1
    assert [(lg.side, lg.quantity) for lg in order.legs] == [
        (OrderLegSide.SELL_TO_CLOSE, 1),
        (OrderLegSide.BUY_TO_CLOSE, 1),
    ]


def test_iron_condor_closes_all_four_legs_as_a_debit() -> None:
    order = build_exit_order(CONDOR, Strategy.IRON_CONDOR, 2, held_all(CONDOR), Decimal("0.80"))
    assert isinstance(order, ExitOrder)
    assert order.order_type is OrderType.DEBIT and len(order.legs) == 4
    sides = {lg.option_symbol: lg.side for lg in order.legs}
    for lg in CONDOR.legs:
        expected = OrderLegSide.BUY_TO_CLOSE if lg.is_short else OrderLegSide.SELL_TO_CLOSE
        assert sides[lg.occ] is expected


@pytest.mark.parametrize(
    ("s", "strategy", "side"),
    [
        (SHORT_PUT, Strategy.SHORT_PUT, OrderLegSide.BUY_TO_CLOSE),
        (LONG_CALL, Strategy.LONG_CALL, OrderLegSide.SELL_TO_CLOSE),
    ],
)
def test_single_leg_is_an_option_limit_order(
    s: Spread, strategy: Strategy, side: OrderLegSide
) -> None:
    order = build_exit_order(s, strategy, 1, held_all(s), Decimal("0.05"))
    assert isinstance(order, ExitOrder)
    assert order.order_class is OrderClass.OPTION and order.order_type is OrderType.LIMIT
    assert order.legs == (OrderLeg(option_symbol=s.legs[0].occ, side=side, quantity=1),)


def test_market_order_only_when_allowed() -> None:
    refused = build_exit_order(PUT_CREDIT, Strategy.BULL_PUT_CREDIT, 1, held_all(PUT_CREDIT), None)
    assert isinstance(refused, ExitRefused) and refused.code is RefusalCode.MARKET_NOT_ALLOWED
    order = build_exit_order(
        PUT_CREDIT, Strategy.BULL_PUT_CREDIT, 1, held_all(PUT_CREDIT), None, allow_market=True
    )
    assert isinstance(order, ExitOrder)
    assert order.order_type is OrderType.MARKET and order.limit_price is None


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "held", "price", "code"),
    [
        (0, None, "1.00", RefusalCode.BAD_QUANTITY),
        (-1, None, "1.00", RefusalCode.BAD_QUANTITY),
        (3, None, "1.00", RefusalCode.MORE_THAN_TRADE),
        (2, {P650: -1, P645: 2}, "1.00", RefusalCode.MORE_THAN_HELD),  # would flip the short
        (2, {P650: -2, P645: 1}, "1.00", RefusalCode.MORE_THAN_HELD),  # would open a short
        (1, {P650: -2}, "1.00", RefusalCode.NOT_HELD),
        (1, {P650: 2, P645: 2}, "1.00", RefusalCode.NOT_HELD),  # held long, trade says short
        (1, {P650: -2, P645: 0}, "1.00", RefusalCode.NOT_HELD),
        (1, None, "0", RefusalCode.BAD_PRICE),
        (1, None, "-0.05", RefusalCode.BAD_PRICE),
        (1, None, "1.005", RefusalCode.BAD_PRICE),
        (1, None, "NaN", RefusalCode.BAD_PRICE),
    ],
)
def test_refusals_name_the_rule(
    quantity: int, held: dict[str, int] | None, price: str, code: RefusalCode
) -> None:
    refused = build_exit_order(
        PUT_CREDIT,
        Strategy.BULL_PUT_CREDIT,
        quantity,
        held if held is not None else held_all(PUT_CREDIT),
        Decimal(price),
    )
    assert isinstance(refused, ExitRefused)
    assert refused.code is code and refused.reason


def test_custom_and_mismatched_strategies_are_refused() -> None:
    ratio = Spread.from_legs([leg("-650P", 2), leg("+645P", 1)], underlying="SPY")
    custom = build_exit_order(ratio, Strategy.CUSTOM, 1, held_all(ratio), Decimal("1"))
    assert isinstance(custom, ExitRefused) and custom.code is RefusalCode.CUSTOM_STRATEGY
    mismatch = build_exit_order(
        PUT_CREDIT, Strategy.BEAR_PUT_DEBIT, 1, held_all(PUT_CREDIT), Decimal("1")
    )
    assert isinstance(mismatch, ExitRefused) and mismatch.code is RefusalCode.STRATEGY_MISMATCH


def test_other_symbols_in_held_are_never_touched() -> None:
    held = {**held_all(PUT_CREDIT), "SPY251219P00600000": -5}
    order = build_exit_order(PUT_CREDIT, Strategy.BULL_PUT_CREDIT, 2, held, Decimal("1"))
    assert isinstance(order, ExitOrder)
    assert {lg.option_symbol for lg in order.legs} == {P650, P645}


def test_closable_quantity() -> None:
    assert closable_quantity(PUT_CREDIT, held_all(PUT_CREDIT)) == 2
    assert closable_quantity(PUT_CREDIT, {P650: -5, P645: 5}) == 2  # never more than the trade
    assert closable_quantity(PUT_CREDIT, {P650: -1, P645: 2}) == 1
    assert closable_quantity(PUT_CREDIT, {P650: 1, P645: 2}) == 0
    assert closable_quantity(PUT_CREDIT, {}) == 0


# -- properties ------------------------------------------------------------------------------

SPREADS = [
    (PUT_CREDIT, Strategy.BULL_PUT_CREDIT),
    (CALL_DEBIT, Strategy.BULL_CALL_DEBIT),
    (CONDOR, Strategy.IRON_CONDOR),
    (SHORT_PUT, Strategy.SHORT_PUT),
    (LONG_CALL, Strategy.LONG_CALL),
    (spread("-700C", "+705C", quantity=4), Strategy.BEAR_CALL_CREDIT),
    (spread("+600P", "-590P", quantity=5), Strategy.BEAR_PUT_DEBIT),
]


@st.composite
def requests(draw: st.DrawFn) -> tuple[Spread, Strategy, int, dict[str, int]]:
    s, strategy = draw(st.sampled_from(SPREADS))
    held = {lg.occ: draw(st.integers(-8, 8)) for lg in s.legs}
    if draw(st.booleans()):  # often hold exactly the trade's legs, so orders do get built
        held = {lg.occ: lg.signed_quantity - draw(st.integers(0, 1)) * lg.sign for lg in s.legs}
    return s, strategy, draw(st.integers(-2, 7)), held


@given(requests(), st.decimals(min_value="-1", max_value="5", places=2))
def test_a_built_order_never_exceeds_held_never_flips_and_keeps_ratios(
    request: tuple[Spread, Strategy, int, dict[str, int]], price: Decimal
) -> None:
    s, strategy, quantity, held = request
    result = build_exit_order(s, strategy, quantity, held, price)
    if isinstance(result, ExitRefused):
        # Refused exactly when something is wrong: never a silent clamp to another order.
        assert quantity <= 0 or quantity > closable_quantity(s, held) or price <= 0
        return
    assert 0 < quantity <= closable_quantity(s, held) and price > 0
    assert result.quantity == quantity and result.limit_price == price
    trade_legs = {lg.occ: lg for lg in s.legs}
    assert len(result.legs) == len(s.legs)
    for order_leg, ratio in zip(result.legs, s.ratios, strict=True):
        trade_leg = trade_legs[order_leg.option_symbol]  # never a leg not in the trade
        signed_held = held[order_leg.option_symbol]
        # Closing side only, the opposite of how it is held.
        if trade_leg.is_short:
            assert order_leg.side is OrderLegSide.BUY_TO_CLOSE and signed_held < 0
        else:
            assert order_leg.side is OrderLegSide.SELL_TO_CLOSE and signed_held > 0
        assert 0 < order_leg.quantity <= abs(signed_held)  # never opens or flips
        assert order_leg.quantity == ratio * quantity  # the spread's shape


# -- price ladder ----------------------------------------------------------------------------


def test_ladder_walks_a_debit_up_from_mark_to_natural() -> None:
    assert price_ladder(Decimal("1.00"), Decimal("1.20"), 4, Decimal(1)) == (
        Decimal("1.00"),
        Decimal("1.05"),
        Decimal("1.10"),
        Decimal("1.15"),
        Decimal("1.20"),
    )


def test_ladder_walks_a_credit_down_and_stops_at_the_cap() -> None:
    # Mark 2.00, natural 1.80, cap halfway: 1.90.
    assert price_ladder(Decimal("2.00"), Decimal("1.80"), 2, Decimal("0.5")) == (
        Decimal("2.00"),
        Decimal("1.95"),
        Decimal("1.90"),
    )


def test_ladder_rounds_toward_the_mark_and_merges_equal_rungs() -> None:
    # Debit: mark 1.005 floors to 1.00; cap 1.005 + 0.5 * 0.03 = 1.02 exactly.
    assert price_ladder(Decimal("1.005"), Decimal("1.035"), 5, Decimal("0.5")) == (
        Decimal("1.00"),
        Decimal("1.01"),
        Decimal("1.02"),
    )
    # Credit (natural below the mark): 0.999 ceils to 1.00.
    assert price_ladder(Decimal("0.999"), Decimal("0.95"), 0, Decimal(1)) == (Decimal("1.00"),)


def test_ladder_lifts_non_positive_prices_to_one_tick() -> None:
    assert price_ladder(Decimal("-0.03"), Decimal("0.02"), 5, Decimal(1)) == (
        Decimal("0.01"),
        Decimal("0.02"),
    )
    assert price_ladder(Decimal("0"), Decimal("-0.10"), 2, Decimal(1)) == (Decimal("0.01"),)


@pytest.mark.parametrize(
    ("steps", "cap", "tick"),
    [(-1, "1", "0.01"), (1, "1.1", "0.01"), (1, "-0.1", "0.01"), (1, "1", "0")],
)
def test_ladder_rejects_bad_settings(steps: int, cap: str, tick: str) -> None:
    with pytest.raises(ValueError):
        price_ladder(Decimal(1), Decimal(2), steps, Decimal(cap), Decimal(tick))


@given(
    st.decimals(min_value="0.01", max_value="20", places=3),
    st.decimals(min_value="-2", max_value="2", places=3),
    st.integers(0, 12),
    st.decimals(min_value="0", max_value="1", places=2),
    st.sampled_from([Decimal("0.01"), Decimal("0.05")]),
)
def test_ladder_is_monotone_on_tick_and_within_the_cap(
    mark: Decimal, distance: Decimal, steps: int, cap_fraction: Decimal, tick: Decimal
) -> None:
    natural = mark + distance
    rungs = price_ladder(mark, natural, steps, cap_fraction, tick)
    cap = mark + cap_fraction * (natural - mark)
    assert 1 <= len(rungs) <= steps + 1
    for price in rungs:
        assert price > 0 and price % tick == 0
        # Never beyond the cap, except the one-tick floor.
        if natural >= mark:
            assert price <= cap or price == tick
        else:
            assert price >= cap
    pairs = list(itertools.pairwise(rungs))
    if natural >= mark:
        assert all(a < b for a, b in pairs)
    else:
        assert all(a > b for a, b in pairs)


# -- client order ids ------------------------------------------------------------------------

_TAG = re.compile(r"[A-Za-z0-9-]{1,255}")


def test_client_order_id_is_deterministic_and_reads_back() -> None:
    coid = client_order_id(42, "42-0a1b2c3d4e5f", 3)
    assert coid == "sw-42-42-0a1b2c3d4e5f-3"
    assert client_order_id(42, "42-0a1b2c3d4e5f", 3) == coid
    assert parse_client_order_id(coid) == ClientOrderId(
        trade_id=42, intent="42-0a1b2c3d4e5f", attempt=3
    )
    assert parse_client_order_id("exit-T1-1") is None
    assert parse_client_order_id(None) is None
    assert parse_client_order_id(coid + "\n") is None


@given(st.integers(0, 10**15), st.text(max_size=400), st.integers(1, 10**6))
def test_client_order_id_is_a_valid_tag_and_distinct(
    trade_id: int, intent: str, attempt: int
) -> None:
    coid = client_order_id(trade_id, intent, attempt)
    assert _TAG.fullmatch(coid)
    parsed = parse_client_order_id(coid)
    assert parsed is not None
    assert (parsed.trade_id, parsed.attempt) == (trade_id, attempt)
    assert client_order_id(trade_id, intent, attempt + 1) != coid
    assert client_order_id(trade_id + 1, intent, attempt) != coid
    assert client_order_id(trade_id, intent + "!", attempt) != coid


@pytest.mark.parametrize(("trade_id", "attempt"), [(-1, 1), (1, 0)])
def test_client_order_id_rejects_bad_numbers(trade_id: int, attempt: int) -> None:
    with pytest.raises(ValueError):
        client_order_id(trade_id, "i", attempt)
