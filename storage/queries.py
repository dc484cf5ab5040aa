"""Queries as plain functions over an ``Executor`` (a ``Database`` or a ``Connection`` in a
transaction). One function per statement the flows need; later issues add theirs here.

Values go in as Python values (``Decimal`` for money and prices, ``datetime`` with a time zone,
lists and dicts for jsonb) and rows come back as ``storage.Row``.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from typing import Any

from storage.database import Executor, Row

__all__ = [
    "get_order_by_client_order_id",
    "get_trade",
    "insert_exit_order",
    "insert_trade",
    "open_trades",
    "upsert_position",
]


async def insert_trade(
    db: Executor,
    *,
    account: str,
    underlying: str,
    strategy: str,
    legs: Sequence[Mapping[str, Any]],
    quantity: int,
    entry_price: decimal.Decimal,
    origin: str,
    managed: bool = True,
    exit_plan: Mapping[str, Any] | None = None,
    entry_iv: decimal.Decimal | None = None,
) -> int:
    """Record a new OPEN trade (quantity now = quantity at open); return its ``trade_id``."""
    trade_id: int = await db.fetchval(
        """
        INSERT INTO trades (account, underlying, strategy, legs, quantity, opening_quantity,
                            entry_price, origin, managed, exit_plan, entry_iv)
        VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10)
        RETURNING trade_id
        """,
        account,
        underlying,
        strategy,
        list(legs),
        quantity,
        entry_price,
        origin,
        managed,
        dict(exit_plan or {}),
        entry_iv,
    )
    return trade_id


async def get_trade(db: Executor, trade_id: int) -> Row | None:
    return await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)


async def open_trades(db: Executor, *, account: str) -> list[Row]:
    """The account's trades that are not CLOSED, oldest first."""
    return await db.fetch(
        "SELECT * FROM trades WHERE account = $1 AND status <> 'CLOSED' ORDER BY trade_id",
        account,
    )


async def insert_exit_order(
    db: Executor,
    *,
    client_order_id: str,
    account: str,
    trade_id: int,
    exit_action: str,
    quantity: int,
    legs: Sequence[Mapping[str, Any]],
    order_type: str,
    limit_price: decimal.Decimal | None,
    reason: str | None = None,
) -> int:
    """Record an exit order before it is sent (status NEW); return its ``order_id``.

    Raises ``storage.IntegrityError`` with ``constraint_name`` ``orders_client_order_id_key``
    for a client order id already used, and ``orders_one_working_exit_per_trade`` while another
    exit order of the same trade is not final.
    """
    order_id: int = await db.fetchval(
        """
        INSERT INTO orders (client_order_id, account, trade_id, purpose, exit_action, quantity,
                            legs, order_type, limit_price, reason)
        VALUES ($1, $2, $3, 'EXIT', $4, $5, $6, $7, $8, $9)
        RETURNING order_id
        """,
        client_order_id,
        account,
        trade_id,
        exit_action,
        quantity,
        list(legs),
        order_type,
        limit_price,
        reason,
    )
    return order_id


async def get_order_by_client_order_id(db: Executor, client_order_id: str) -> Row | None:
    return await db.fetchrow("SELECT * FROM orders WHERE client_order_id = $1", client_order_id)


async def upsert_position(
    db: Executor,
    *,
    account: str,
    symbol: str,
    underlying: str,
    expiration: Any,
    option_type: str | None,
    strike: decimal.Decimal | None,
    side: str,
    quantity: int,
    cost_basis: decimal.Decimal | None = None,
) -> int:
    """Mirror one broker leg: insert it, or update the row with the same leg key."""
    position_id: int = await db.fetchval(
        """
        INSERT INTO portfolio_positions (account, symbol, underlying, expiration, option_type,
                                         strike, side, quantity, cost_basis)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT ON CONSTRAINT portfolio_positions_leg_key DO UPDATE
            SET quantity = EXCLUDED.quantity,
                cost_basis = EXCLUDED.cost_basis,
                last_seen_at = now()
        RETURNING position_id
        """,
        account,
        symbol,
        underlying,
        expiration,
        option_type,
        strike,
        side,
        quantity,
        cost_basis,
    )
    return position_id
