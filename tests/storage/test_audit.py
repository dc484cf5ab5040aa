"""Audit records into the real database: batched idempotent inserts, and the AuditWriter
surviving its connections being killed mid-stream. Real clock (DESIGN section 4)."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial

import pytest
import trio

from actors import audit_writer
from actors.audit_writer import AuditSink, AuditWriterConfig
from engine import messages as m
from engine.supervisor import Backoff
from storage import Database, IntegrityError, apply_migrations, open_database, queries
from storage.audit import DatabaseAuditStore, WriteMethod, write_audit_batch

pytestmark = pytest.mark.storage

AT = dt.datetime(2025, 6, 20, 15, 0, tzinfo=dt.UTC)


@pytest.fixture
async def trade_id(db: Database) -> int:
    await apply_migrations(db)
    return await queries.insert_trade(
        db,
        account="VA000001",
        underlying="SPY",
        strategy="bull_put_credit",
        legs=[{"symbol": "SPY250620P00495000", "quantity": 1}],
        quantity=2,
        entry_price=Decimal("1.55"),
        origin="MANUAL",
    )


def decision(trade_id: int, n: int = 0, **overrides: object) -> m.DecisionRecord:
    fields: dict[str, object] = {
        "trade_id": trade_id,
        "decision": m.Decision.EXIT,
        "rule": "stop_loss",
        "rules_fired": ("stop_loss", "dte"),
        "legs": (
            m.QuoteSnapshot(
                symbol="SPY250620P00500000", bid=Decimal("3.10"), ask=Decimal("3.30"), age_ms=12
            ),
        ),
        "underlying": m.QuoteSnapshot(symbol="SPY", bid=Decimal("499.98"), ask=Decimal("500.02")),
        "mark_close_price": Decimal("3.20"),
        "natural_close_price": Decimal("3.30"),
        "pnl": Decimal("-1.65"),
        "profit_fraction": None,
        "loss_fraction": Decimal("1.0645"),
        "quantity": 2,
        "exit_action": m.ExitAction.PARTIAL,
        "exit_quantity": 1,
        "thresholds": {"stop_loss_fraction": Decimal("1.0"), "n": n},
        "rule_version": "exit-plan/1",
        "dry_run": True,
        "at": AT,
    }
    fields.update(overrides)
    return m.DecisionRecord(**fields)  # type: ignore[arg-type]


def event(trade_id: int | None, n: int = 0) -> m.EngineEventRecord:
    return m.EngineEventRecord(
        kind="quote_stream.reconnected",
        actor="quote_stream",
        level="WARNING",
        trade_id=trade_id,
        message="socket dropped",
        detail={"attempt": n, "delay": Decimal("0.25")},
        at=AT,
    )


async def stored_ids(db: Database) -> list[uuid.UUID]:
    rows = await db.fetch(
        "SELECT decision_id AS id FROM decisions UNION ALL SELECT event_id FROM events"
    )
    return [row["id"] for row in rows]


@pytest.mark.parametrize("method", ["copy", "executemany"])
async def test_batch_is_written_once_whatever_the_retries(
    db: Database, trade_id: int, method: WriteMethod
) -> None:
    batch: list[m.AuditRecord] = [decision(trade_id, 1), event(trade_id, 2), event(None, 3)]
    assert await write_audit_batch(db, batch, method=method) == 3
    # The same records again (a replay), with a new one: only the new one is stored.
    assert await write_audit_batch(db, [*batch, event(None, 4)], method=method) == 1
    assert await db.fetchval("SELECT count(*) FROM decisions") == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 3

    row = await db.fetchrow("SELECT * FROM decisions")
    assert row is not None
    record = batch[0]
    assert isinstance(record, m.DecisionRecord)
    assert row["decision_id"] == record.decision_id
    assert row["kind"] == "PARTIAL_EXIT"
    assert row["exit_action"] == "PARTIAL"
    assert row["rules_fired"] == ["stop_loss", "dte"]
    assert row["mark"] == Decimal("3.20")
    assert row["pnl"] == Decimal("-330.00")  # dollars for the 2 spreads held
    assert row["underlying_price"] == Decimal("500.00")
    assert row["decided_at"] == AT
    # The whole record is kept, so the decision can be replayed from the table alone.
    assert m.decode(m.encode(row["inputs"]), m.DecisionRecord) == record

    event_row = await db.fetchrow("SELECT * FROM events WHERE trade_id = $1", trade_id)
    assert event_row is not None
    assert event_row["kind"] == "quote_stream.reconnected"
    assert event_row["level"] == "WARNING"
    assert event_row["details"] == {"attempt": 2, "delay": Decimal("0.25")}


async def test_kinds_follow_the_decision(db: Database, trade_id: int) -> None:
    batch = [
        decision(trade_id, exit_action=m.ExitAction.FULL),
        decision(trade_id, decision=m.Decision.HELD_BY_GUARD, guard="crossed_quote"),
        decision(
            trade_id,
            decision=m.Decision.HOLD,
            rule=None,
            rules_fired=(),
            exit_action=None,
            exit_quantity=None,
        ),
    ]
    await write_audit_batch(db, batch)
    rows = await db.fetch("SELECT kind, exit_action FROM decisions ORDER BY recorded_at, kind")
    assert sorted((r["kind"], r["exit_action"]) for r in rows) == [
        ("EXIT", "FULL"),
        ("GUARDED", None),  # the would-be action stays in inputs, not in the column
        ("SNAPSHOT", None),
    ]


async def test_a_refused_record_fails_the_whole_batch(db: Database, trade_id: int) -> None:
    with pytest.raises(IntegrityError):
        await write_audit_batch(db, [event(trade_id), decision(trade_id + 1000)])
    assert await stored_ids(db) == []


@pytest.fixture
async def killer(database_url: str, tmp_path: pathlib.Path) -> AsyncIterator[Database]:
    """A second connection to the test's database, to take the others away."""
    async with open_database(database_url, data_dir=tmp_path, max_size=1) as admin:
        yield admin


async def _kill_connections(killer: Database, rounds: int, every: float) -> int:
    killed = 0
    for _ in range(rounds):
        await trio.sleep(every)
        rows = await killer.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        killed += sum(1 for row in rows if row[0])
    return killed


async def test_writer_loses_nothing_and_duplicates_nothing_when_connections_die(
    db: Database, killer: Database, trade_id: int, tmp_path: pathlib.Path
) -> None:
    config = AuditWriterConfig(
        max_batch=500,
        flush_interval=0.02,
        memory_limit=2000,
        write_deadline=3.0,
        shutdown_timeout=10.0,
        backoff=Backoff(base=0.02, max=0.2, jitter=0.5),
    )
    submitted: list[m.AuditRecord] = []
    killed = 0

    async def produce() -> None:
        # Bursts of ticks for about 1.5 s: 15,000 records of both kinds.
        for burst in range(60):
            for n in range(250):
                i = burst * 250 + n
                record = event(None, i) if i % 4 == 0 else decision(trade_id, i)
                submitted.append(record)
                sink.submit(record)
            await trio.sleep(0.025)

    async def kill() -> None:
        nonlocal killed
        killed = await _kill_connections(killer, rounds=8, every=0.15)

    with (
        AuditSink(journal_path=tmp_path / "journal.jsonl", config=config) as sink,
        trio.fail_after(60),
    ):
        async with trio.open_nursery() as writer_nursery:
            writer_nursery.start_soon(
                partial(audit_writer.run, sink=sink, store=DatabaseAuditStore(db))
            )
            async with trio.open_nursery() as load:
                load.start_soon(produce)
                load.start_soon(kill)
            sink.close()  # the writer ends once everything is in the database
        stats = sink.statistics()

    assert killed > 0
    assert stats.errors > 0  # the writer really lost its connections
    ids = await stored_ids(db)
    expected = {r.decision_id if isinstance(r, m.DecisionRecord) else r.event_id for r in submitted}
    assert len(ids) == len(submitted) == 15_000
    assert set(ids) == expected
    assert stats.accepted == stats.written == 15_000
    assert stats.queued == stats.journaled == 0
    assert stats.db_available
