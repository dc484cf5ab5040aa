"""AuditWriter: every audit record reaches the database exactly once, and the tick path never
waits for it.

**The handoff** is an :class:`AuditSink`, made by the composition root and shared by every
producer: ``sink.submit(record)`` is a plain synchronous call that appends to an in-memory queue
and, on the few submits that matter (the first pending record, a full batch), wakes the writer.
It never awaits, so a slow or dead database cannot stall a PositionWatcher's tick. Why not a trio
channel: a bounded channel either blocks the sender when full (stalling the tick path) or
refuses the record (losing it), and an unbounded one breaks the memory bound. The sink has a
third way out when the queue is full: the journal. It outlives the writer task, so a writer the
supervisor restarts finds every record still queued.

**Memory is bounded** by ``memory_limit`` records: a submit that fills the queue moves the
oldest ``spill_chunk`` records, in order, to the local append-only journal
(:mod:`actors.audit_journal`) in one write. A chunk, not the whole queue: encoding costs about
2.6 us a record, so the producer that happens to fill the queue pays at most a few ms, once per
``spill_chunk`` submits. The journal is always older than the queue (records only ever move from
the queue's head to the journal's end), so the writer drains the journal first, then the queue,
and the database sees records in the order they were submitted.

**Group commit** (:func:`run`): the writer takes up to ``max_batch`` records and writes them in
ONE transaction through an :class:`AuditStore`, as soon as a full batch is pending or when the
oldest pending record has waited ``flush_interval``; a batch that took long leaves the next one
bigger, so throughput follows the load. Records leave the queue only once committed.

**Exactly once.** Every record carries its uuid from birth (``decision_id`` / ``event_id``) and
the store inserts with ``ON CONFLICT (id) DO NOTHING``. Writing a record twice (a batch whose
COMMIT succeeded but whose answer was lost; a batch moved to the journal while it was being
written; a journal replayed after a crash before its truncation) therefore stores it once.

**Outages.** A write that fails with ``DatabaseUnavailable`` (or any connection error, or another
database error that is not about the records themselves), or takes longer than
``write_deadline``, marks the database unavailable: the queue goes to the journal (so the
producers' records are on disk, not only in RAM), submits go on being accepted, and the writer
retries with jittered exponential backoff, spilling the queue every ``flush_interval``. When a
write succeeds again the journal is replayed in order, then the queue; the journal is truncated
only when every record in it is committed. A leftover journal found at start (a crash) is
replayed first.

**Records the database refuses** (a constraint violation, a bad value: SQLSTATE classes 23 and
22) would block the writer forever if retried: the batch is split in halves until the refused
records are alone, the others are written, and the refused ones go to ``<journal>.rejected``
with the reason, logged at error level and counted (``rejected``).

**Shutdown**: when the writer is cancelled or the sink is closed, whatever is pending is written
within ``shutdown_timeout`` (shielded from the cancellation); anything left goes to the journal,
fsynced, for the next start.
"""

from __future__ import annotations

import math
import pathlib
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import trio

from actors.audit_journal import AuditJournal, JournalBatch
from engine.errors import DatabaseError
from engine.log import get_logger
from engine.messages import AuditRecord
from engine.supervisor import Backoff
from storage.errors import QueryError

__all__ = [
    "AuditSink",
    "AuditStore",
    "AuditWriterConfig",
    "AuditWriterStatistics",
    "run",
]

_log = get_logger("audit_writer")


class AuditStore(Protocol):
    """Where batches go (``storage.audit.DatabaseAuditStore``; an in-memory fake in tests)."""

    async def write(self, records: Sequence[AuditRecord]) -> int:
        """Write every record in ONE transaction, skipping ids already stored; return how many
        rows were new. Raises ``DatabaseUnavailable`` when the database cannot be reached."""
        ...


@dataclass(frozen=True, slots=True)
class AuditWriterConfig:
    """Tuning of the sink and the writer. Times are seconds on trio's clock."""

    max_batch: int = 5000  # records per transaction at most
    flush_interval: float = 0.05  # the longest a record waits in the queue before a write starts
    memory_limit: int = 50_000  # records in RAM at most; the rest go to the journal
    spill_chunk: int = 500  # records moved to the journal at once (bounds a producer's stall)
    write_deadline: float = 10.0  # a write taking longer counts as an outage
    shutdown_timeout: float = 5.0  # to flush what is pending when stopped
    fsync_interval: float = 1.0  # journal appends reach the disk within about this
    # fsync in a worker thread, so a slow disk never stalls the trio thread (the tick path).
    # False runs it inline: for tests on the autojump clock, where a task waiting on a thread
    # counts as blocked and virtual time would run ahead of the real fsync.
    fsync_in_thread: bool = True
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.1, max=5.0, jitter=0.5))

    def __post_init__(self) -> None:
        if min(self.max_batch, self.memory_limit, self.spill_chunk) < 1:
            raise ValueError("max_batch, memory_limit and spill_chunk must be at least 1")
        if min(self.flush_interval, self.write_deadline, self.shutdown_timeout) <= 0:
            raise ValueError("flush_interval, write_deadline and shutdown_timeout must be > 0")


class AuditWriterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    accepted: int  # records submitted
    written: int  # records committed and taken off the queue or the journal
    duplicates: int  # of those, records the database already had (replays after a failure)
    queued: int  # records in memory, waiting
    journaled: int  # records in the journal, waiting
    batches: int  # transactions committed
    last_batch_size: int
    last_batch_seconds: float
    errors: int  # failed writes (outages, deadlines, refused batches)
    rejected: int  # records the database refused for good (in the .rejected file)
    spills: int  # times the queue moved to the journal
    db_available: bool


class AuditSink:
    """The producers' end: ``submit`` never waits. One writer (:func:`run`) drains it.

    Invariants: every record in the journal was submitted before every record in ``_memory``;
    the first ``_in_flight`` records of ``_memory`` are the batch being written (0 when none or
    when they were moved to the journal meanwhile); ``len(_memory) < memory_limit`` after every
    submit unless the journal could not be written.
    """

    def __init__(
        self, *, journal_path: pathlib.Path, config: AuditWriterConfig | None = None
    ) -> None:
        self.config = config or AuditWriterConfig()
        self._journal = AuditJournal(journal_path)
        self._memory: deque[AuditRecord] = deque()
        self._in_flight = 0
        self._oldest_at = math.inf  # when the oldest record in _memory arrived
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._writer_running = False
        self._accepted = 0
        self._written = 0
        self._duplicates = 0
        self._batches = 0
        self._last_batch_size = 0
        self._last_batch_seconds = 0.0
        self._errors = 0
        self._rejected = 0
        self._spills = 0
        self._db_available = True
        if self._journal.leftover:
            _log.info(
                "audit_writer.journal_found",
                path=str(journal_path),
                records=self._journal.leftover,
            )

    def __enter__(self) -> AuditSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Records submitted after the writer stopped are not lost: they wait in the journal.
        self.close()
        self._spill()
        if self._journal.dirty:
            self._journal.fsync()
        self._journal.close()

    # ---- producers ------------------------------------------------------------------------

    def submit(self, record: AuditRecord) -> None:
        """Accept one record; never blocks. Raises ``trio.ClosedResourceError`` after close()."""
        if self._closed:
            raise trio.ClosedResourceError("the audit sink is closed")
        self._accepted += 1
        memory = self._memory
        memory.append(record)
        size = len(memory)
        if size == 1:
            self._oldest_at = trio.current_time()
            self._wake()
        elif size >= self.config.memory_limit:
            self._spill(self.config.spill_chunk)
            self._wake()
        elif size == self.config.max_batch:
            self._wake()

    def close(self) -> None:
        """No more records: the writer writes what is pending and returns."""
        self._closed = True
        self._wake()

    def statistics(self) -> AuditWriterStatistics:
        return AuditWriterStatistics(
            accepted=self._accepted,
            written=self._written,
            duplicates=self._duplicates,
            queued=len(self._memory),
            journaled=self._journal.pending,
            batches=self._batches,
            last_batch_size=self._last_batch_size,
            last_batch_seconds=self._last_batch_seconds,
            errors=self._errors,
            rejected=self._rejected,
            spills=self._spills,
            db_available=self._db_available,
        )

    @property
    def journal_path(self) -> pathlib.Path:
        return self._journal.path

    # ---- the writer's side (same thread; see run) -----------------------------------------

    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    def _spill(self, limit: int | None = None) -> bool:
        """Move the oldest ``limit`` records (all by default), in order, to the end of the
        journal. False if the disk failed (the records then stay in memory: over the limit
        beats lost)."""
        memory = self._memory
        if not memory:
            return True
        count = len(memory) if limit is None else min(limit, len(memory))
        chunk = memory if count == len(memory) else [memory[i] for i in range(count)]
        try:
            self._journal.append(chunk)
        except OSError as exc:
            self._errors += 1
            _log.error(
                "audit_writer.journal_write_failed",
                path=str(self._journal.path),
                queued=len(self._memory),
                error=str(exc),
            )
            return False
        if count == len(memory):
            memory.clear()
            self._oldest_at = math.inf
        else:
            for _ in range(count):
                memory.popleft()
        # Whatever part of the batch being written moved is in the journal now, and replayed
        # from there; the part still at the head is taken off when the batch commits.
        self._in_flight -= min(count, self._in_flight)
        self._spills += 1
        return True

    async def _spill_all(self) -> None:
        """Move the whole queue to the journal a chunk at a time, letting other tasks (the tick
        path) run between chunks."""
        while self._memory:
            if not self._spill(self.config.spill_chunk):
                return
            await trio.lowlevel.checkpoint()


class _Outage(Exception):
    """A write failed for a reason that is not the records' fault: retry later."""


class _Batch:
    """Records taken for one transaction, and where they came from."""

    __slots__ = ("journal", "records")

    def __init__(self, records: list[AuditRecord], journal: JournalBatch | None) -> None:
        self.records = records
        self.journal = journal  # None: the head of the in-memory queue


def _take_batch(sink: AuditSink) -> _Batch | None:
    """The next records to write, oldest first: the journal's, else the queue's head."""
    limit = sink.config.max_batch
    if sink._journal.pending:
        batch = sink._journal.read_batch(limit)
        return _Batch(batch.records, batch)
    if sink._memory:
        count = min(limit, len(sink._memory))
        sink._in_flight = count
        records = [sink._memory[i] for i in range(count)]
        return _Batch(records, None)
    return None


def _commit_batch(sink: AuditSink, batch: _Batch, *, inserted: int, refused: int) -> None:
    """The batch is committed: take it off the journal or the queue and count it."""
    if batch.journal is not None:
        sink._journal.commit(batch.journal)
        consumed = len(batch.records)
    else:
        # 0 when the batch was moved to the journal meanwhile: it is counted when replayed.
        consumed = sink._in_flight
        for _ in range(consumed):
            sink._memory.popleft()
        sink._in_flight = 0
    stored = max(0, consumed - refused)
    sink._written += stored
    sink._duplicates += max(0, stored - inserted)
    sink._batches += 1
    sink._last_batch_size = len(batch.records)


def _is_refusal(exc: DatabaseError) -> bool:
    """The database refused the records themselves (a constraint, a bad value): retrying the
    same rows can never succeed."""
    if not isinstance(exc, QueryError) or exc.sqlstate is None:
        return False
    return exc.sqlstate.startswith(("22", "23"))


async def _write_once(store: AuditStore, records: Sequence[AuditRecord], deadline: float) -> int:
    try:
        with trio.fail_after(deadline):
            return await store.write(records)
    except trio.TooSlowError as exc:
        raise _Outage(f"no commit within the write deadline of {deadline:g} s") from exc
    except DatabaseError as exc:
        if _is_refusal(exc):
            raise
        raise _Outage(str(exc)) from exc
    except OSError as exc:
        raise _Outage(str(exc)) from exc


async def _write_isolating(sink: AuditSink, store: AuditStore, records: list[AuditRecord]) -> int:
    """Write ``records``; when the database refuses some, split until they are alone, write
    the rest and set the refused ones aside. Raises _Outage."""
    try:
        return await _write_once(store, records, sink.config.write_deadline)
    except DatabaseError as exc:  # a refusal (_write_once turned everything else into _Outage)
        sink._errors += 1
        if len(records) > 1:
            middle = len(records) // 2
            written = await _write_isolating(sink, store, records[:middle])
            return written + await _write_isolating(sink, store, records[middle:])
        sink._journal.reject(records, reason=str(exc))
        sink._rejected += 1
        _log.error(
            "audit_writer.record_rejected",
            record_type=type(records[0]).__name__,
            path=str(sink._journal.rejected_path),
            error=str(exc),
        )
        return 0


async def _write_batch(sink: AuditSink, store: AuditStore, batch: _Batch) -> None:
    """Write one batch and consume it. Raises _Outage (the batch stays pending)."""
    started = trio.current_time()
    refused_before = sink._rejected
    try:
        inserted = await _write_isolating(sink, store, batch.records)
    except _Outage as exc:
        sink._errors += 1
        if sink._db_available:
            sink._db_available = False
            _log.warning(
                "audit_writer.database_unavailable",
                error=str(exc),
                queued=len(sink._memory),
                journaled=sink._journal.pending,
            )
        raise
    _commit_batch(sink, batch, inserted=inserted, refused=sink._rejected - refused_before)
    sink._last_batch_seconds = trio.current_time() - started
    if sink._memory:
        # What is left arrived while the batch was being written: due now, as group commit
        # wants (the flush timer counts from when this batch started).
        sink._oldest_at = min(sink._oldest_at, started)
    else:
        sink._oldest_at = math.inf
    if not sink._db_available:
        sink._db_available = True
        _log.info("audit_writer.database_back", journaled=sink._journal.pending)


async def _next_batch(sink: AuditSink) -> _Batch | None:
    """Wait until a batch is due (a full batch, the flush interval, or closing); None once the
    sink is closed."""
    config = sink.config
    while not sink._closed:
        if sink._journal.pending or len(sink._memory) >= config.max_batch:
            return _take_batch(sink)
        if sink._memory and trio.current_time() >= sink._oldest_at + config.flush_interval:
            return _take_batch(sink)
        with trio.move_on_at(sink._oldest_at + config.flush_interval):
            await sink._lot.park()
    return None


class _Syncer:
    """Runs the journal's fsync in a worker thread at most every ``fsync_interval``."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink
        self._last = -math.inf

    async def maybe(self, *, force: bool = False) -> None:
        journal = self._sink._journal
        now = trio.current_time()
        if journal.dirty and (force or now - self._last >= self._sink.config.fsync_interval):
            self._last = now
            if self._sink.config.fsync_in_thread:
                await trio.to_thread.run_sync(journal.fsync)
            else:
                journal.fsync()


async def _back_off(sink: AuditSink, syncer: _Syncer, delay: float) -> None:
    """Wait ``delay`` before retrying, keeping the queue on disk meanwhile (the database is
    away: RAM is the wrong place for records), and stop early when the sink closes."""
    retry_at = trio.current_time() + delay
    while not sink._closed and trio.current_time() < retry_at:
        with trio.move_on_at(min(retry_at, trio.current_time() + sink.config.flush_interval)):
            await sink._lot.park()
        await sink._spill_all()
        await syncer.maybe()


async def _write_loop(sink: AuditSink, store: AuditStore, syncer: _Syncer) -> None:
    rng = random.Random()
    failures = 0
    while (batch := await _next_batch(sink)) is not None:
        try:
            await _write_batch(sink, store, batch)
        except _Outage:
            await sink._spill_all()
            await syncer.maybe(force=True)
            await _back_off(sink, syncer, sink.config.backoff.delay(failures, rng))
            failures += 1
        else:
            failures = 0
        await syncer.maybe()


async def _final_flush(sink: AuditSink, store: AuditStore, syncer: _Syncer) -> None:
    """Write what is pending within ``shutdown_timeout``; leave the rest in the journal."""
    config = sink.config
    with trio.move_on_after(config.shutdown_timeout, shield=True):
        failures = 0
        while (batch := _take_batch(sink)) is not None:
            try:
                await _write_batch(sink, store, batch)
            except _Outage:
                await trio.sleep(config.backoff.ceiling(failures))
                failures += 1
    pending = len(sink._memory)
    sink._spill()
    with trio.move_on_after(config.shutdown_timeout, shield=True):
        await syncer.maybe(force=True)
    journaled = sink._journal.pending
    if journaled:
        _log.warning(
            "audit_writer.left_in_journal",
            records=journaled,
            from_memory=pending,
            path=str(sink._journal.path),
        )


async def run(
    *,
    sink: AuditSink,
    store: AuditStore,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Drain ``sink`` into ``store`` until the sink is closed or this task is cancelled, then
    flush (see the module docstring). One writer per sink at a time."""
    if sink._writer_running:
        raise RuntimeError("another audit writer is already draining this sink")
    sink._writer_running = True
    syncer = _Syncer(sink)
    try:
        task_status.started()
        await _write_loop(sink, store, syncer)
    finally:
        try:
            await _final_flush(sink, store, syncer)
        finally:
            sink._writer_running = False
            sink._in_flight = 0
