"""Trades, the broker-position mirror and watcher state in PostgreSQL: :class:`PgTradeStore`.

The store PortfolioMirror and the PositionWatchers use (``actors.portfolio_mirror.TradeStore``
is the interface; ``tests/fakes/trade_store.py`` is its in-memory twin for actor tests, held to
the same behaviour by ``tests/storage/test_trades.py``).

How trades are stored (``migrations/0001_initial.sql``): ``legs`` holds ONE spread's legs
(``quantity`` is the leg's ratio), ``quantity`` the spreads held now. A
:class:`~engine.messages.TradeSnapshot` holds legs at the trade's whole quantity; the
conversion lives here. ``fired_tiers`` holds one object per fired tier (``{"tier": 0,
"fired_at": ...}``); bare integers are read too.

Rules the writes keep:

- the position mirror is replaced in ONE transaction and is pure: rows the answer holds are
  upserted, every other row of the account is deleted;
- a phantom close sets ``close_reason = PHANTOM`` and leaves ``realized_pnl`` NULL, and refuses
  (returns False) while an exit order of the trade is not final or the trade is not OPEN: the
  check and the write are one statement, so no exit order can slip in between;
- watcher state only moves forward where forgetting is dangerous: fired tiers are a union
  (a tier once fired stays fired), a known entry IV is never erased by None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from engine.domain.occ import OptionSymbol
from engine.domain.reconcile import OpenTrade, PositionRow
from engine.domain.spread import Leg, Side, Spread
from engine.domain.strategy import Strategy
from engine.messages import CloseReason, TradeOrigin, TradeSnapshot
from storage.database import Database, Executor, Row

__all__ = [
    "FINAL_ORDER_STATUSES",
    "FINAL_STATUSES_SQL",
    "PgTradeStore",
    "StoredTrade",
    "fired_tier_indices",
    "legs_at_quantity",
    "legs_document",
]

FINAL_ORDER_STATUSES: tuple[str, ...] = ("FILLED", "CANCELLED", "REJECTED", "EXPIRED")
# The final order statuses as an SQL list, for `status NOT IN (...)`.
FINAL_STATUSES_SQL = ", ".join(f"'{status}'" for status in FINAL_ORDER_STATUSES)
_EXIT_WORKING = f"""
    EXISTS (SELECT 1 FROM orders o
            WHERE o.trade_id = t.trade_id AND o.purpose = 'EXIT'
              AND o.status NOT IN ({FINAL_STATUSES_SQL}))
"""


class StoredTrade(msgspec.Struct, frozen=True, kw_only=True):
    """One trade row as stored, closed or not. ``legs`` are ONE spread's legs (quantity = the
    leg's ratio); ``status`` is OPEN, CLOSING or CLOSED."""

    trade_id: int
    account_id: str
    underlying: str
    strategy: Strategy
    legs: tuple[Leg, ...]
    status: str
    quantity: int
    opening_quantity: int
    entry_price: Decimal
    origin: TradeOrigin
    managed: bool
    high_water_mark: Decimal | None
    fired_tiers: tuple[int, ...]
    entry_iv: Decimal | None
    realized_pnl: Decimal | None
    close_reason: CloseReason | None
    opened_at: dt.datetime
    closed_at: dt.datetime | None


def legs_document(spread: Spread) -> list[dict[str, Any]]:
    """The ``trades.legs`` document of a spread: one spread's legs, canonical order."""
    return [
        {"symbol": leg.occ, "side": leg.side.value, "quantity": ratio}
        for leg, ratio in zip(spread.legs, spread.ratios, strict=True)
    ]


def fired_tier_indices(document: Sequence[Any]) -> tuple[int, ...]:
    """Tier indices of a ``fired_tiers`` document (objects with ``tier``, or bare ints)."""
    indices = {int(item["tier"]) if isinstance(item, dict) else int(item) for item in document}
    return tuple(sorted(indices))


def _ratio_legs(document: Sequence[Any]) -> tuple[Leg, ...]:
    return tuple(
        Leg(
            symbol=OptionSymbol.parse(item["symbol"]),
            side=Side(item["side"]),
            quantity=int(item["quantity"]),
        )
        for item in document
    )


def legs_at_quantity(document: Sequence[Any], quantity: int) -> tuple[Leg, ...]:
    """A ``trades.legs`` document's legs at ``quantity`` spreads (as a TradeSnapshot holds
    them)."""
    return tuple(
        msgspec.structs.replace(leg, quantity=leg.quantity * quantity)
        for leg in _ratio_legs(document)
    )


def _snapshot(row: Row) -> TradeSnapshot:
    quantity = int(row["quantity"])
    legs = tuple(
        msgspec.structs.replace(leg, quantity=leg.quantity * quantity)
        for leg in _ratio_legs(row["legs"])
    )
    return TradeSnapshot(
        trade_id=int(row["trade_id"]),
        account_id=row["account"],
        underlying=row["underlying"],
        strategy=Strategy(row["strategy"]),
        legs=legs,
        quantity=quantity,
        opening_quantity=int(row["opening_quantity"]),
        entry_price=row["entry_price"],
        origin=TradeOrigin(row["origin"]),
        managed=bool(row["managed"]),
        exit_plan=dict(row["exit_plan"]),
        high_water_mark=row["high_water_mark"],
        fired_tiers=fired_tier_indices(row["fired_tiers"]),
        entry_iv=row["entry_iv"],
        opened_at=row["opened_at"],
    )


def _stored(row: Row) -> StoredTrade:
    reason = row["close_reason"]
    return StoredTrade(
        trade_id=int(row["trade_id"]),
        account_id=row["account"],
        underlying=row["underlying"],
        strategy=Strategy(row["strategy"]),
        legs=_ratio_legs(row["legs"]),
        status=row["status"],
        quantity=int(row["quantity"]),
        opening_quantity=int(row["opening_quantity"]),
        entry_price=row["entry_price"],
        origin=TradeOrigin(row["origin"]),
        managed=bool(row["managed"]),
        high_water_mark=row["high_water_mark"],
        fired_tiers=fired_tier_indices(row["fired_tiers"]),
        entry_iv=row["entry_iv"],
        realized_pnl=row["realized_pnl"],
        close_reason=None if reason is None else CloseReason(reason),
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
    )


def _position(row: Row) -> PositionRow:
    return PositionRow(
        symbol=row["symbol"],
        underlying=row["underlying"],
        expiration=row["expiration"],
        option_type=row["option_type"],
        strike=row["strike"],
        side=Side(row["side"]),
        quantity=int(row["quantity"]),
        cost_basis=row["cost_basis"],
        acquired_at=row["acquired_at"],
    )


_UPSERT_POSITION = """
    INSERT INTO portfolio_positions (account, symbol, underlying, expiration, option_type,
                                     strike, side, quantity, cost_basis, acquired_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT ON CONSTRAINT portfolio_positions_leg_key DO UPDATE
        SET underlying = EXCLUDED.underlying,
            quantity = EXCLUDED.quantity,
            cost_basis = EXCLUDED.cost_basis,
            acquired_at = COALESCE(EXCLUDED.acquired_at, portfolio_positions.acquired_at),
            last_seen_at = now()
"""

_DELETE_ABSENT_POSITIONS = """
    DELETE FROM portfolio_positions
    WHERE account = $1
      AND (symbol, side) NOT IN (SELECT s, d FROM unnest($2::text[], $3::text[]) AS u (s, d))
"""


class PgTradeStore:
    """The trade store on a :class:`~storage.Database` (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- trades -----------------------------------------------------------------------------

    async def load_open_trades(self, account_id: str) -> list[OpenTrade]:
        """The account's trades that are not CLOSED, oldest first, each with whether an exit
        is in flight (the trade is CLOSING, or an EXIT order of it is not final)."""
        rows = await self._db.fetch(
            f"""
            SELECT t.*, (t.status = 'CLOSING' OR {_EXIT_WORKING}) AS exit_in_flight
            FROM trades t
            WHERE t.account = $1 AND t.status <> 'CLOSED'
            ORDER BY t.trade_id
            """,
            account_id,
        )
        return [
            OpenTrade(snapshot=_snapshot(row), exit_in_flight=bool(row["exit_in_flight"]))
            for row in rows
        ]

    async def load_trade_and_sharers(self, account_id: str, trade_id: int) -> list[OpenTrade]:
        """Trade ``trade_id`` if it is not CLOSED, and the account's other trades that are not
        CLOSED and hold a leg on one of its symbols, oldest first (as :meth:`load_open_trades`).

        What an exit needs to attribute the broker's positions (``held_for_trade``): a trade on
        other symbols cannot claim any of this one's contracts. At 1,000 open trades this is one
        row or a few instead of 1,000 decoded on the tick-to-order path."""
        rows = await self._db.fetch(
            f"""
            SELECT t.*, (t.status = 'CLOSING' OR {_EXIT_WORKING}) AS exit_in_flight
            FROM trades t
            WHERE t.account = $1 AND t.status <> 'CLOSED'
              AND (t.trade_id = $2 OR EXISTS (
                    SELECT 1
                    FROM trades mine,
                         jsonb_array_elements(mine.legs) AS my_leg,
                         jsonb_array_elements(t.legs) AS leg
                    WHERE mine.trade_id = $2 AND mine.status <> 'CLOSED'
                      AND leg->>'symbol' = my_leg->>'symbol'))
            ORDER BY t.trade_id
            """,
            account_id,
            trade_id,
        )
        return [
            OpenTrade(snapshot=_snapshot(row), exit_in_flight=bool(row["exit_in_flight"]))
            for row in rows
        ]

    async def get_trade(self, trade_id: int) -> StoredTrade | None:
        row = await self._db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
        return None if row is None else _stored(row)

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
        """Record a new OPEN trade holding ``spread`` (its quantity now and at open); returns
        it as stored. ``opened_at`` None: now."""
        expirations = [leg.symbol.expiration for leg in spread.legs]
        row = await self._db.fetchrow(
            """
            INSERT INTO trades (account, underlying, strategy, legs, expiration, quantity,
                                opening_quantity, entry_price, origin, managed, exit_plan,
                                opened_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, COALESCE($11, now()))
            RETURNING *
            """,
            account_id,
            spread.underlying,
            spread.strategy.value,
            legs_document(spread),
            min(expirations),
            spread.quantity,
            entry_price,
            origin.value,
            managed,
            dict(exit_plan or {}),
            opened_at,
        )
        assert row is not None  # INSERT ... RETURNING always returns the row
        return _snapshot(row)

    async def update_trade_quantity(self, trade_id: int, quantity: int) -> bool:
        """Set the spreads a not-CLOSED trade holds (0 < quantity <= opening quantity, else
        ``IntegrityError``). False when the trade is closed or unknown."""
        updated = await self._db.fetchval(
            """
            UPDATE trades SET quantity = $2
            WHERE trade_id = $1 AND status <> 'CLOSED'
            RETURNING trade_id
            """,
            trade_id,
            quantity,
        )
        return updated is not None

    async def close_phantom(self, trade_id: int, *, at: dt.datetime) -> bool:
        """Close an OPEN trade as PHANTOM with realized P&L NULL. False (nothing written) when
        the trade is not OPEN or one of its exit orders is not final."""
        closed = await self._db.fetchval(
            f"""
            UPDATE trades t
            SET status = 'CLOSED', quantity = 0, close_reason = 'PHANTOM',
                realized_pnl = NULL, closed_at = $2
            WHERE t.trade_id = $1 AND t.status = 'OPEN' AND NOT {_EXIT_WORKING}
            RETURNING t.trade_id
            """,
            trade_id,
            at,
        )
        return closed is not None

    async def save_watch_state(
        self,
        trade_id: int,
        high_water_mark: Decimal | None,
        fired_tiers: Sequence[int],
        entry_iv: Decimal | None,
    ) -> None:
        """Persist what a restarted watcher must not forget. ``high_water_mark`` is written as
        given (its time moves when its value does); ``fired_tiers`` are added to those stored
        (never removed); ``entry_iv`` None keeps the stored value."""
        await self._db.execute(
            """
            UPDATE trades SET
                high_water_at = CASE
                    WHEN $2::numeric IS NULL THEN NULL
                    WHEN high_water_mark IS DISTINCT FROM $2::numeric THEN now()
                    ELSE high_water_at END,
                high_water_mark = $2::numeric,
                fired_tiers = fired_tiers || COALESCE(
                    (SELECT jsonb_agg(jsonb_build_object('tier', tier, 'fired_at', now())
                                      ORDER BY tier)
                     FROM (SELECT DISTINCT unnest($3::int[]) AS tier) AS new_tiers
                     WHERE NOT fired_tiers @> jsonb_build_array(jsonb_build_object('tier', tier))
                       AND NOT fired_tiers @> jsonb_build_array(tier)),
                    '[]'::jsonb),
                entry_iv = COALESCE($4::numeric, entry_iv)
            WHERE trade_id = $1
            """,
            trade_id,
            high_water_mark,
            list(fired_tiers),
            entry_iv,
        )

    # -- the broker-position mirror ---------------------------------------------------------

    async def replace_positions(self, account_id: str, rows: Sequence[PositionRow]) -> None:
        """Make the account's mirror exactly ``rows``, in one transaction."""
        async with self._db.transaction() as conn:
            await _replace_positions(conn, account_id, rows)

    async def load_positions(self, account_id: str) -> list[PositionRow]:
        """The account's mirror, by symbol then side."""
        rows = await self._db.fetch(
            "SELECT * FROM portfolio_positions WHERE account = $1"
            ' ORDER BY symbol COLLATE "C", side COLLATE "C"',
            account_id,
        )
        return [_position(row) for row in rows]


async def _replace_positions(conn: Executor, account_id: str, rows: Sequence[PositionRow]) -> None:
    # Delete first, then upsert: either order is right inside the transaction, and this one
    # means a failing upsert has something to roll back (the storage tests rely on it).
    await conn.execute(
        _DELETE_ABSENT_POSITIONS,
        account_id,
        [row.symbol for row in rows],
        [row.side.value for row in rows],
    )
    if rows:
        await conn.executemany(
            _UPSERT_POSITION,
            [
                (
                    account_id,
                    row.symbol,
                    row.underlying,
                    row.expiration,
                    row.option_type,
                    row.strike,
                    row.side.value,
                    row.quantity,
                    row.cost_basis,
                    row.acquired_at,
                )
                for row in rows
            ],
        )
