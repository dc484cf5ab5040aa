"""Batched, idempotent inserts of audit records into ``decisions`` and ``events``.

Every audit record carries its own uuid (``DecisionRecord.decision_id``,
``EngineEventRecord.event_id``), made when the record is created, and that uuid is the table's
primary key. Every insert here is ``... ON CONFLICT (id) DO NOTHING``: writing a record that is
already in the table is a no-op. That is what makes the audit writer's replays safe: a batch
whose commit succeeded but whose answer was lost (connection dropped after COMMIT) is simply
written again, and the rows already there are skipped.

Two ways to write a batch, chosen per store (``method``):

- ``"copy"`` (the default, the fast path): COPY the rows in binary straight into the table,
  under a savepoint. COPY cannot skip conflicts, but a conflict only happens when a batch is
  written again (a replay after a lost answer or a crash), which is rare: so the first attempt
  assumes none. When the table's primary key refuses a row, the savepoint is rolled back and
  the batch goes the careful way: COPY into a session-local staging table (``ON COMMIT DELETE
  ROWS``, created once per connection), then one ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING`` into the real table. Any other refusal (a check, a foreign key) is raised as it is.
- ``"executemany"``: one pipelined ``INSERT ... ON CONFLICT DO NOTHING`` per row.

Why straight in first: the staged path writes every row twice (the staging table, then the
table) and sorts the batch by ``ctid``, which spills to disk past ``work_mem``; measured with
the engine's own records (3 KB of JSON each; ``bench/audit_load.py``) it cost about a third of
the server's time per batch. Both methods write the whole batch in the caller's transaction.

The ``inputs`` column of ``decisions`` holds the whole record as JSON (the same encoding as
:func:`engine.messages.encode`), so a decision can be replayed from the table alone; the other
columns are a summary for queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from engine.domain.pricing import dollars
from engine.messages import (
    AuditRecord,
    Decision,
    DecisionRecord,
    EngineEventRecord,
    ExitAction,
    QuoteSnapshot,
)
from storage.database import Connection, Database
from storage.errors import IntegrityError

__all__ = [
    "DECISION_COLUMNS",
    "EVENT_COLUMNS",
    "DatabaseAuditStore",
    "WriteMethod",
    "decision_kind",
    "decision_row",
    "event_row",
    "insert_decisions",
    "insert_events",
    "write_audit_batch",
]

WriteMethod = Literal["copy", "executemany"]

DECISION_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "trade_id",
    "decided_at",
    "kind",
    "rule",
    "rules_fired",
    "rule_version",
    "exit_action",
    "exit_quantity",
    "mark",
    "natural_price",
    "pnl",
    "profit_fraction",
    "loss_fraction",
    "underlying_price",
    "inputs",
    "dry_run",
)

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "occurred_at",
    "kind",
    "level",
    "actor",
    "trade_id",
    "client_order_id",
    "symbol",
    "message",
    "action_taken",
    "details",
)

_UNIQUE_VIOLATION = "23505"
_DECISIONS_STAGE = "audit_stage_decisions"
_EVENTS_STAGE = "audit_stage_events"


def _stage_ddl(stage: str, table: str, columns: Sequence[str]) -> str:
    # Temporary (one per session, invisible to others) and emptied by every commit, so a batch
    # never sees a previous batch's rows; created once per connection (IF NOT EXISTS is a catalog
    # lookup, not a new table). Only the copied columns: defaults (recorded_at) apply on insert.
    cols = ", ".join(columns)
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS "
        f"AS SELECT {cols} FROM {table} WITH NO DATA"
    )


def _insert_sql(table: str, columns: Sequence[str], key: str) -> str:
    cols = ", ".join(columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO NOTHING"


def _from_stage_sql(stage: str, table: str, columns: Sequence[str], key: str) -> str:
    cols = ", ".join(columns)
    # ORDER BY ctid: rows enter the table in the order they were copied (the batch's order).
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ORDER BY ctid "
        f"ON CONFLICT ({key}) DO NOTHING"
    )


_DECISIONS_INSERT = _insert_sql("decisions", DECISION_COLUMNS, "decision_id")
_EVENTS_INSERT = _insert_sql("events", EVENT_COLUMNS, "event_id")
_DECISIONS_FROM_STAGE = _from_stage_sql(
    _DECISIONS_STAGE, "decisions", DECISION_COLUMNS, "decision_id"
)
_EVENTS_FROM_STAGE = _from_stage_sql(_EVENTS_STAGE, "events", EVENT_COLUMNS, "event_id")


def decision_kind(record: DecisionRecord) -> str:
    """The ``decisions.kind`` of a record: EXIT, PARTIAL_EXIT, GUARDED or SNAPSHOT."""
    match record.decision:
        case Decision.EXIT:
            return "PARTIAL_EXIT" if record.exit_action is ExitAction.PARTIAL else "EXIT"
        case Decision.HELD_BY_GUARD:
            return "GUARDED"
        case Decision.HOLD:
            return "SNAPSHOT"
    raise ValueError(f"unknown decision {record.decision!r}")  # pragma: no cover


def _underlying_price(quote: QuoteSnapshot | None) -> Decimal | None:
    """The last trade if there is one, else the mid, else whichever side was quoted."""
    if quote is None:
        return None
    if quote.last is not None:
        return quote.last
    if quote.bid is not None and quote.ask is not None:
        return (quote.bid + quote.ask) / 2
    return quote.bid if quote.bid is not None else quote.ask


def decision_row(record: DecisionRecord) -> tuple[object, ...]:
    """The values of :data:`DECISION_COLUMNS` for one record."""
    kind = decision_kind(record)
    # The table allows an exit action only on exits; a guarded decision's would-be action stays
    # in ``inputs`` (the whole record) where a replay finds it.
    exit_action = (
        record.exit_action.value
        if record.exit_action is not None and kind in ("EXIT", "PARTIAL_EXIT")
        else None
    )
    pnl = dollars(record.pnl, record.quantity) if record.pnl is not None else None
    return (
        record.decision_id,
        record.trade_id,
        record.at,
        kind,
        record.rule,
        list(record.rules_fired),
        record.rule_version,
        exit_action,
        record.exit_quantity,
        record.mark_close_price,
        record.natural_close_price,
        pnl,
        record.profit_fraction,
        record.loss_fraction,
        _underlying_price(record.underlying),
        record,  # jsonb: msgspec encodes the Struct as engine.messages.encode does
        record.dry_run,
    )


def event_row(record: EngineEventRecord) -> tuple[object, ...]:
    """The values of :data:`EVENT_COLUMNS` for one record."""
    return (
        record.event_id,
        record.at,
        record.kind,
        record.level,
        record.actor,
        record.trade_id,
        record.client_order_id,
        record.symbol,
        record.message,
        record.action_taken,
        record.detail,
    )


async def _write_rows(
    conn: Connection,
    rows: list[tuple[object, ...]],
    *,
    method: WriteMethod,
    table: str,
    stage: str,
    columns: Sequence[str],
    insert_sql: str,
    from_stage_sql: str,
) -> int:
    if not rows:
        return 0
    if method == "executemany":
        # executemany reports nothing back: count the ids already present (an index lookup) to
        # say how many rows are new. One writer per table makes the count exact.
        key = columns[0]
        present: int = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE {key} = ANY($1::uuid[])",
            [row[0] for row in rows],
        )
        await conn.executemany(insert_sql, rows)
        return len(rows) - present
    try:
        # A savepoint: a duplicate undoes this attempt only, not the caller's transaction.
        async with conn.transaction():
            await conn.copy_records_to_table(table, records=rows, columns=list(columns))
        return len(rows)
    except IntegrityError as exc:
        if exc.sqlstate != _UNIQUE_VIOLATION or exc.constraint_name != f"{table}_pkey":
            raise
    await conn.execute(_stage_ddl(stage, table, columns))
    await conn.copy_records_to_table(stage, records=rows, columns=list(columns))
    status = await conn.execute(from_stage_sql)
    # In case the caller's transaction goes on: the stage must not hold this batch any more.
    await conn.execute(f"TRUNCATE {stage}")
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"


async def insert_decisions(
    conn: Connection, records: Sequence[DecisionRecord], *, method: WriteMethod = "copy"
) -> int:
    """Insert decision records, skipping ids already present; return how many were new.

    Run it inside a transaction (the staging table is emptied at commit)."""
    return await _write_rows(
        conn,
        [decision_row(r) for r in records],
        method=method,
        table="decisions",
        stage=_DECISIONS_STAGE,
        columns=DECISION_COLUMNS,
        insert_sql=_DECISIONS_INSERT,
        from_stage_sql=_DECISIONS_FROM_STAGE,
    )


async def insert_events(
    conn: Connection, records: Sequence[EngineEventRecord], *, method: WriteMethod = "copy"
) -> int:
    """Insert engine event records, skipping ids already present; return how many were new."""
    return await _write_rows(
        conn,
        [event_row(r) for r in records],
        method=method,
        table="events",
        stage=_EVENTS_STAGE,
        columns=EVENT_COLUMNS,
        insert_sql=_EVENTS_INSERT,
        from_stage_sql=_EVENTS_FROM_STAGE,
    )


async def write_audit_batch(
    db: Database, records: Sequence[AuditRecord], *, method: WriteMethod = "copy"
) -> int:
    """Write a batch of audit records in ONE transaction; return how many rows were new.

    All or nothing: a failure (the connection lost, a constraint refusing one record) rolls the
    whole batch back. Records already in the tables are skipped, so retrying is always safe."""
    decisions = [r for r in records if isinstance(r, DecisionRecord)]
    events = [r for r in records if isinstance(r, EngineEventRecord)]
    async with db.transaction() as conn:
        inserted = await insert_decisions(conn, decisions, method=method)
        inserted += await insert_events(conn, events, method=method)
    return inserted


class DatabaseAuditStore:
    """The audit writer's store on PostgreSQL (``actors.audit_writer.AuditStore``)."""

    def __init__(self, db: Database, *, method: WriteMethod = "copy") -> None:
        self._db = db
        self.method: WriteMethod = method

    async def write(self, records: Sequence[AuditRecord]) -> int:
        return await write_audit_batch(self._db, records, method=self.method)
