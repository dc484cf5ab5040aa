"""Exit orders, their fills and the trade accounting they drive: :class:`PgOrderStore`.

The OrderRouter's store. Every write that decides what happens next is synchronous and
transactional (DESIGN section 4):

- an order is recorded (status NEW) **before** it is sent, in the same transaction that moves its
  trade to CLOSING; the partial unique index ``orders_one_working_exit_per_trade`` refuses a
  second working exit of the same trade whatever a bug upstream attempts;
- it is marked SUBMITTED (attempts + 1) before the request leaves, so after a crash NEW means
  "never sent" and SUBMITTED means "maybe sent: find it by its tag";
- a broker read is applied in ONE transaction (:meth:`PgOrderStore.apply_read`): the order's
  status and fill, its new fill rows, and the trade's quantity, status, realized P&L and close
  reason, all computed by :mod:`engine.domain.accounting` from rows locked ``FOR UPDATE`` (the
  order, then its trade: the same order everywhere, so two appliers never deadlock).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from engine.brokers import BrokerOrder, BrokerOrderStatus
from engine.domain import accounting
from engine.domain.accounting import ExitFilled, LegFill, OrderProgress
from engine.domain.orders import ExitOrder
from engine.domain.spread import Leg
from engine.domain.strategy import Strategy
from engine.messages import ExitAction, OrderLegSide, OrderType
from storage.database import Database, Executor, Row
from storage.errors import IntegrityError
from storage.trades import FINAL_STATUSES_SQL, legs_at_quantity

__all__ = ["AppliedRead", "PgOrderStore", "StoredOrder"]


class StoredOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One ``orders`` row as the router needs it."""

    order_id: int
    client_order_id: str
    broker_order_id: str | None
    trade_id: int
    exit_action: ExitAction
    reason: str | None
    quantity: int
    order_type: OrderType
    limit_price: Decimal | None
    status: str
    filled_quantity: int
    avg_fill_price: Decimal | None
    attempts: int
    legs: tuple[dict[str, Any], ...]

    @property
    def is_final(self) -> bool:
        return self.status in accounting.FINAL_STATUS_NAMES


class AppliedRead(msgspec.Struct, frozen=True, kw_only=True):
    """What applying one broker read changed. ``fills`` are the new fill rows (empty when the
    read showed nothing new); the trade fields are as stored after the transaction."""

    order: StoredOrder
    progress: OrderProgress
    fills: tuple[LegFill, ...]
    trade_quantity_before: int
    trade_quantity: int
    trade_status: str
    realized_pnl: Decimal | None
    close_reason: str | None
    trade_legs: tuple[Leg, ...]  # the trade's legs at ``trade_quantity`` (none when 0)


def _stored(row: Row) -> StoredOrder:
    return StoredOrder(
        order_id=int(row["order_id"]),
        client_order_id=row["client_order_id"],
        broker_order_id=row["broker_order_id"],
        trade_id=int(row["trade_id"]),
        exit_action=ExitAction(row["exit_action"]),
        reason=row["reason"],
        quantity=int(row["quantity"]),
        order_type=OrderType(row["order_type"]),
        limit_price=row["limit_price"],
        status=row["status"],
        filled_quantity=int(row["filled_quantity"]),
        avg_fill_price=row["avg_fill_price"],
        attempts=int(row["attempts"]),
        legs=tuple(row["legs"]),
    )


class PgOrderStore:
    """Exit orders in PostgreSQL (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_exit_order(
        self,
        *,
        client_order_id: str,
        account_id: str,
        trade_id: int,
        order: ExitOrder,
        action: ExitAction,
        rule: str,
        decision_id: Any = None,
    ) -> StoredOrder | None:
        """Record ``order`` (status NEW) and move the trade to CLOSING, in one transaction.
        None when the trade is not OPEN, or another exit order of it is working (nothing is
        written then)."""
        legs = [
            {"symbol": leg.option_symbol, "side": leg.side.value, "quantity": leg.quantity}
            for leg in order.legs
        ]
        try:
            async with self._db.transaction() as conn:
                moved = await conn.fetchval(
                    """
                    UPDATE trades SET status = 'CLOSING'
                    WHERE trade_id = $1 AND status = 'OPEN' AND account = $2
                    RETURNING trade_id
                    """,
                    trade_id,
                    account_id,
                )
                if moved is None:
                    return None
                row = await conn.fetchrow(
                    """
                    INSERT INTO orders (client_order_id, account, trade_id, purpose, exit_action,
                                        reason, decision_id, quantity, legs, order_type,
                                        limit_price)
                    VALUES ($1, $2, $3, 'EXIT', $4, $5, $6, $7, $8, $9, $10)
                    RETURNING *
                    """,
                    client_order_id,
                    account_id,
                    trade_id,
                    action.value,
                    rule,
                    decision_id,
                    order.quantity,
                    legs,
                    order.order_type.value,
                    order.limit_price,
                )
        except IntegrityError as exc:
            if exc.constraint_name in (
                "orders_one_working_exit_per_trade",
                "orders_client_order_id_key",
            ):
                return None
            raise
        assert row is not None
        return _stored(row)

    async def mark_submitted(self, order_id: int) -> None:
        """About to send: SUBMITTED, one more attempt. From here on the order may be at the
        broker, and only a read by its tag can say it is not."""
        await self._db.execute(
            """
            UPDATE orders SET status = 'SUBMITTED', attempts = attempts + 1,
                              submitted_at = COALESCE(submitted_at, now())
            WHERE order_id = $1 AND status = 'NEW'
            """,
            order_id,
        )

    async def mark_accepted(self, order_id: int, broker_order_id: str) -> None:
        """The broker gave the order its id; it works (until a read says more)."""
        await self._db.execute(
            """
            UPDATE orders SET broker_order_id = $2,
                status = CASE WHEN status IN ('NEW', 'SUBMITTED') THEN 'PENDING' ELSE status END
            WHERE order_id = $1
            """,
            order_id,
            broker_order_id,
        )

    async def record_reprice(self, order_id: int, limit_price: Decimal) -> None:
        await self._db.execute(
            "UPDATE orders SET limit_price = $2, attempts = attempts + 1 WHERE order_id = $1",
            order_id,
            limit_price,
        )

    async def mark_cancel_requested(self, order_id: int) -> None:
        await self._db.execute(
            """
            UPDATE orders SET status = 'CANCEL_REQUESTED'
            WHERE order_id = $1 AND status IN ('PENDING', 'OPEN', 'PARTIALLY_FILLED')
            """,
            order_id,
        )

    async def end_unsent(self, order_id: int, *, status: str, reason: str) -> AppliedRead:
        """End an order the broker never took (refused outright, or never sent, or not found by
        its tag): final ``status`` (REJECTED or CANCELLED), nothing filled, trade back to OPEN."""
        read = BrokerOrder(
            broker_order_id="",
            client_order_id=None,
            status=BrokerOrderStatus(status),
            multileg=False,
            order_type=None,
            underlying=None,
            quantity=1,
            filled_quantity=0,
            remaining_quantity=1,
            avg_fill_price=None,
            limit_price=None,
            legs=(),
            reason=reason,
        )
        return await self.apply_read(order_id, read)

    async def apply_read(self, order_id: int, read: BrokerOrder) -> AppliedRead:
        """Apply one broker read of the order (see the module docstring)."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM orders WHERE order_id = $1 FOR UPDATE", order_id
            )
            if row is None:
                raise LookupError(f"no order {order_id}")
            order = _stored(row)
            trade = await conn.fetchrow(
                "SELECT * FROM trades WHERE trade_id = $1 FOR UPDATE", order.trade_id
            )
            assert trade is not None  # orders.trade_id is a foreign key
            step = accounting.progress(
                order.status, order.filled_quantity, order.avg_fill_price, read
            )
            fills = accounting.new_leg_fills(read, await _recorded_legs(conn, order_id))
            await _write_order(conn, order, step, read, fills)
            return await _account_trade(conn, order, step, fills, trade)

    async def unfinished_orders(self, account_id: str) -> list[StoredOrder]:
        """The account's exit orders that are not final, oldest first."""
        rows = await self._db.fetch(
            f"""
            SELECT * FROM orders WHERE account = $1 AND purpose = 'EXIT'
              AND status NOT IN ({FINAL_STATUSES_SQL}) ORDER BY order_id
            """,
            account_id,
        )
        return [_stored(row) for row in rows]



async def _recorded_legs(conn: Executor, order_id: int) -> dict[str, tuple[int, Decimal]]:
    rows = await conn.fetch(
        """
        SELECT leg_symbol, sum(quantity) AS contracts, sum(quantity * price) AS value
        FROM fills WHERE order_id = $1 GROUP BY leg_symbol
        """,
        order_id,
    )
    return {row["leg_symbol"]: (int(row["contracts"]), row["value"]) for row in rows}


async def _write_order(
    conn: Executor,
    order: StoredOrder,
    step: OrderProgress,
    read: BrokerOrder,
    fills: Sequence[LegFill],
) -> None:
    await conn.execute(
        """
        UPDATE orders SET status = $2, filled_quantity = $3, avg_fill_price = $4,
            status_reason = COALESCE($5, status_reason),
            broker_order_id = COALESCE(broker_order_id, NULLIF($6, '')),
            finalized_at = CASE WHEN $7 THEN COALESCE(finalized_at, now()) ELSE NULL END
        WHERE order_id = $1
        """,
        order.order_id,
        step.status,
        step.filled_quantity,
        step.avg_fill_price,
        step.reason if step.is_final else None,
        read.broker_order_id,
        step.is_final,
    )
    filled_at = read.updated_at or dt.datetime.now(dt.UTC)
    for fill in fills:
        await conn.execute(
            """
            INSERT INTO fills (order_id, fill_key, leg_symbol, leg_side, quantity, price,
                               filled_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT ON CONSTRAINT fills_fill_key DO NOTHING
            """,
            order.order_id,
            fill.fill_key,
            fill.symbol,
            fill.side.value,
            fill.quantity,
            fill.price,
            filled_at,
        )


async def _account_trade(
    conn: Executor,
    order: StoredOrder,
    step: OrderProgress,
    fills: Sequence[LegFill],
    trade: Row,
) -> AppliedRead:
    exits = await conn.fetch(
        """
        SELECT order_type, filled_quantity, avg_fill_price, legs FROM orders
        WHERE trade_id = $1 AND purpose = 'EXIT' AND filled_quantity > 0
        """,
        order.trade_id,
    )
    closed = sum(int(row["filled_quantity"]) for row in exits)
    before = int(trade["quantity"])
    quantity = accounting.remaining_quantity(before, int(trade["opening_quantity"]), closed)
    pnl = accounting.realized_pnl(
        Strategy(trade["strategy"]),
        trade["entry_price"],
        [_exit_filled(row) for row in exits],
    )
    status = trade["status"]
    close_reason = trade["close_reason"]
    if status != "CLOSED":
        if quantity == 0:
            status = "CLOSED"
            close_reason = accounting.close_reason_for_rule(order.reason).value
        elif step.is_final:
            status = "OPEN"  # the exit ended with spreads still held: the watcher may retry
        await conn.execute(
            """
            UPDATE trades SET quantity = $2, status = $3, realized_pnl = $4, close_reason = $5,
                closed_at = CASE WHEN $3 = 'CLOSED' THEN COALESCE(closed_at, now()) END
            WHERE trade_id = $1
            """,
            order.trade_id,
            quantity,
            status,
            pnl,
            close_reason if status == "CLOSED" else None,
        )
    row = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1", order.order_id)
    assert row is not None
    return AppliedRead(
        order=_stored(row),
        progress=step,
        fills=tuple(fills),
        trade_quantity_before=before,
        trade_quantity=quantity if trade["status"] != "CLOSED" else before,
        trade_status=status,
        realized_pnl=pnl,
        close_reason=close_reason,
        trade_legs=legs_at_quantity(trade["legs"], quantity) if quantity else (),
    )


def _exit_filled(row: Row) -> ExitFilled:
    legs = row["legs"]
    side = OrderLegSide(legs[0]["side"]) if len(legs) == 1 else None
    return ExitFilled(
        order_type=OrderType(row["order_type"]),
        filled=int(row["filled_quantity"]),
        avg_fill_price=row["avg_fill_price"],
        single_leg_side=side,
    )
