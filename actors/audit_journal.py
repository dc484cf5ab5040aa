"""The audit writer's local journal: an append-only file of records not yet in the database.

One record per line, JSON as :func:`engine.messages.encode` writes it, oldest first. Records go
in at the end (:meth:`AuditJournal.append`) and come out at the front
(:meth:`AuditJournal.read_batch`), in order; the file is truncated to nothing only once every
record in it has been committed to the database (:meth:`AuditJournal.commit`). Until then a crash
loses nothing that was appended: the next start replays the whole file, and the records the
database already holds are skipped by their ids (the inserts are ``ON CONFLICT DO NOTHING``).

**Durability (fsync policy).** :meth:`append` hands each group of lines to the kernel in one
``write`` on an unbuffered ``O_APPEND`` descriptor, so a *process* crash right after an append
loses nothing. Reaching the disk (surviving a power loss or a kernel crash) is left to
:meth:`fsync`, which the writer calls from a worker thread at most every ``fsync_interval``
while there are unsynced appends, and at shutdown: appending is on the producers' path and must
not wait for a disk. So a power loss can lose at most about ``fsync_interval`` of spilled
records.

**Damage.** A crash in the middle of a ``write`` can leave a last line without its newline: it is
cut off when the journal is opened (and counted in ``torn_bytes``). A line that does not decode
(a disk error, a hand edit) is skipped when read, counted in ``corrupt_lines`` and copied to the
``<journal>.rejected`` file beside it with the reason, so nothing is silently thrown away.

The journal is not thread-safe: one trio thread uses it (only :meth:`fsync` runs elsewhere, and
an ``fsync`` concurrent with writes is safe).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

import msgspec

from engine.log import get_logger
from engine.messages import AuditRecord, decode, encode

__all__ = ["AuditJournal", "JournalBatch"]

_log = get_logger("audit_writer")

# How much of the file one read takes at most, whatever the batch size: bounds the memory a
# replay uses when records are large.
_READ_CHUNK = 4 * 1024 * 1024


class JournalBatch(msgspec.Struct, frozen=True):
    """Records read from the front of the journal, and where the next read starts."""

    records: list[AuditRecord]
    lines: int  # lines consumed, decodable or not (records + corrupt lines)
    end_offset: int


class AuditJournal:
    """Append-only JSON-lines file of pending audit records (see the module docstring).

    Invariants: ``_committed <= _size``; the bytes before ``_committed`` are records already in
    the database; ``pending`` counts the lines from ``_committed`` to ``_size``; every line ends
    with a newline.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.rejected_path = path.with_name(path.name + ".rejected")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered and O_APPEND: each append is one write() at the current end of the file,
        # also right after a truncation.
        self._file = open(path, "ab", buffering=0)
        self._reader = open(path, "rb")
        self.torn_bytes = self._cut_torn_tail()
        self._size = os.fstat(self._file.fileno()).st_size
        self._committed = 0
        self.pending = self._count_lines()
        self.leftover = self.pending  # found at open: a previous run's records
        self.corrupt_lines = 0
        self.appended = 0
        self.dirty = False  # appended since the last fsync

    # ---- producers' side (synchronous, never waits on anything but the kernel) ------------

    def append(self, records: Iterable[AuditRecord]) -> int:
        """Append records in order, in one write. Returns how many. Raises OSError (disk full,
        I/O error) with nothing counted; a partial write is cut back off first."""
        data = b"".join([encode(record) + b"\n" for record in records])
        if not data:
            return 0
        count = data.count(b"\n")
        try:
            self._write_all(data)
        except OSError:
            # Put the file back where it was, so that the next append starts a fresh line.
            os.ftruncate(self._file.fileno(), self._size)
            raise
        self._size += len(data)
        self.pending += count
        self.appended += count
        self.dirty = True
        return count

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError("the journal accepted no bytes")
            view = view[written:]

    # ---- the writer's side -------------------------------------------------------------

    def read_batch(self, max_records: int) -> JournalBatch:
        """Up to ``max_records`` of the oldest uncommitted records (does not consume them)."""
        records: list[AuditRecord] = []
        lines = 0
        offset = self._committed
        self._reader.seek(offset)
        budget = _READ_CHUNK
        while lines < max_records and offset < self._size and budget > 0:
            line = self._reader.readline(self._size - offset)
            if not line.endswith(b"\n"):
                break  # cannot happen while the invariants hold; never read half a record
            offset += len(line)
            budget -= len(line)
            lines += 1
            try:
                records.append(decode(line, AuditRecord))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.corrupt_lines += 1
                self.reject_lines([line.rstrip(b"\n")], reason=str(exc))
                _log.error("audit_writer.journal_corrupt_line", path=str(self.path), error=str(exc))
        if lines == 0 and self.pending:
            # The file holds less than we counted (cut short behind our back): start over.
            _log.error("audit_writer.journal_shorter_than_expected", path=str(self.path))
            self.pending = 0
        return JournalBatch(records=records, lines=lines, end_offset=offset)

    def commit(self, batch: JournalBatch) -> None:
        """The batch is in the database: consume it; empty the file once all is consumed."""
        self._committed = batch.end_offset
        self.pending -= batch.lines
        if self._committed >= self._size:
            # Everything in the file is in the database: start over at zero bytes. Nothing can
            # be appended between the check and the truncation (one thread, no await).
            os.ftruncate(self._file.fileno(), 0)
            self._size = 0
            self._committed = 0
            self.pending = 0

    def reject(self, records: Sequence[AuditRecord], *, reason: str) -> None:
        """Keep records the database refused for good (a constraint) beside the journal."""
        self.reject_lines([encode(record) for record in records], reason=reason)

    def reject_lines(self, lines: Sequence[bytes], *, reason: str) -> None:
        entries = b"".join(
            msgspec.json.encode({"reason": reason, "line": line.decode("utf-8", "replace")}) + b"\n"
            for line in lines
        )
        with open(self.rejected_path, "ab") as rejected:
            rejected.write(entries)
            rejected.flush()
            os.fsync(rejected.fileno())

    def fsync(self) -> None:
        """Force appended records to the disk (call from a worker thread)."""
        self.dirty = False
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        self._reader.close()

    # ---- opening -------------------------------------------------------------------------

    def _cut_torn_tail(self) -> int:
        """Cut off a last line left without its newline by a crash mid-write."""
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return 0
        self._reader.seek(max(0, size - _READ_CHUNK))
        tail = self._reader.read()
        newline = tail.rfind(b"\n")
        keep = size - len(tail) + newline + 1 if newline >= 0 else 0
        if keep == size:
            return 0
        if newline < 0 and size > len(tail):
            return 0  # one line longer than the chunk: leave it to the decoder to judge
        torn = size - keep
        self.reject_lines([tail[newline + 1 :]], reason="torn last line (crash mid-write)")
        os.ftruncate(self._file.fileno(), keep)
        _log.warning("audit_writer.journal_torn_tail", path=str(self.path), bytes=torn)
        return torn

    def _count_lines(self) -> int:
        self._reader.seek(0)
        count = 0
        while chunk := self._reader.read(_READ_CHUNK):
            count += chunk.count(b"\n")
        return count
