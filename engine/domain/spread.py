"""Legs and spreads: the pure shape of a position, without prices.

A :class:`Leg` is one option contract held long or short; its ``quantity`` is a positive number
of contracts and its ``side`` carries the sign (the broker reports a signed quantity instead:
:meth:`Leg.from_position` translates). A :class:`Spread` is the legs one trade holds, sorted in a
canonical order, classified (:mod:`engine.domain.strategy`), with the number of spreads they make.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum

import msgspec

from engine.domain.occ import OptionSymbol
from engine.domain.strategy import Strategy, classify, common_quantity, spread_width

__all__ = ["Leg", "Side", "Spread", "underlying_of"]


class Side(StrEnum):
    LONG = "long"
    SHORT = "short"


class Leg(msgspec.Struct, frozen=True, order=True):
    """One option contract held. Invariant: ``quantity > 0``; the side carries the sign.

    Legs order by symbol (root, expiration, right, strike), then side: that is the canonical
    order of a spread's legs."""

    symbol: OptionSymbol
    side: Side
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"leg quantity must be positive, got {self.quantity}")

    @classmethod
    def from_position(cls, symbol: str | OptionSymbol, quantity: int | Decimal) -> Leg:
        """A leg from a broker position: an OCC symbol and a signed quantity (negative = short).

        Brokers send quantities as numbers such as ``-2.00000000``; a fractional or zero quantity
        is not an option position and raises ValueError. A bad symbol raises InvalidSymbol."""
        parsed = OptionSymbol.parse(symbol) if isinstance(symbol, str) else symbol
        if isinstance(quantity, Decimal):
            if quantity != quantity.to_integral_value():
                raise ValueError(f"fractional option quantity {quantity} for {parsed}")
            quantity = int(quantity)
        if quantity == 0:
            raise ValueError(f"zero quantity for {parsed}")
        side = Side.LONG if quantity > 0 else Side.SHORT
        return cls(symbol=parsed, side=side, quantity=abs(quantity))

    @property
    def is_short(self) -> bool:
        return self.side is Side.SHORT

    @property
    def sign(self) -> int:
        """+1 for a long leg, -1 for a short one: the sign of its value to the holder."""
        return -1 if self.side is Side.SHORT else 1

    @property
    def signed_quantity(self) -> int:
        """The quantity as the broker reports it: negative when short."""
        return self.sign * self.quantity

    @property
    def occ(self) -> str:
        """The OCC symbol text (``SPY240621P00500000``)."""
        return self.symbol.format()


# Roots that differ from their underlying's ticker for a reason other than an adjustment digit:
# PM-settled / weekly index roots. Extend when a new one shows up in positions.
_INDEX_ROOTS: dict[str, str] = {
    "SPXW": "SPX",
    "SPXPM": "SPX",
    "RUTW": "RUT",
    "NDXP": "NDX",
    "VIXW": "VIX",
    "XSPW": "XSP",
    "DJXW": "DJX",
}
_ADJUSTED = re.compile(r"^(?P<base>[A-Z]+?)\d+$")


def underlying_of(root: str) -> str:
    """Best local guess of the underlying ticker for an OCC root: SPXW -> SPX, AAPL1 -> AAPL.

    The broker's option quote carries the true underlying; prefer it when you have one (pass it
    to :meth:`Spread.from_legs`). This guess is for positions, which do not."""
    if root in _INDEX_ROOTS:
        return _INDEX_ROOTS[root]
    match = _ADJUSTED.match(root)
    return match["base"] if match else root


class Spread(msgspec.Struct, frozen=True):
    """The legs one trade holds, classified. Build it with :meth:`from_legs`.

    Invariants: ``legs`` is non-empty and sorted canonically; ``strategy == classify(legs)``;
    ``quantity`` is the number of spreads (the legs' common quantity; for a ratio spread the
    number of whole ratio units); ``expiration`` is the legs' common expiration, or None when
    they differ (then the strategy is custom)."""

    legs: tuple[Leg, ...]
    strategy: Strategy
    quantity: int
    root: str
    underlying: str
    expiration: dt.date | None

    @classmethod
    def from_legs(cls, legs: Iterable[Leg], *, underlying: str | None = None) -> Spread:
        ordered = tuple(sorted(legs))
        if not ordered:
            raise ValueError("a spread needs at least one leg")
        roots = {leg.symbol.root for leg in ordered}
        expirations = {leg.symbol.expiration for leg in ordered}
        # Mixed roots can only be custom; name the spread after the first leg's root.
        root = ordered[0].symbol.root
        return cls(
            legs=ordered,
            strategy=classify(ordered),
            quantity=common_quantity(ordered),
            root=root,
            underlying=underlying or underlying_of(root),
            expiration=expirations.pop() if len(expirations) == 1 and len(roots) == 1 else None,
        )

    @property
    def width(self) -> Decimal | None:
        """Strike width per share (the wider wing of an iron condor); None for single legs and
        custom spreads."""
        return spread_width(self.strategy, self.legs)

    @property
    def ratios(self) -> tuple[int, ...]:
        """Contracts of each leg (in ``legs`` order) per one spread: all 1 except in ratio
        spreads."""
        return tuple(leg.quantity // self.quantity for leg in self.legs)

    @property
    def symbols(self) -> tuple[str, ...]:
        """OCC symbol text of each leg, in ``legs`` order (what a quote feed is asked for)."""
        return tuple(leg.occ for leg in self.legs)

    def with_quantity(self, quantity: int) -> Spread:
        """The same spread holding ``quantity`` spreads (after a partial exit or an add)."""
        if quantity <= 0:
            raise ValueError(f"spread quantity must be positive, got {quantity}")
        legs = tuple(
            Leg(symbol=leg.symbol, side=leg.side, quantity=ratio * quantity)
            for leg, ratio in zip(self.legs, self.ratios, strict=True)
        )
        return msgspec.structs.replace(self, legs=legs, quantity=quantity)
