"""What ``spreadwatch status`` shows, read from PostgreSQL in one query: every trade that is not
CLOSED, with its latest priced decision and its order in flight.

- **Latest decision**: the newest ``decisions`` row of the trade that carries a mark (a hold with
  a leg never quoted has none; an older row with a mark says more, and its time says how old it
  is). Its ``pnl`` here is *per spread* (the record's own figure, from ``inputs``), so the caller
  can price it at the trade's quantity now, which a partial exit since may have changed.
  ``quote_age_ms`` is the stalest leg quote's age when that decision was made; None when a leg's
  age was not recorded.
- **Order in flight**: the trade's newest order that is not final, an EXIT before an ENTRY (the
  database allows at most one working EXIT per trade).
- ``taken_at`` is the database's clock when it was read: order ages are measured against it,
  because order timestamps are written by the same clock. Decision times are market time (the
  simulator's clock in a simulation), so they are shown as times, not ages.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec

from engine.domain.spread import Leg
from engine.domain.strategy import Strategy
from engine.messages import TradeOrigin
from storage.database import Executor, Row
from storage.trades import FINAL_STATUSES_SQL, legs_at_quantity

__all__ = ["LatestDecision", "StatusSnapshot", "TradeStatus", "WorkingOrder", "read_status"]


class LatestDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The trade's newest decision with a mark. ``kind`` is SNAPSHOT, GUARDED, EXIT or
    PARTIAL_EXIT; ``mark`` is the closing price per spread at the mids; ``pnl`` per spread."""

    decided_at: dt.datetime
    kind: str
    rule: str | None
    mark: Decimal
    pnl: Decimal | None
    profit_fraction: Decimal | None
    loss_fraction: Decimal | None
    underlying_price: Decimal | None
    quote_age_ms: int | None


class WorkingOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order of the trade that is not final (NEW, SUBMITTED, PENDING, OPEN,
    PARTIALLY_FILLED or CANCEL_REQUESTED)."""

    client_order_id: str
    purpose: str
    exit_action: str | None
    order_type: str
    limit_price: Decimal | None
    status: str
    quantity: int
    filled_quantity: int
    attempts: int
    created_at: dt.datetime


class TradeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One OPEN or CLOSING trade. ``legs`` are at the trade's quantity now; ``exit_plan`` its
    per-trade overrides as stored."""

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
    exit_plan: dict[str, Any]
    opened_at: dt.datetime
    decision: LatestDecision | None
    order: WorkingOrder | None


class StatusSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Trades by account, then trade id; ``taken_at`` is the database's clock at the read."""

    taken_at: dt.datetime
    trades: tuple[TradeStatus, ...]


_STATUS = f"""
    SELECT now() AS taken_at, t.*,
           d.decided_at, d.kind, d.rule, d.mark, d.decision_pnl, d.profit_fraction,
           d.loss_fraction, d.underlying_price, d.quote_age_ms,
           o.client_order_id, o.purpose, o.exit_action, o.order_type, o.limit_price,
           o.status AS order_status, o.quantity AS order_quantity, o.filled_quantity,
           o.attempts, o.created_at AS order_created_at
    FROM trades t
    LEFT JOIN LATERAL (
        SELECT dd.decided_at, dd.kind, dd.rule, dd.mark, (dd.inputs ->> 'pnl')::numeric
                   AS decision_pnl,
               dd.profit_fraction, dd.loss_fraction, dd.underlying_price,
               -- The stalest leg, or NULL if any leg's age is missing (never quoted).
               (SELECT CASE WHEN count(*) = count(leg ->> 'age_ms')
                            THEN max((leg ->> 'age_ms')::bigint) END
                FROM jsonb_array_elements(dd.inputs -> 'legs') AS leg) AS quote_age_ms
        FROM decisions dd
        WHERE dd.trade_id = t.trade_id AND dd.mark IS NOT NULL
        ORDER BY dd.decided_at DESC, dd.recorded_at DESC
        LIMIT 1
    ) d ON true
    LEFT JOIN LATERAL (
        SELECT oo.*
        FROM orders oo
        WHERE oo.trade_id = t.trade_id AND oo.status NOT IN ({FINAL_STATUSES_SQL})
        ORDER BY oo.purpose = 'EXIT' DESC, oo.created_at DESC
        LIMIT 1
    ) o ON true
    WHERE t.status <> 'CLOSED' AND ($1::text IS NULL OR t.account = $1)
    ORDER BY t.account, t.trade_id
"""


async def read_status(db: Executor, *, account_id: str | None = None) -> StatusSnapshot:
    """The open (OPEN or CLOSING) trades of ``account_id``, or of every account when None."""
    rows = await db.fetch(_STATUS, account_id)
    taken_at = rows[0]["taken_at"] if rows else await db.fetchval("SELECT now()")
    return StatusSnapshot(taken_at=taken_at, trades=tuple(_trade_status(row) for row in rows))


def _trade_status(row: Row) -> TradeStatus:
    quantity = int(row["quantity"])
    return TradeStatus(
        trade_id=int(row["trade_id"]),
        account_id=row["account"],
        underlying=row["underlying"],
        strategy=Strategy(row["strategy"]),
        legs=legs_at_quantity(row["legs"], quantity),
        status=row["status"],
        quantity=quantity,
        opening_quantity=int(row["opening_quantity"]),
        entry_price=row["entry_price"],
        origin=TradeOrigin(row["origin"]),
        managed=bool(row["managed"]),
        exit_plan=dict(row["exit_plan"]),
        opened_at=row["opened_at"],
        decision=_decision(row),
        order=_order(row),
    )


def _decision(row: Row) -> LatestDecision | None:
    if row["decided_at"] is None:
        return None
    age = row["quote_age_ms"]
    return LatestDecision(
        decided_at=row["decided_at"],
        kind=row["kind"],
        rule=row["rule"],
        mark=row["mark"],
        pnl=row["decision_pnl"],
        profit_fraction=row["profit_fraction"],
        loss_fraction=row["loss_fraction"],
        underlying_price=row["underlying_price"],
        quote_age_ms=None if age is None else int(age),
    )


def _order(row: Row) -> WorkingOrder | None:
    if row["client_order_id"] is None:
        return None
    return WorkingOrder(
        client_order_id=row["client_order_id"],
        purpose=row["purpose"],
        exit_action=row["exit_action"],
        order_type=row["order_type"],
        limit_price=row["limit_price"],
        status=row["order_status"],
        quantity=int(row["order_quantity"]),
        filled_quantity=int(row["filled_quantity"]),
        attempts=int(row["attempts"]),
        created_at=row["order_created_at"],
    )
