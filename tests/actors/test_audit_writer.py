"""AuditWriter through its sink, against the in-memory store, on the autojump clock."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial

import msgspec
import pytest
import trio
import trio.testing

from actors import audit_writer
from actors.audit_journal import AuditJournal
from actors.audit_writer import AuditSink, AuditWriterConfig
from engine import messages as m
from engine.supervisor import Backoff
from tests.fakes.audit_store import FakeAuditStore, record_id

AT = dt.datetime(2025, 6, 20, 15, 0, tzinfo=dt.UTC)


def event(n: int) -> m.EngineEventRecord:
    return m.EngineEventRecord(kind="test.audit", actor="test", detail={"n": n}, at=AT)


def decision(n: int) -> m.DecisionRecord:
    return m.DecisionRecord(
        trade_id=n,
        decision=m.Decision.EXIT,
        rule="stop_loss",
        rules_fired=("stop_loss",),
        legs=(m.QuoteSnapshot(symbol="SPY250620P00500000", bid=Decimal("3.1"), ask=None),),
        underlying=None,
        mark_close_price=Decimal("3.15"),
        natural_close_price=None,
        pnl=Decimal("-1.6"),
        profit_fraction=None,
        loss_fraction=Decimal("1.03"),
        quantity=1,
        exit_action=m.ExitAction.FULL,
        exit_quantity=1,
        rule_version="test/1",
        dry_run=True,
        at=AT,
    )


def records(count: int, start: int = 0) -> list[m.AuditRecord]:
    return [decision(n) if n % 3 == 0 else event(n) for n in range(start, start + count)]


def config(**overrides: object) -> AuditWriterConfig:
    base: dict[str, object] = {
        "max_batch": 100,
        "flush_interval": 0.05,
        "memory_limit": 1000,
        "write_deadline": 5.0,
        "shutdown_timeout": 5.0,
        "backoff": Backoff(base=0.1, max=1.0, jitter=0.5),
        "fsync_in_thread": False,  # a worker thread would let virtual time run ahead
    }
    base.update(overrides)
    return AuditWriterConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def journal_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "audit" / "journal.jsonl"


@pytest.fixture
def store() -> FakeAuditStore:
    return FakeAuditStore()


@pytest.fixture
def sink(journal_path: pathlib.Path) -> Iterator[AuditSink]:
    with AuditSink(journal_path=journal_path, config=config()) as the_sink:
        yield the_sink


@asynccontextmanager
async def running(sink: AuditSink, store: FakeAuditStore) -> AsyncIterator[trio.Nursery]:
    """The writer running for the block; cancelled (and so flushing) at its end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(audit_writer.run, sink=sink, store=store))
        yield nursery
        nursery.cancel_scope.cancel()


def file_size(path: pathlib.Path) -> int:
    return path.stat().st_size


def journal_lines(path: pathlib.Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


async def test_group_commit_by_time_and_by_size(
    sink: AuditSink, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with running(sink, store):
            start = trio.current_time()
            batch = records(3)
            for record in batch:
                sink.submit(record)
            await trio.testing.wait_all_tasks_blocked()
            assert store.attempts == 0  # a few records wait for the flush interval
            await store.wait_for(3)
            assert trio.current_time() - start == pytest.approx(0.05)
            assert store.batch_sizes == [3]

            # A full batch goes at once, without waiting for the interval.
            start = trio.current_time()
            more = records(250, start=3)
            for record in more:
                sink.submit(record)
            await store.wait_for(203)
            assert trio.current_time() == start
            await store.wait_for(253)
            assert store.batch_sizes[:3] == [3, 100, 100]
            assert store.ids() == [record_id(r) for r in batch + more]
            stats = sink.statistics()
            assert stats.accepted == stats.written == 253
            assert stats.queued == stats.journaled == 0
            assert stats.db_available


async def test_producer_never_waits_and_memory_stays_bounded_while_down(
    journal_path: pathlib.Path, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    store.down = True
    limit = 500
    submitted = records(10_000)
    cfg = config(memory_limit=limit, spill_chunk=100)
    with AuditSink(journal_path=journal_path, config=cfg) as sink:
        with trio.fail_after(60):
            async with running(sink, store):
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
                most_queued = 0
                for record in submitted:
                    sink.submit(record)  # synchronous: nothing here can wait on the store
                    most_queued = max(most_queued, sink.statistics().queued)
                assert trio.current_time() == start
                assert most_queued < limit
                stats = sink.statistics()
                assert stats.accepted == 10_000
                assert stats.queued + stats.journaled == 10_000
                assert stats.journaled >= 10_000 - limit
                assert len(journal_lines(journal_path)) == stats.journaled

                # Down for a while: the writer retries, keeps the queue on disk, writes nothing.
                await trio.sleep(5)
                stats = sink.statistics()
                assert not stats.db_available
                assert stats.errors > 1
                assert stats.queued == 0 and stats.journaled == 10_000
                assert store.rows == {}

                store.down = False
                await store.wait_for(10_000)
                await trio.testing.wait_all_tasks_blocked()
                # Every record exactly once, in the order submitted; the journal emptied.
                assert store.ids() == [record_id(r) for r in submitted]
                stats = sink.statistics()
                assert stats.written == 10_000
                assert stats.db_available
                assert stats.journaled == 0
                assert file_size(journal_path) == 0


@pytest.mark.parametrize("spill_chunk", [1000, 40])
async def test_order_kept_when_the_queue_fills_during_a_slow_write(
    journal_path: pathlib.Path,
    store: FakeAuditStore,
    spill_chunk: int,
    autojump_clock: trio.abc.Clock,
) -> None:
    # The batch being written is moved to the journal with the rest of the queue: order holds,
    # and its second writing stores nothing twice.
    store.slow = True
    store.slow_seconds = 1.0
    cfg = config(memory_limit=150, spill_chunk=spill_chunk, write_deadline=10.0)
    with AuditSink(journal_path=journal_path, config=cfg) as sink, trio.fail_after(60):
        async with running(sink, store):
            first = records(100)
            for record in first:
                sink.submit(record)
            await trio.testing.wait_all_tasks_blocked()  # the first batch is being written
            more = records(400, start=100)
            for record in more:
                sink.submit(record)
            assert sink.statistics().spills >= 1
            store.slow = False
            await store.wait_for(500)
            await trio.testing.wait_all_tasks_blocked()
            assert store.ids() == [record_id(r) for r in first + more]
            assert store.duplicates == 100
            assert sink.statistics().written == 500


async def test_no_duplicate_when_the_answer_is_lost_after_commit(
    sink: AuditSink, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    store.lose_answers = 2
    batch = records(40)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(audit_writer.run, sink=sink, store=store))
            for record in batch:
                sink.submit(record)
            await store.wait_for(40)
            sink.close()  # the writer ends once nothing is pending
    assert store.lose_answers == 0
    # Written, then written again after the failure: stored once, counted once.
    assert store.ids() == [record_id(r) for r in batch]
    assert store.duplicates >= 40
    stats = sink.statistics()
    assert stats.written == 40
    assert stats.duplicates == 40
    assert stats.errors == 2
    assert stats.db_available


async def test_a_slow_write_past_the_deadline_is_an_outage(
    journal_path: pathlib.Path, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    store.slow = True
    with (
        AuditSink(journal_path=journal_path, config=config(write_deadline=2.0)) as sink,
        trio.fail_after(60),
    ):
        async with running(sink, store):
            batch = records(30)
            for record in batch:
                sink.submit(record)
            await trio.sleep(2.5)
            stats = sink.statistics()
            assert not stats.db_available
            assert stats.journaled == 30 and stats.queued == 0  # on disk while the db is away
            store.slow = False
            await store.wait_for(30)
            await trio.testing.wait_all_tasks_blocked()
            assert store.ids() == [record_id(r) for r in batch]
            assert sink.statistics().db_available


async def test_flush_on_shutdown(
    journal_path: pathlib.Path, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    with AuditSink(journal_path=journal_path, config=config(flush_interval=60.0)) as sink:
        batch = records(7)
        with trio.fail_after(10):
            async with running(sink, store):
                for record in batch:
                    sink.submit(record)
                await trio.testing.wait_all_tasks_blocked()
                assert store.rows == {}  # the interval has not elapsed
            # Cancelled: the shielded flush wrote everything before run returned.
        assert store.ids() == [record_id(r) for r in batch]
        assert trio.current_time() < 60.0
        assert sink.statistics().queued == 0


async def test_closing_the_sink_ends_the_writer_after_flushing(
    sink: AuditSink, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    batch = records(5)
    for record in batch:
        sink.submit(record)
    sink.close()
    with pytest.raises(trio.ClosedResourceError):
        sink.submit(event(99))
    with trio.fail_after(10):
        await audit_writer.run(sink=sink, store=store)
    assert store.ids() == [record_id(r) for r in batch]


async def test_what_cannot_be_flushed_stays_in_the_journal_for_the_next_start(
    journal_path: pathlib.Path, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    store.down = True
    cfg = config(shutdown_timeout=1.0)
    first = records(25)
    with AuditSink(journal_path=journal_path, config=cfg) as sink, trio.fail_after(30):
        async with running(sink, store):
            for record in first:
                sink.submit(record)
            await trio.testing.wait_all_tasks_blocked()
        stop_took = trio.current_time()
        assert stop_took <= 1.0 + 0.5  # bounded by the shutdown timeout
        assert sink.statistics().journaled == 25
    assert len(journal_lines(journal_path)) == 25

    # Next start, database back: the leftover journal goes first, then what is new.
    store.down = False
    second = records(10, start=25)
    with AuditSink(journal_path=journal_path, config=cfg) as sink, trio.fail_after(30):
        assert sink.statistics().journaled == 25
        async with running(sink, store):
            for record in second:
                sink.submit(record)
            await store.wait_for(35)
            await trio.testing.wait_all_tasks_blocked()
    assert store.ids() == [record_id(r) for r in first + second]
    assert file_size(journal_path) == 0


async def test_leftover_journal_from_a_crash_is_replayed_first(
    journal_path: pathlib.Path, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    # A crash left records, some already committed, and a torn last line.
    leftover = records(12)
    journal = AuditJournal(journal_path)
    journal.append(leftover)
    journal.close()
    with journal_path.open("ab") as f:
        f.write(m.encode(event(1000))[:20])
    await store.write(leftover[:4])

    with AuditSink(journal_path=journal_path, config=config()) as sink, trio.fail_after(30):
        assert sink.statistics().journaled == 12
        new = records(3, start=12)
        async with running(sink, store):
            for record in new:
                sink.submit(record)
            await store.wait_for(15)
            await trio.testing.wait_all_tasks_blocked()
        assert store.ids() == [record_id(r) for r in leftover + new]
        stats = sink.statistics()
        assert stats.written == 15
        assert stats.duplicates == 4  # committed before the crash: skipped, not stored twice
    rejected = journal_path.with_name(journal_path.name + ".rejected").read_bytes()
    assert b"torn last line" in rejected


async def test_a_refused_record_is_set_aside_and_the_rest_written(
    sink: AuditSink, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    batch = records(9)
    bad = batch[4]
    store.refused_ids = {record_id(bad)}
    with trio.fail_after(30):
        async with running(sink, store):
            for record in batch:
                sink.submit(record)
            await store.wait_for(8)
            await trio.testing.wait_all_tasks_blocked()
    assert store.ids() == [record_id(r) for r in batch if r is not bad]
    stats = sink.statistics()
    assert stats.rejected == 1
    assert stats.db_available  # a refusal is not an outage
    [line] = sink.journal_path.with_name("journal.jsonl.rejected").read_bytes().splitlines()
    entry = msgspec.json.decode(line)
    assert "foreign key" in entry["reason"]
    assert m.decode(entry["line"], m.AuditRecord) == bad


async def test_one_writer_per_sink(
    sink: AuditSink, store: FakeAuditStore, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with running(sink, store):
            with pytest.raises(RuntimeError):
                await audit_writer.run(sink=sink, store=store)


def test_ids_are_made_with_the_records() -> None:
    assert isinstance(record_id(event(1)), uuid.UUID)
    assert record_id(event(1)) != record_id(event(1))
