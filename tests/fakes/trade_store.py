"""InMemoryTradeStore: the trade store (``actors.portfolio_mirror.TradeStore``) in memory.

A fake at the database boundary (DESIGN section 4) for actor tests under the autojump clock.
It keeps the rules ``storage.trades.PgTradeStore`` and the schema keep, and raises the same
``storage.IntegrityError`` where a constraint would refuse; ``tests/storage/test_trades.py``
runs the same contract against both, so a divergence fails a test.

Test helpers beyond the interface: :meth:`set_exit_in_flight` (an EXIT order working, as a
row in ``orders`` would say), :meth:`set_status` and :meth:`close`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from engine.domain.reconcile import OpenTrade, PositionRow
from engine.domain.spread import Leg, Spread
from engine.domain.strategy import Strategy
from engine.messages import CloseReason, TradeOrigin, TradeSnapshot
from storage import IntegrityError
from storage.trades import StoredTrade

__all__ = ["InMemoryTradeStore"]


@dataclasses.dataclass
class _Trade:
    trade_id: int
    account_id: str
    underlying: str
    strategy: Strategy
    ratio_legs: tuple[Leg, ...]
    quantity: int
    opening_quantity: int
    entry_price: Decimal
    origin: TradeOrigin
    managed: bool
    exit_plan: dict[str, Any]
    opened_at: dt.datetime
    status: str = "OPEN"
    high_water_mark: Decimal | None = None
    fired_tiers: set[int] = dataclasses.field(default_factory=set)
    entry_iv: Decimal | None = None
    realized_pnl: Decimal | None = None
    close_reason: CloseReason | None = None
    closed_at: dt.datetime | None = None


def _integrity(constraint: str, message: str) -> IntegrityError:
    return IntegrityError(message, sqlstate="23514", constraint_name=constraint)


class InMemoryTradeStore:
    """Trades and position mirrors in dicts. Not safe to share between trio runs."""

    def __init__(self, *, now: dt.datetime | None = None) -> None:
        self._trades: dict[int, _Trade] = {}
        self._positions: dict[str, list[PositionRow]] = {}
        self._exits_in_flight: set[int] = set()
        self._next_id = 1
        self._now = now or dt.datetime(2024, 6, 3, 14, 30, tzinfo=dt.UTC)
        self.replace_calls = 0  # how many times a mirror was replaced (tests read it)

    # -- test helpers -------------------------------------------------------------------------

    def set_exit_in_flight(self, trade_id: int, in_flight: bool = True) -> None:
        (self._exits_in_flight.add if in_flight else self._exits_in_flight.discard)(trade_id)

    def set_status(self, trade_id: int, status: str) -> None:
        self._trades[trade_id].status = status

    def close(
        self, trade_id: int, reason: CloseReason, realized_pnl: Decimal | None, at: dt.datetime
    ) -> None:
        """Close a trade as the order router would after its closing fills."""
        trade = self._trades[trade_id]
        trade.status, trade.quantity, trade.closed_at = "CLOSED", 0, at
        trade.close_reason, trade.realized_pnl = reason, realized_pnl

    # -- trades -------------------------------------------------------------------------------

    async def load_open_trades(self, account_id: str) -> list[OpenTrade]:
        return [
            OpenTrade(
                snapshot=self._snapshot(t),
                exit_in_flight=t.status == "CLOSING" or t.trade_id in self._exits_in_flight,
            )
            for t in sorted(self._trades.values(), key=lambda t: t.trade_id)
            if t.account_id == account_id and t.status != "CLOSED"
        ]

    async def load_trade_and_sharers(self, account_id: str, trade_id: int) -> list[OpenTrade]:
        trades = await self.load_open_trades(account_id)
        mine = next((t for t in trades if t.trade_id == trade_id), None)
        if mine is None:
            return []
        symbols = {leg.occ for leg in mine.snapshot.legs}
        return [t for t in trades if symbols & {leg.occ for leg in t.snapshot.legs}]

    async def get_trade(self, trade_id: int) -> StoredTrade | None:
        trade = self._trades.get(trade_id)
        if trade is None:
            return None
        return StoredTrade(
            trade_id=trade.trade_id,
            account_id=trade.account_id,
            underlying=trade.underlying,
            strategy=trade.strategy,
            legs=trade.ratio_legs,
            status=trade.status,
            quantity=trade.quantity,
            opening_quantity=trade.opening_quantity,
            entry_price=trade.entry_price,
            origin=trade.origin,
            managed=trade.managed,
            high_water_mark=trade.high_water_mark,
            fired_tiers=tuple(sorted(trade.fired_tiers)),
            entry_iv=trade.entry_iv,
            realized_pnl=trade.realized_pnl,
            close_reason=trade.close_reason,
            opened_at=trade.opened_at,
            closed_at=trade.closed_at,
        )

    async def insert_trade(
        self,
        *,
        account_id: str,
        spread: Spread,
        entry_price: Decimal,
        origin: TradeOrigin,
        managed: bool,
        opened_at: dt.datetime | None = None,
        exit_plan: dict[str, Any] | None = None,
    ) -> TradeSnapshot:
        if entry_price < 0:
            raise _integrity("trades_entry_price_check", "entry_price must be >= 0")
        ratio_legs = tuple(
            msgspec.structs.replace(leg, quantity=ratio)
            for leg, ratio in zip(spread.legs, spread.ratios, strict=True)
        )
        trade = _Trade(
            trade_id=self._next_id,
            account_id=account_id,
            underlying=spread.underlying,
            strategy=spread.strategy,
            ratio_legs=ratio_legs,
            quantity=spread.quantity,
            opening_quantity=spread.quantity,
            entry_price=entry_price,
            origin=origin,
            managed=managed,
            exit_plan=dict(exit_plan or {}),
            opened_at=opened_at or self._now,
        )
        self._trades[trade.trade_id] = trade
        self._next_id += 1
        return self._snapshot(trade)

    async def update_trade_quantity(self, trade_id: int, quantity: int) -> bool:
        trade = self._trades.get(trade_id)
        if trade is None or trade.status == "CLOSED":
            return False
        if not 0 < quantity <= trade.opening_quantity:
            raise _integrity("trades_quantity_check", f"quantity {quantity} out of range")
        trade.quantity = quantity
        return True

    async def close_phantom(self, trade_id: int, *, at: dt.datetime) -> bool:
        trade = self._trades.get(trade_id)
        if trade is None or trade.status != "OPEN" or trade_id in self._exits_in_flight:
            return False
        trade.status = "CLOSED"
        trade.quantity = 0
        trade.close_reason = CloseReason.PHANTOM
        trade.realized_pnl = None
        trade.closed_at = at
        return True

    async def save_watch_state(
        self,
        trade_id: int,
        high_water_mark: Decimal | None,
        fired_tiers: Sequence[int],
        entry_iv: Decimal | None,
    ) -> None:
        trade = self._trades.get(trade_id)
        if trade is None:
            return
        if entry_iv is not None and entry_iv <= 0:
            raise _integrity("trades_entry_iv_check", "entry_iv must be positive")
        trade.high_water_mark = high_water_mark
        trade.fired_tiers |= set(fired_tiers)
        if entry_iv is not None:
            trade.entry_iv = entry_iv

    # -- the broker-position mirror -----------------------------------------------------------

    async def replace_positions(self, account_id: str, rows: Sequence[PositionRow]) -> None:
        # Check every row before changing anything: the Postgres store does it all in one
        # transaction, so a bad row leaves the old mirror whole there too.
        for row in rows:
            if row.quantity <= 0:
                raise _integrity("portfolio_positions_quantity_check", "quantity must be > 0")
        # A leg given twice: the later row wins, as with the upserts of the Postgres store.
        by_key = {(row.symbol, row.side.value): row for row in rows}
        self._positions[account_id] = [by_key[key] for key in sorted(by_key)]
        self.replace_calls += 1

    async def load_positions(self, account_id: str) -> list[PositionRow]:
        return list(self._positions.get(account_id, []))

    # -- internals ----------------------------------------------------------------------------

    def _snapshot(self, trade: _Trade) -> TradeSnapshot:
        legs = tuple(
            msgspec.structs.replace(leg, quantity=leg.quantity * trade.quantity)
            for leg in trade.ratio_legs
        )
        return TradeSnapshot(
            trade_id=trade.trade_id,
            account_id=trade.account_id,
            underlying=trade.underlying,
            strategy=trade.strategy,
            legs=legs,
            quantity=trade.quantity,
            opening_quantity=trade.opening_quantity,
            entry_price=trade.entry_price,
            origin=trade.origin,
            managed=trade.managed,
            exit_plan=dict(trade.exit_plan),
            high_water_mark=trade.high_water_mark,
            fired_tiers=tuple(sorted(trade.fired_tiers)),
            entry_iv=trade.entry_iv,
            opened_at=trade.opened_at,
        )
