"""Mark, natural, P&L, max profit/loss and fractions: worked examples and property tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import (
    CONTRACT_MULTIPLIER,
    Leg,
    LegQuote,
    OptionSymbol,
    Side,
    Spread,
    Strategy,
    Valuation,
    close_price,
    dollars,
    is_credit,
    leg_mid,
    loss_fraction,
    mark,
    mark_close_price,
    max_loss,
    max_profit,
    natural_close_price,
    natural_value,
    pnl_per_spread,
    profit_fraction,
    valuate,
)
from engine.domain.pricing import SpreadPricer

EXP = dt.date(2025, 6, 20)
D = Decimal


def leg(spec: str, quantity: int = 1) -> Leg:
    """``"+500P"`` is one long 500 put, ``"-510C"`` one short 510 call."""
    side = Side.LONG if spec[0] == "+" else Side.SHORT
    right = spec[-1]
    strike = D(spec[1:-1])
    symbol = OptionSymbol.parse(f"SPY{EXP:%y%m%d}{right}{int(strike * 1000):08d}")
    return Leg(symbol=symbol, side=side, quantity=quantity)


def quotes_for(spread: Spread, by_spec: dict[str, tuple[str | None, str | None]]) -> list[LegQuote]:
    """Quotes aligned with ``spread.legs`` from ``{"500P": ("2.00", "2.10"), ...}``."""
    out = []
    for one in spread.legs:
        key = f"{one.symbol.strike}{one.symbol.right.value[0].upper()}"
        bid, ask = by_spec[key]
        out.append(
            LegQuote(bid=None if bid is None else D(bid), ask=None if ask is None else D(ask))
        )
    return out


BULL_PUT = Spread.from_legs([leg("+495P", 3), leg("-500P", 3)])
BULL_PUT_QUOTES = {"500P": ("2.00", "2.10"), "495P": ("0.90", "1.00")}
BULL_CALL = Spread.from_legs([leg("-515C"), leg("+510C")])
BULL_CALL_QUOTES = {"510C": ("3.00", "3.20"), "515C": ("0.80", "1.00")}


class TestCreditVertical:
    def test_mark_and_natural(self) -> None:
        quotes = quotes_for(BULL_PUT, BULL_PUT_QUOTES)
        assert mark(BULL_PUT, quotes) == D("-1.10")  # 0.95 - 2.05: a liability
        assert natural_value(BULL_PUT, quotes) == D("-1.20")  # sell 495 at 0.90, buy 500 at 2.10
        assert mark_close_price(BULL_PUT, quotes) == D("1.10")  # a debit to pay
        assert natural_close_price(BULL_PUT, quotes) == D("1.20")

    def test_pnl_and_bounds(self) -> None:
        entry = D("1.50")  # credit received
        assert max_profit(BULL_PUT, entry) == D("1.50")
        assert max_loss(BULL_PUT, entry) == D("3.50")
        value = valuate(BULL_PUT, entry, quotes_for(BULL_PUT, BULL_PUT_QUOTES))
        assert value is not None
        assert value.pnl == D("0.40")
        assert value.natural_pnl == D("0.30")
        assert value.profit_fraction == D("0.40") / D("1.50")
        assert value.loss_fraction == D("-0.40") / D("3.50")
        assert dollars(value.pnl, BULL_PUT.quantity) == D("120")

    def test_a_loss(self) -> None:
        quotes = quotes_for(BULL_PUT, {"500P": ("4.40", "4.60"), "495P": ("1.40", "1.60")})
        value = valuate(BULL_PUT, D("1.00"), quotes)
        assert value is not None
        assert value.mark_close_price == D("3.00")
        assert value.pnl == D("-2.00")
        assert value.loss_fraction == D("0.5")  # lost 2.00 of a possible 4.00
        assert value.profit_fraction == D("-2")  # lost twice the credit


class TestDebitVertical:
    def test_mark_natural_and_pnl(self) -> None:
        quotes = quotes_for(BULL_CALL, BULL_CALL_QUOTES)
        assert mark(BULL_CALL, quotes) == D("2.20")  # an asset
        assert mark_close_price(BULL_CALL, quotes) == D("2.20")  # a credit to receive
        assert natural_close_price(BULL_CALL, quotes) == D("2.00")  # 3.00 bid - 1.00 ask
        entry = D("2.00")  # debit paid
        assert max_profit(BULL_CALL, entry) == D("3.00")
        assert max_loss(BULL_CALL, entry) == D("2.00")
        value = valuate(BULL_CALL, entry, quotes)
        assert value is not None
        assert value.pnl == D("0.20")
        assert value.natural_pnl == D("0")
        assert value.profit_fraction == D("0.20") / D("3.00")
        assert value.loss_fraction == D("-0.1")

    def test_bear_put_debit(self) -> None:
        spread = Spread.from_legs([leg("+500P"), leg("-490P")])
        assert spread.strategy is Strategy.BEAR_PUT_DEBIT
        quotes = quotes_for(spread, {"500P": ("6.00", "6.20"), "490P": ("2.00", "2.20")})
        assert mark_close_price(spread, quotes) == D("4.00")
        assert max_profit(spread, D("3.00")) == D("7.00")
        assert max_loss(spread, D("3.00")) == D("3.00")


def test_iron_condor_max_loss_uses_the_wider_wing() -> None:
    condor = Spread.from_legs([leg("+485P"), leg("-495P"), leg("-510C"), leg("+515C")])
    assert condor.strategy is Strategy.IRON_CONDOR
    assert max_profit(condor, D("1.80")) == D("1.80")
    assert max_loss(condor, D("1.80")) == D("8.20")  # 10 - 1.80
    quotes = quotes_for(
        condor,
        {
            "485P": ("0.10", "0.20"),
            "495P": ("0.50", "0.60"),
            "510C": ("0.70", "0.80"),
            "515C": ("0.20", "0.30"),
        },
    )
    assert mark_close_price(condor, quotes) == D("0.90")  # 0.55 + 0.75 - 0.15 - 0.25
    assert natural_close_price(condor, quotes) == D("1.10")  # 0.60 + 0.80 - 0.10 - 0.20


@pytest.mark.parametrize(
    ("spec", "strategy", "entry", "top", "bottom"),
    [
        ("+510C", Strategy.LONG_CALL, D("2.50"), None, D("2.50")),
        ("+490P", Strategy.LONG_PUT, D("1.25"), None, D("1.25")),
        ("-510C", Strategy.SHORT_CALL, D("2.50"), D("2.50"), None),
        ("-490P", Strategy.SHORT_PUT, D("1.25"), D("1.25"), None),
    ],
)
def test_single_legs(
    spec: str, strategy: Strategy, entry: Decimal, top: Decimal | None, bottom: Decimal | None
) -> None:
    spread = Spread.from_legs([leg(spec, 2)])
    assert spread.strategy is strategy and spread.quantity == 2
    assert max_profit(spread, entry) == top
    assert max_loss(spread, entry) == bottom
    quotes = [LegQuote(bid=D("1.00"), ask=D("1.10"))]
    value = valuate(spread, entry, quotes)
    assert value is not None
    if is_credit(strategy):
        assert value.mark_close_price == D("1.05")
        assert value.pnl == entry - D("1.05")
        assert value.loss_fraction is None
    else:
        assert value.mark_close_price == D("1.05")
        assert value.natural_close_price == D("1.00")
        assert value.pnl == D("1.05") - entry
        assert value.profit_fraction is None


class TestQuotes:
    def test_zero_bid_long_leg_is_a_valid_quote(self) -> None:
        assert leg_mid(LegQuote(bid=D("0"), ask=D("0.05"))) == D("0.025")
        quotes = quotes_for(BULL_PUT, {"500P": ("0.05", "0.10"), "495P": ("0", "0.05")})
        assert mark(BULL_PUT, quotes) == D("0.025") - D("0.075")
        assert natural_close_price(BULL_PUT, quotes) == D("0.10")  # the long sells for nothing

    @pytest.mark.parametrize(
        "quotes",
        [
            {"500P": (None, "2.10"), "495P": ("0.90", "1.00")},
            {"500P": ("2.00", "2.10"), "495P": ("0.90", None)},
            {"500P": ("2.00", "2.10"), "495P": (None, None)},
        ],
    )
    def test_missing_side_gives_no_mark(
        self, quotes: dict[str, tuple[str | None, str | None]]
    ) -> None:
        aligned = quotes_for(BULL_PUT, quotes)
        assert mark(BULL_PUT, aligned) is None
        assert mark_close_price(BULL_PUT, aligned) is None
        assert valuate(BULL_PUT, D("1.50"), aligned) is None

    def test_missing_quote_gives_nothing(self) -> None:
        quotes = [None, LegQuote(bid=D("1"), ask=D("2"))]
        assert mark(BULL_PUT, quotes) is None
        assert natural_value(BULL_PUT, quotes) is None

    def test_natural_needs_only_the_side_it_trades(self) -> None:
        # The short is bought at its ask and the long sold at its bid: the other sides don't matter.
        quotes = quotes_for(BULL_PUT, {"500P": (None, "2.10"), "495P": ("0.90", None)})
        assert natural_close_price(BULL_PUT, quotes) == D("1.20")
        assert mark(BULL_PUT, quotes) is None

    def test_negative_price_is_no_quote(self) -> None:
        assert leg_mid(LegQuote(bid=D("-0.01"), ask=D("0.05"))) is None

    def test_quotes_must_align_with_legs(self) -> None:
        with pytest.raises(ValueError):
            mark(BULL_PUT, [LegQuote(bid=D("1"), ask=D("2"))])


class TestCustom:
    RATIO = Spread.from_legs([leg("-500P", 2), leg("+495P", 4)])

    def test_ratio_weights_per_unit(self) -> None:
        assert self.RATIO.strategy is Strategy.CUSTOM and self.RATIO.quantity == 2
        quotes = quotes_for(self.RATIO, {"500P": ("2.00", "2.00"), "495P": ("1.00", "1.00")})
        # One unit: two long 495 puts and one short 500 put.
        assert mark(self.RATIO, quotes) == D("0.00")
        assert natural_value(self.RATIO, quotes) == D("0.00")

    def test_no_direction_no_pnl(self) -> None:
        assert max_profit(self.RATIO, D("1")) is None
        assert max_loss(self.RATIO, D("1")) is None
        quotes = quotes_for(self.RATIO, {"500P": ("2.00", "2.10"), "495P": ("1.00", "1.10")})
        with pytest.raises(ValueError):
            close_price(Strategy.CUSTOM, D("1"))
        with pytest.raises(ValueError):
            pnl_per_spread(Strategy.CUSTOM, D("1"), D("1"))
        with pytest.raises(ValueError):
            valuate(self.RATIO, D("1"), quotes)
        # Without a mark there is nothing to give a direction to: no mark, no error.
        assert valuate(self.RATIO, D("1"), [quotes[0], LegQuote(bid=None, ask=D("1"))]) is None


def test_fractions_refuse_to_divide_by_nothing() -> None:
    assert profit_fraction(D("1"), None) is None
    assert profit_fraction(D("1"), D("0")) is None
    assert loss_fraction(D("-1"), None) is None
    assert loss_fraction(D("-1"), D("-0.5")) is None
    assert loss_fraction(D("-1"), D("2")) == D("0.5")


def test_contract_multiplier() -> None:
    assert CONTRACT_MULTIPLIER == 100
    assert dollars(D("0.37"), 4) == D("148.00")


# ----------------------------------------------------------------------------- properties

cents = st.integers(min_value=0, max_value=5_000).map(lambda c: D(c) / 100)
VERTICALS = [
    Strategy.BULL_PUT_CREDIT,
    Strategy.BEAR_PUT_DEBIT,
    Strategy.BEAR_CALL_CREDIT,
    Strategy.BULL_CALL_DEBIT,
]


@st.composite
def verticals(
    draw: st.DrawFn, strategies: list[Strategy] = VERTICALS
) -> tuple[Spread, list[LegQuote]]:
    """A vertical of any kind with arbitrage-free quotes: the leg nearer the money is worth
    between 0 and the width more than the other, and every bid is <= its ask."""
    strategy = draw(st.sampled_from(strategies))
    low = draw(st.integers(min_value=1, max_value=900))
    width = draw(st.sampled_from([D("0.5"), D("1"), D("2.5"), D("5"), D("10"), D("25")]))
    high = D(low) + width
    right = "P" if strategy in (Strategy.BULL_PUT_CREDIT, Strategy.BEAR_PUT_DEBIT) else "C"
    short_high = strategy in (Strategy.BULL_PUT_CREDIT, Strategy.BULL_CALL_DEBIT)
    quantity = draw(st.integers(min_value=1, max_value=50))
    low_leg = leg(f"{'+' if short_high else '-'}{low}{right}", quantity)
    high_leg = leg(f"{'-' if short_high else '+'}{high}{right}", quantity)
    spread = Spread.from_legs([low_leg, high_leg])
    assert spread.strategy is strategy
    cheap_bid = draw(cents)
    cheap_ask = cheap_bid + draw(cents)
    extra = draw(st.integers(min_value=0, max_value=int(width * 100)).map(lambda c: D(c) / 100))
    cheap = LegQuote(bid=cheap_bid, ask=cheap_ask)
    rich = LegQuote(bid=cheap_bid + extra, ask=cheap_ask + extra)
    # Puts: the higher strike is richer. Calls: the lower strike is richer.
    rich_is_high = right == "P"
    by_leg = {high_leg: rich if rich_is_high else cheap, low_leg: cheap if rich_is_high else rich}
    return spread, [by_leg[one] for one in spread.legs]


@given(verticals())
def test_pnl_is_zero_when_the_mark_equals_the_entry(case: tuple[Spread, list[LegQuote]]) -> None:
    spread, quotes = case
    entry = mark_close_price(spread, quotes)
    assert entry is not None
    value = valuate(spread, entry, quotes)
    assert value is not None
    assert value.pnl == 0
    assert dollars(value.pnl, spread.quantity) == 0


@given(verticals([Strategy.BULL_PUT_CREDIT, Strategy.BEAR_CALL_CREDIT]), st.data())
def test_profit_fraction_is_one_exactly_when_closing_costs_nothing(
    case: tuple[Spread, list[LegQuote]], data: st.DataObject
) -> None:
    spread, quotes = case
    width = spread.width
    assert width is not None
    entry = data.draw(
        st.integers(min_value=1, max_value=int(width * 100) - 1).map(lambda c: D(c) / 100)
    )
    value = valuate(spread, entry, quotes)
    assert value is not None
    assert (value.profit_fraction == 1) == (value.mark_close_price == 0)
    assert (value.loss_fraction == -entry / (width - entry)) == (value.mark_close_price == 0)


@given(verticals(), st.data())
def test_pnl_stays_between_max_loss_and_max_profit(
    case: tuple[Spread, list[LegQuote]], data: st.DataObject
) -> None:
    spread, quotes = case
    width = spread.width
    assert width is not None
    # A real entry is strictly inside (0, width): nobody pays the whole width or nothing.
    entry = data.draw(
        st.integers(min_value=1, max_value=int(width * 100) - 1).map(lambda c: D(c) / 100)
    )
    value = valuate(spread, entry, quotes)
    assert value is not None
    assert value.max_profit is not None and value.max_loss is not None
    assert value.max_profit + value.max_loss == width
    assert -value.max_loss <= value.pnl <= value.max_profit
    assert value.profit_fraction is not None and value.loss_fraction is not None
    assert value.profit_fraction <= 1 and value.loss_fraction <= 1
    # The touch is never better than the mid for quotes that are not crossed.
    assert value.natural_value <= value.mark
    assert value.natural_pnl <= value.pnl


@given(verticals())
def test_credit_and_debit_signs(case: tuple[Spread, list[LegQuote]]) -> None:
    spread, quotes = case
    value = mark(spread, quotes)
    assert value is not None
    if is_credit(spread.strategy):
        assert value <= 0  # a credit spread is a liability to its holder
    else:
        assert value >= 0
    assert mark_close_price(spread, quotes) == abs(value)


@given(
    st.decimals(min_value=-1000, max_value=1000, places=4, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10_000),
)
def test_dollars_is_per_spread_times_quantity_times_100(per_spread: Decimal, quantity: int) -> None:
    assert dollars(per_spread, quantity) == per_spread * quantity * 100
    assert dollars(per_spread, quantity) == dollars(per_spread * quantity, 1)


@given(verticals(), st.data())
def test_a_reused_pricer_values_exactly_as_the_functions_do(
    case: tuple[Spread, list[LegQuote]], data: st.DataObject
) -> None:
    spread, quotes = case
    entry = data.draw(st.integers(min_value=1, max_value=3_000).map(lambda c: D(c) / 100))
    pricer = SpreadPricer(spread, entry)
    one_sided = [quotes[0], LegQuote(bid=None, ask=quotes[1].ask)]
    for shown in (quotes, one_sided, list(reversed(quotes)), quotes):
        value, touch = mark(spread, shown), natural_value(spread, shown)
        if value is None or touch is None:
            assert pricer.valuate(shown) is None
            continue
        at_mark = close_price(spread.strategy, value)
        at_touch = close_price(spread.strategy, touch)
        pnl = pnl_per_spread(spread.strategy, entry, at_mark)
        top, bottom = max_profit(spread, entry), max_loss(spread, entry)
        assert pricer.valuate(shown) == Valuation(
            mark=value,
            natural_value=touch,
            mark_close_price=at_mark,
            natural_close_price=at_touch,
            pnl=pnl,
            natural_pnl=pnl_per_spread(spread.strategy, entry, at_touch),
            max_profit=top,
            max_loss=bottom,
            profit_fraction=profit_fraction(pnl, top),
            loss_fraction=loss_fraction(pnl, bottom),
        )
