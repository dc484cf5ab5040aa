"""Broker-neutral types: what the engine asks of any broker, whatever its wire format.

Each broker package (``tradier``, ``alpaca``, ``paper``) translates its own answers into these
types at its boundary (``<broker>/broker.py``), so nothing above the adapters knows which broker
it talks to. The Protocols here are deliberately small, one capability each; the actors take the
one they need (PortfolioMirror takes a :class:`PositionSource`).

This module imports nothing from the broker packages and nothing heavy: the domain, actors and
storage may all import it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Protocol

import msgspec

__all__ = ["BrokerPosition", "PositionSource"]


class BrokerPosition(msgspec.Struct, frozen=True, kw_only=True):
    """One position as the broker reports it: one row per symbol, net of longs and shorts.

    ``symbol`` is an OCC option symbol in Tradier's form (``SPY240621P00500000``) or an equity
    ticker (stock left by an assignment). ``quantity`` is signed: negative when short; never
    fractional (adapters reject a fractional answer). ``cost_basis`` is the broker's total for
    the whole position in dollars, signed like the cash flow at entry: negative when the
    position was opened for a credit (a short option), positive for a debit. ``acquired_at`` is
    when the broker says the position was opened, if it says.
    """

    symbol: str
    quantity: int
    cost_basis: Decimal
    acquired_at: dt.datetime | None = None


class PositionSource(Protocol):
    """Reads the account's positions.

    ``get_positions`` returns every position held (``[]`` when the broker says there are none,
    which callers must not take at face value: see :mod:`engine.domain.reconcile`). It raises
    ``BrokerUnavailable`` / ``RateLimited`` for a failed read, ``BrokerAnswerInvalid`` for an
    answer that does not decode, ``AuthFailed`` when the credentials are refused.
    """

    async def get_positions(self) -> list[BrokerPosition]: ...
