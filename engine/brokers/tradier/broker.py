"""Tradier behind the broker-neutral interface (:mod:`engine.brokers`).

:class:`TradierBroker` wraps a :class:`~engine.brokers.tradier.rest.TradierRest` and translates
its wire views into broker-neutral types. Errors pass through as the REST client raised them
(already our tree); translation problems found here raise ``BrokerAnswerInvalid``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Protocol

from engine.brokers import BrokerPosition
from engine.brokers.tradier import wire
from engine.errors import BrokerAnswerInvalid

__all__ = ["TradierBroker", "position_from_wire"]


class _PositionsRest(Protocol):
    async def get_positions(self) -> list[wire.Position]: ...


class TradierBroker:
    """One Tradier account as a :class:`~engine.brokers.PositionSource` (more capabilities
    join as the engine needs them)."""

    def __init__(self, rest: _PositionsRest) -> None:
        self._rest = rest

    async def get_positions(self) -> list[BrokerPosition]:
        return [position_from_wire(p) for p in await self._rest.get_positions()]


def position_from_wire(position: wire.Position) -> BrokerPosition:
    """Tradier's position view as a :class:`BrokerPosition`.

    Tradier sends quantities as decimals (``-2.00000000``). A fractional quantity is not an
    option position and cannot be mirrored as whole contracts, so it makes the whole answer
    invalid rather than being rounded into something we do not hold."""
    quantity = position.quantity
    if quantity != quantity.to_integral_value():
        raise BrokerAnswerInvalid(
            f"positions: fractional quantity {quantity} for {position.symbol!r}"
        )
    return BrokerPosition(
        symbol=position.symbol,
        quantity=int(quantity),
        cost_basis=Decimal(position.cost_basis),
        acquired_at=_acquired_at(position.date_acquired),
    )


def _acquired_at(text: str | None) -> dt.datetime | None:
    """Tradier's ``2018-08-08T14:41:11.405Z``; None when absent or unreadable (it is only a
    hint for an imported trade's open time, not worth failing the whole answer for)."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
