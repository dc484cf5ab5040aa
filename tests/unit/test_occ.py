"""OCC option symbols: round trips over every valid shape, and refusal of everything else."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.domain.occ import OptionRight, OptionSymbol, is_option_symbol
from engine.errors import InvalidSymbol

roots = st.from_regex(r"[A-Z0-9]{1,6}", fullmatch=True) | st.sampled_from(
    ["SPXW", "SPX", "RUTW", "NDXP", "AAPL1", "BRKB", "X", "F", "GOOGL", "ABCDE1", "2XYZ"]
)
expirations = st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31))
rights = st.sampled_from(list(OptionRight))
# Strikes 0.001 .. 99999.999 in thousandths: every strike an OCC symbol can carry.
strikes = st.integers(min_value=1, max_value=99_999_999).map(lambda m: Decimal(m) / 1000)

_VALID = re.compile(r"[A-Z0-9]{1,6}[0-9]{6}[CP][0-9]{8}")


@given(root=roots, expiration=expirations, right=rights, strike=strikes)
def test_format_then_parse_is_identity(
    root: str, expiration: dt.date, right: OptionRight, strike: Decimal
) -> None:
    symbol = OptionSymbol(root=root, expiration=expiration, right=right, strike=strike)
    text = symbol.format()
    assert _VALID.fullmatch(text)
    assert text.startswith(root)
    parsed = OptionSymbol.parse(text)
    assert parsed == symbol
    assert parsed.strike == strike
    assert str(parsed) == text


@given(root=roots, expiration=expirations, right=st.sampled_from("CP"), strike=strikes)
def test_parse_then_format_is_identity(
    root: str, expiration: dt.date, right: str, strike: Decimal
) -> None:
    text = f"{root}{expiration:%y%m%d}{right}{int(strike * 1000):08d}"
    assert OptionSymbol.parse(text).format() == text
    assert is_option_symbol(text)


@pytest.mark.parametrize(
    ("text", "root", "expiration", "right", "strike"),
    [
        ("SPY240621P00500000", "SPY", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("500")),
        ("SPXW241220C05125000", "SPXW", dt.date(2024, 12, 20), OptionRight.CALL, Decimal("5125")),
        ("AAPL1250117C00150500", "AAPL1", dt.date(2025, 1, 17), OptionRight.CALL, Decimal("150.5")),
        ("F250321P00012125", "F", dt.date(2025, 3, 21), OptionRight.PUT, Decimal("12.125")),
        ("BRKB250620C00400000", "BRKB", dt.date(2025, 6, 20), OptionRight.CALL, Decimal("400")),
    ],
)
def test_known_symbols(
    text: str, root: str, expiration: dt.date, right: OptionRight, strike: Decimal
) -> None:
    symbol = OptionSymbol.parse(text)
    assert (symbol.root, symbol.expiration, symbol.right, symbol.strike) == (
        root,
        expiration,
        right,
        strike,
    )
    assert symbol.format() == text


def test_parsed_strike_has_no_exponent_form() -> None:
    assert str(OptionSymbol.parse("SPY240621P00500000").strike) == "500"
    assert str(OptionSymbol.parse("SPY240621P00000500").strike) == "0.5"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SPY",
        "240621P00500000",  # no root
        "SPYSPYS240621P00500000",  # root of 7
        "spy240621P00500000",  # lower case
        "SPY 240621P00500000",  # space in the root
        "SPY   240621P00500000",  # OSI space-padded form is not Tradier's
        "BRK.B240621P00500000",  # dots are dropped in roots
        "SPY241321P00500000",  # month 13
        "SPY240230P00500000",  # 30 February
        "SPY240621X00500000",  # neither call nor put
        "SPY240621P0050000",  # 7-digit strike
        "SPY240621P00000000",  # zero strike
        "SPY240621P00500000\n",  # trailing newline
        "SPY\n240621P00500000",
        "SPY24O621P00500000",  # letter O in the date
        "SPY\u0662\u0664\u0660\u0666\u0662\u0661P00500000",  # non-ASCII digits
    ],
)
def test_invalid_symbols_raise(text: str) -> None:
    with pytest.raises(InvalidSymbol):
        OptionSymbol.parse(text)
    assert not is_option_symbol(text)


@given(st.text(max_size=30))
@example("SPY240621P00500000 ")
@example("\u0661SPY240621P00500000")
def test_arbitrary_text_parses_only_when_valid(text: str) -> None:
    """Any string either is a valid OCC symbol that round-trips, or raises InvalidSymbol."""
    try:
        symbol = OptionSymbol.parse(text)
    except InvalidSymbol:
        assert not _VALID.fullmatch(text) or not _date_ok(text) or text.endswith("00000000")
        return
    assert symbol.format() == text


def _date_ok(text: str) -> bool:
    date = text[-15:-9]
    try:
        dt.date(2000 + int(date[:2]), int(date[2:4]), int(date[4:]))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "symbol",
    [
        OptionSymbol("SPY", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("500.0005")),
        OptionSymbol("SPY", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("0")),
        OptionSymbol("SPY", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("100000")),
        OptionSymbol("SPYSPYS", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("500")),
        OptionSymbol("", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("500")),
        OptionSymbol("spy", dt.date(2024, 6, 21), OptionRight.PUT, Decimal("500")),
        OptionSymbol("SPY", dt.date(2100, 1, 15), OptionRight.PUT, Decimal("500")),
    ],
)
def test_unformattable_symbols_raise(symbol: OptionSymbol) -> None:
    with pytest.raises(InvalidSymbol):
        symbol.format()
