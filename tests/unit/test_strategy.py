"""Strategy classification, legs and spreads."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from random import Random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import (
    Leg,
    OptionSymbol,
    Side,
    Spread,
    Strategy,
    classify,
    common_quantity,
    is_credit,
    is_debit,
    spread_width,
    underlying_of,
)
from engine.errors import InvalidSymbol

EXP = dt.date(2025, 6, 20)
EXP2 = dt.date(2025, 7, 18)


def leg(spec: str, quantity: int = 1, *, root: str = "SPY", expiration: dt.date = EXP) -> Leg:
    """``"+500P"`` is one long 500 put, ``"-510C"`` one short 510 call."""
    side = Side.LONG if spec[0] == "+" else Side.SHORT
    right = "C" if spec[-1] == "C" else "P"
    strike = Decimal(spec[1:-1])
    text = f"{root}{expiration:%y%m%d}{right}{int(strike * 1000):08d}"
    return Leg(symbol=OptionSymbol.parse(text), side=side, quantity=quantity)


CASES: list[tuple[str, list[Leg], Strategy]] = [
    ("bull put credit", [leg("-500P"), leg("+495P")], Strategy.BULL_PUT_CREDIT),
    ("bear put debit", [leg("+500P"), leg("-495P")], Strategy.BEAR_PUT_DEBIT),
    ("bear call credit", [leg("-510C"), leg("+515C")], Strategy.BEAR_CALL_CREDIT),
    ("bull call debit", [leg("+510C"), leg("-515C")], Strategy.BULL_CALL_DEBIT),
    (
        "iron condor",
        [leg("+490P"), leg("-495P"), leg("-510C"), leg("+520C")],
        Strategy.IRON_CONDOR,
    ),
    ("long call", [leg("+510C", 3)], Strategy.LONG_CALL),
    ("long put", [leg("+490P")], Strategy.LONG_PUT),
    ("short call", [leg("-510C", 2)], Strategy.SHORT_CALL),
    ("short put", [leg("-490P")], Strategy.SHORT_PUT),
    ("vertical of 5 each", [leg("-500P", 5), leg("+495P", 5)], Strategy.BULL_PUT_CREDIT),
    (
        "SPXW vertical",
        [leg("-5000P", root="SPXW"), leg("+4990P", root="SPXW")],
        Strategy.BULL_PUT_CREDIT,
    ),
    ("fractional strikes", [leg("-12.5P"), leg("+12P")], Strategy.BULL_PUT_CREDIT),
    # ----- custom: never auto-exited
    ("ratio put spread 1x2", [leg("-500P", 1), leg("+495P", 2)], Strategy.CUSTOM),
    ("mismatched quantities 3/2", [leg("-500P", 3), leg("+495P", 2)], Strategy.CUSTOM),
    ("calendar", [leg("-500P"), leg("+500P", expiration=EXP2)], Strategy.CUSTOM),
    ("diagonal", [leg("-500P"), leg("+495P", expiration=EXP2)], Strategy.CUSTOM),
    ("two longs", [leg("+500P"), leg("+495P")], Strategy.CUSTOM),
    ("two shorts", [leg("-510C"), leg("-515C")], Strategy.CUSTOM),
    ("straddle", [leg("+500P"), leg("+500C")], Strategy.CUSTOM),
    ("short strangle", [leg("-490P"), leg("-510C")], Strategy.CUSTOM),
    ("risk reversal", [leg("-490P"), leg("+510C")], Strategy.CUSTOM),
    ("same strike long and short", [leg("-500P"), leg("+500P")], Strategy.CUSTOM),
    ("mixed roots", [leg("-500P"), leg("+495P", root="QQQ")], Strategy.CUSTOM),
    ("three legs", [leg("+490P"), leg("-495P"), leg("-510C")], Strategy.CUSTOM),
    (
        "iron butterfly (short strikes meet)",
        [leg("+490P"), leg("-500P"), leg("-500C"), leg("+510C")],
        Strategy.CUSTOM,
    ),
    (
        "condor with put strikes above call strikes",
        [leg("+510P"), leg("-515P"), leg("-490C"), leg("+495C")],
        Strategy.CUSTOM,
    ),
    (
        "condor with a debit put side",
        [leg("-490P"), leg("+495P"), leg("-510C"), leg("+520C")],
        Strategy.CUSTOM,
    ),
    (
        "condor with mismatched quantities",
        [leg("+490P", 2), leg("-495P", 2), leg("-510C"), leg("+520C")],
        Strategy.CUSTOM,
    ),
    (
        "condor over two expirations",
        [leg("+490P"), leg("-495P"), leg("-510C", expiration=EXP2), leg("+520C", expiration=EXP2)],
        Strategy.CUSTOM,
    ),
    (
        "four puts",
        [leg("+480P"), leg("-485P"), leg("-495P"), leg("+500P")],
        Strategy.CUSTOM,
    ),
    (
        "five legs",
        [leg("+480P"), leg("-485P"), leg("-495P"), leg("+500P"), leg("+510C")],
        Strategy.CUSTOM,
    ),
]


@pytest.mark.parametrize(("name", "legs", "expected"), CASES, ids=[c[0] for c in CASES])
def test_classification_in_every_leg_order(name: str, legs: list[Leg], expected: Strategy) -> None:
    for ordering in itertools.permutations(legs):
        assert classify(ordering) is expected, ordering
        assert Spread.from_legs(ordering).strategy is expected


def test_empty_legs_are_refused() -> None:
    with pytest.raises(ValueError):
        classify([])
    with pytest.raises(ValueError):
        Spread.from_legs([])


def test_credit_and_debit_partition_the_strategies() -> None:
    for strategy in Strategy:
        if strategy is Strategy.CUSTOM:
            assert not is_credit(strategy) and not is_debit(strategy)
        else:
            assert is_credit(strategy) != is_debit(strategy)
    assert is_credit(Strategy.IRON_CONDOR)
    assert is_credit(Strategy.SHORT_PUT)
    assert is_debit(Strategy.LONG_CALL)
    assert is_debit(Strategy.BEAR_PUT_DEBIT)


@pytest.mark.parametrize(
    ("legs", "width"),
    [
        ([leg("-500P"), leg("+495P")], Decimal("5")),
        ([leg("+510C"), leg("-512.5C")], Decimal("2.5")),
        # The wider wing bounds an iron condor's loss.
        ([leg("+490P"), leg("-495P"), leg("-510C"), leg("+520C")], Decimal("10")),
        ([leg("+485P"), leg("-495P"), leg("-510C"), leg("+512C")], Decimal("10")),
        ([leg("+510C")], None),
        ([leg("-500P", 1), leg("+495P", 2)], None),
    ],
)
def test_spread_width(legs: list[Leg], width: Decimal | None) -> None:
    assert spread_width(classify(legs), legs) == width
    assert Spread.from_legs(reversed(legs)).width == width


def test_common_quantity_is_the_number_of_spreads() -> None:
    assert common_quantity([leg("-500P", 4), leg("+495P", 4)]) == 4
    assert common_quantity([leg("-500P", 2), leg("+495P", 4)]) == 2  # 1x2 ratio, two units
    assert common_quantity([leg("-500P", 3), leg("+495P", 2)]) == 1
    spread = Spread.from_legs([leg("+495P", 4), leg("-500P", 2)])
    assert spread.quantity == 2
    assert spread.ratios == (2, 1)


def test_spread_is_canonical_whatever_the_input_order() -> None:
    legs = [leg("-510C", 2), leg("+490P", 2), leg("+520C", 2), leg("-495P", 2)]
    spreads = {Spread.from_legs(p) for p in itertools.permutations(legs)}
    assert len(spreads) == 1
    spread = spreads.pop()
    assert spread.strategy is Strategy.IRON_CONDOR
    assert spread.quantity == 2
    assert spread.root == "SPY" and spread.underlying == "SPY"
    assert spread.expiration == EXP
    assert spread.symbols == (
        "SPY250620C00510000",
        "SPY250620C00520000",
        "SPY250620P00490000",
        "SPY250620P00495000",
    )


def test_spread_with_mixed_expirations_has_no_expiration() -> None:
    spread = Spread.from_legs([leg("-500P"), leg("+500P", expiration=EXP2)])
    assert spread.expiration is None
    assert spread.strategy is Strategy.CUSTOM


def test_with_quantity_scales_every_leg() -> None:
    spread = Spread.from_legs([leg("+495P", 4), leg("-500P", 2)])
    smaller = spread.with_quantity(1)
    assert smaller.quantity == 1
    assert [x.quantity for x in smaller.legs] == [2, 1]
    assert smaller.strategy is spread.strategy
    with pytest.raises(ValueError):
        spread.with_quantity(0)


def test_underlying_from_root() -> None:
    assert underlying_of("SPY") == "SPY"
    assert underlying_of("SPXW") == "SPX"
    assert underlying_of("RUTW") == "RUT"
    assert underlying_of("AAPL1") == "AAPL"
    assert underlying_of("BRKB") == "BRKB"
    spread = Spread.from_legs([leg("-5000P", root="SPXW"), leg("+4990P", root="SPXW")])
    assert spread.root == "SPXW" and spread.underlying == "SPX"
    explicit = Spread.from_legs(spread.legs, underlying="$SPX")
    assert explicit.underlying == "$SPX"


class TestLeg:
    def test_from_broker_position_signed_quantity(self) -> None:
        short = Leg.from_position("SPY250620P00500000", -3)
        assert short.side is Side.SHORT and short.quantity == 3
        assert short.signed_quantity == -3 and short.sign == -1 and short.is_short
        long = Leg.from_position("SPY250620P00495000", Decimal("2.00000000"))
        assert long.side is Side.LONG and long.quantity == 2 and long.sign == 1
        assert long.occ == "SPY250620P00495000"

    @pytest.mark.parametrize("quantity", [0, Decimal("0"), Decimal("1.5"), Decimal("-0.5")])
    def test_not_an_option_position(self, quantity: int | Decimal) -> None:
        with pytest.raises(ValueError):
            Leg.from_position("SPY250620P00500000", quantity)

    def test_bad_symbol(self) -> None:
        with pytest.raises(InvalidSymbol):
            Leg.from_position("SPY", 1)

    def test_quantity_must_be_positive(self) -> None:
        symbol = OptionSymbol.parse("SPY250620P00500000")
        with pytest.raises(ValueError):
            Leg(symbol=symbol, side=Side.LONG, quantity=0)
        with pytest.raises(ValueError):
            Leg(symbol=symbol, side=Side.SHORT, quantity=-1)

    def test_frozen_and_encodable(self) -> None:
        one = leg("-500P", 2)
        with pytest.raises(AttributeError):
            one.quantity = 3  # type: ignore[misc]
        again = msgspec.json.decode(msgspec.json.encode(one), type=Leg)
        assert again == one
        spread = Spread.from_legs([one, leg("+495P", 2)])
        assert msgspec.json.decode(msgspec.json.encode(spread), type=Spread) == spread


_random_legs = st.lists(
    st.builds(
        leg,
        st.tuples(
            st.sampled_from("+-"),
            st.sampled_from(["490", "495", "500", "505", "510"]),
            st.sampled_from("CP"),
        ).map("".join),
        st.integers(min_value=1, max_value=3),
        expiration=st.sampled_from([EXP, EXP2]),
    ),
    min_size=1,
    max_size=5,
)


@given(_random_legs, st.randoms(use_true_random=False))
def test_classification_ignores_order_and_needs_one_quantity(legs: list[Leg], rnd: Random) -> None:
    shuffled = list(legs)
    rnd.shuffle(shuffled)
    strategy = classify(legs)
    assert classify(shuffled) is strategy
    assert Spread.from_legs(shuffled) == Spread.from_legs(legs)
    if strategy is not Strategy.CUSTOM and len(legs) > 1:
        assert len({x.quantity for x in legs}) == 1
        assert len({x.symbol.expiration for x in legs}) == 1
        assert {x.side for x in legs} == {Side.LONG, Side.SHORT}
