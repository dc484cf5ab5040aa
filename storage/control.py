"""The operator's safety switches in PostgreSQL: the halt switch and close requests.

Tables in ``migrations/0002_control.sql``. The CLI (``spreadwatch halt``, ``resume``,
``close``) writes through this module; the engine's control listener
(``actors/control_listener.py``) reads through it.

Rules the writes keep:

- A write and its ``NOTIFY`` on :data:`CONTROL_CHANNEL` (payload: the account) are one
  transaction: PostgreSQL delivers the notification at commit, so a listener woken by it always
  reads the new state. The notification is only a hint; the row is the state.
- A switch that changes nothing (halting a halted account, resuming one that is not halted,
  asking again to close a trade whose close is still pending) writes nothing and notifies no one.
- Each change also writes an ``events`` row (``control.halted``, ``control.resumed``,
  ``control.close_requested``) in the same transaction: who did what, when and why.
- A close request is refused (:class:`CloseRefused`) for a trade that does not exist, belongs to
  another account, is CLOSED, or is not managed by the engine (which never trades those).
- ``take_close_requests`` marks requests consumed and returns them in one statement, skipping
  rows another taker holds: each request is served once. Run it inside a transaction that also
  hands the requests on, and a crash before the hand-off leaves them pending.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from engine.errors import SpreadwatchError
from storage.database import Database, Executor, Row

__all__ = [
    "CONTROL_CHANNEL",
    "CloseRefused",
    "CloseRequest",
    "HaltState",
    "get_halted",
    "request_close",
    "set_halted",
    "take_close_requests",
]

#: The LISTEN/NOTIFY channel of every control change; the payload is the account.
CONTROL_CHANNEL = "spreadwatch_control"


class CloseRefused(SpreadwatchError):
    """A close request for a trade the engine cannot close. The message says why, in one line."""


class HaltState(msgspec.Struct, frozen=True, kw_only=True):
    """An account's halt switch. An account never halted has ``halted`` False and no
    ``reason``, ``changed_at`` or ``changed_by``."""

    account_id: str
    halted: bool
    reason: str | None = None
    changed_at: dt.datetime | None = None
    changed_by: str | None = None


class CloseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's request to close one trade now. ``consumed_at`` is None until a listener
    took it."""

    request_id: int
    account_id: str
    trade_id: int
    reason: str
    requested_by: str
    requested_at: dt.datetime
    consumed_at: dt.datetime | None


def _halt_state(row: Row) -> HaltState:
    return HaltState(
        account_id=row["account"],
        halted=bool(row["halted"]),
        reason=row["reason"],
        changed_at=row["changed_at"],
        changed_by=row["changed_by"],
    )


def _close_request(row: Row) -> CloseRequest:
    return CloseRequest(
        request_id=int(row["request_id"]),
        account_id=row["account"],
        trade_id=int(row["trade_id"]),
        reason=row["reason"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        consumed_at=row["consumed_at"],
    )


_EVENT = """
    INSERT INTO events (occurred_at, kind, level, actor, trade_id, message, details)
    VALUES (now(), $1, $2, 'operator', $3, $4, $5)
"""


async def get_halted(db: Executor, account_id: str) -> HaltState:
    """The account's halt switch (not halted when it was never thrown)."""
    row = await db.fetchrow("SELECT * FROM engine_control WHERE account = $1", account_id)
    return HaltState(account_id=account_id, halted=False) if row is None else _halt_state(row)


async def set_halted(
    db: Database, account_id: str, halted: bool, reason: str, *, changed_by: str
) -> tuple[HaltState, bool]:
    """Halt (``halted`` True) or resume the account; return its state and whether it changed.

    Concurrent calls are safe: the conditional upsert makes the second of two halts a no-op.
    """
    async with db.transaction() as conn:
        if halted:
            row = await conn.fetchrow(
                """
                INSERT INTO engine_control (account, halted, reason, changed_by)
                VALUES ($1, true, $2, $3)
                ON CONFLICT (account) DO UPDATE
                    SET halted = true, reason = EXCLUDED.reason, changed_at = now(),
                        changed_by = EXCLUDED.changed_by
                    WHERE NOT engine_control.halted
                RETURNING *
                """,
                account_id,
                reason,
                changed_by,
            )
        else:
            # No row means never halted: nothing to resume, and no row to create.
            row = await conn.fetchrow(
                """
                UPDATE engine_control
                SET halted = false, reason = $2, changed_at = now(), changed_by = $3
                WHERE account = $1 AND halted
                RETURNING *
                """,
                account_id,
                reason,
                changed_by,
            )
        if row is None:
            return await get_halted(conn, account_id), False
        await conn.execute(
            _EVENT,
            "control.halted" if halted else "control.resumed",
            "WARNING" if halted else "INFO",
            None,
            reason,
            {"account": account_id, "changed_by": changed_by},
        )
        await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, account_id)
        return _halt_state(row), True


async def request_close(
    db: Database, account_id: str, trade_id: int, reason: str, *, requested_by: str
) -> tuple[CloseRequest, bool]:
    """Ask the engine to close ``trade_id`` now; return the request and whether it is new.

    A close already pending for the trade is returned as it is (False). Raises
    :class:`CloseRefused` for a trade the engine cannot close (see the module docstring).
    """
    async with db.transaction() as conn:
        trade = await conn.fetchrow(
            "SELECT account, status, managed, close_reason FROM trades WHERE trade_id = $1",
            trade_id,
        )
        _refuse_unclosable(trade, account_id, trade_id)
        row = await conn.fetchrow(
            """
            INSERT INTO control_requests (account, kind, trade_id, reason, requested_by)
            VALUES ($1, 'CLOSE_TRADE', $2, $3, $4)
            ON CONFLICT (trade_id) WHERE kind = 'CLOSE_TRADE' AND consumed_at IS NULL
                DO NOTHING
            RETURNING *
            """,
            account_id,
            trade_id,
            reason,
            requested_by,
        )
        if row is None:
            pending = await conn.fetchrow(
                """
                SELECT * FROM control_requests
                WHERE trade_id = $1 AND kind = 'CLOSE_TRADE' AND consumed_at IS NULL
                """,
                trade_id,
            )
            assert pending is not None  # the conflict that stopped our insert
            return _close_request(pending), False
        await conn.execute(
            _EVENT,
            "control.close_requested",
            "INFO",
            trade_id,
            reason,
            {"account": account_id, "requested_by": requested_by},
        )
        await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, account_id)
        return _close_request(row), True


def _refuse_unclosable(trade: Row | None, account_id: str, trade_id: int) -> None:
    if trade is None:
        raise CloseRefused(f"no trade {trade_id}: nothing to close")
    if trade["account"] != account_id:
        raise CloseRefused(
            f"trade {trade_id} belongs to account {trade['account']}, not {account_id}"
        )
    if trade["status"] == "CLOSED":
        raise CloseRefused(
            f"trade {trade_id} is already CLOSED ({trade['close_reason']}): nothing to close"
        )
    if not trade["managed"]:
        raise CloseRefused(
            f"trade {trade_id} is not managed by spreadwatch, which never trades it: "
            "close it at the broker"
        )


async def take_close_requests(db: Executor, account_id: str) -> list[CloseRequest]:
    """Mark the account's pending close requests consumed and return them, oldest first.

    One statement: a request is returned to exactly one caller; rows another caller's
    transaction holds are skipped, not waited for.
    """
    rows = await db.fetch(
        """
        UPDATE control_requests SET consumed_at = now()
        WHERE request_id IN (
            SELECT request_id FROM control_requests
            WHERE account = $1 AND kind = 'CLOSE_TRADE' AND consumed_at IS NULL
            ORDER BY request_id
            FOR UPDATE SKIP LOCKED)
        RETURNING *
        """,
        account_id,
    )
    return sorted((_close_request(row) for row in rows), key=lambda r: r.request_id)
