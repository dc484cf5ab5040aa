"""OCC option symbols in Tradier's form.

``root + YYMMDD + C|P + strike*1000 as 8 digits``, root not space-padded: ``SPY240621P00500000``.
Parse from the right: the last 15 characters are date, right and strike; the rest is the root,
which may be longer than the underlying (SPXW, RUTW) or adjusted (AAPL1), and drops dots
(BRK.B -> BRKB).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from enum import StrEnum

import msgspec

from engine.errors import InvalidSymbol

__all__ = ["OptionRight", "OptionSymbol", "is_option_symbol"]

_SUFFIX = re.compile(r"(?P<date>[0-9]{6})(?P<right>[CP])(?P<strike>[0-9]{8})\Z")
_ROOT = re.compile(r"[A-Z0-9]{1,6}\Z")
_MAX_STRIKE = Decimal("99999.999")


class OptionRight(StrEnum):
    CALL = "call"
    PUT = "put"


class OptionSymbol(msgspec.Struct, frozen=True, order=True):
    """One option contract. Invariants: root is 1-6 of [A-Z0-9]; 0 < strike <= 99999.999 with at
    most three decimals; expiration within 2000-2099 (the two-digit year of the symbol)."""

    root: str
    expiration: dt.date
    right: OptionRight
    strike: Decimal

    @classmethod
    def parse(cls, text: str) -> OptionSymbol:
        match = _SUFFIX.search(text)
        root = text[: -15] if match else ""
        if match is None or not _ROOT.match(root):
            raise InvalidSymbol(f"not an OCC option symbol: {text!r}")
        date = match["date"]
        try:
            expiration = dt.date(2000 + int(date[:2]), int(date[2:4]), int(date[4:]))
        except ValueError as exc:
            raise InvalidSymbol(f"bad expiration date in option symbol {text!r}") from exc
        strike = Decimal(int(match["strike"])) / 1000
        if strike <= 0:
            raise InvalidSymbol(f"zero strike in option symbol {text!r}")
        right = OptionRight.CALL if match["right"] == "C" else OptionRight.PUT
        return cls(root=root, expiration=expiration, right=right, strike=_plain(strike))

    def format(self) -> str:
        millis = self.strike * 1000
        if millis != millis.to_integral_value() or not 0 < self.strike <= _MAX_STRIKE:
            raise InvalidSymbol(f"strike {self.strike} cannot be written in an OCC symbol")
        if not _ROOT.match(self.root) or not 2000 <= self.expiration.year <= 2099:
            raise InvalidSymbol(f"root {self.root!r} / expiration {self.expiration} not OCC-valid")
        right = "C" if self.right is OptionRight.CALL else "P"
        return f"{self.root}{self.expiration:%y%m%d}{right}{int(millis):08d}"

    def __str__(self) -> str:
        return self.format()


def _plain(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent form (400, not 4E+2)."""
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def is_option_symbol(text: str) -> bool:
    """True when ``text`` parses as an OCC option symbol (an equity symbol does not)."""
    try:
        OptionSymbol.parse(text)
    except InvalidSymbol:
        return False
    return True
