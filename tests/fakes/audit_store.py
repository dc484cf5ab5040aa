"""An in-memory audit store (``actors.audit_writer.AuditStore``) for tests on the autojump clock.

It keeps what PostgreSQL's ``INSERT ... ON CONFLICT (id) DO NOTHING`` keeps: each id once, in
the order first written. Switches make it misbehave like a database can:

- ``down``: every write fails with ``DatabaseUnavailable`` (nothing stored);
- ``slow``: every write takes ``slow_seconds`` (trio time) before it stores anything;
- ``lose_answers``: the next N writes store their rows and THEN fail with
  ``DatabaseUnavailable``, as when the connection drops after COMMIT;
- ``refused_ids``: a batch containing one of these ids fails with ``IntegrityError`` and stores
  nothing (a foreign key violation, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import trio

from engine.errors import DatabaseUnavailable
from engine.messages import AuditRecord, DecisionRecord
from storage.errors import IntegrityError

__all__ = ["FakeAuditStore", "record_id"]


def record_id(record: AuditRecord) -> uuid.UUID:
    return record.decision_id if isinstance(record, DecisionRecord) else record.event_id


class FakeAuditStore:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, AuditRecord] = {}  # insertion-ordered, like the table's ids
        self.down = False
        self.slow = False
        self.slow_seconds = 60.0
        self.lose_answers = 0
        self.refused_ids: set[uuid.UUID] = set()
        self.attempts = 0  # write calls
        self.commits = 0  # write calls that stored their batch
        self.batch_sizes: list[int] = []  # of the commits
        self.duplicates = 0  # records written again and skipped
        self._lot = trio.lowlevel.ParkingLot()

    async def write(self, records: Sequence[AuditRecord]) -> int:
        self.attempts += 1
        await trio.lowlevel.checkpoint()
        if self.down:
            raise DatabaseUnavailable("lost the connection to the fake: it is down")
        if self.slow:
            await trio.sleep(self.slow_seconds)
        ids = [record_id(r) for r in records]
        refused = self.refused_ids.intersection(ids)
        if refused:
            raise IntegrityError(
                "insert or update violates foreign key constraint [SQLSTATE 23503]",
                sqlstate="23503",
                constraint_name="decisions_trade_id_fkey",
            )
        inserted = 0
        for key, record in zip(ids, records, strict=True):
            if key in self.rows:
                self.duplicates += 1
            else:
                self.rows[key] = record
                inserted += 1
        self.commits += 1
        self.batch_sizes.append(len(records))
        self._lot.unpark_all()
        if self.lose_answers:
            self.lose_answers -= 1
            raise DatabaseUnavailable("lost the connection to the fake after COMMIT")
        return inserted

    def ids(self) -> list[uuid.UUID]:
        """Stored ids, in the order they were first written."""
        return list(self.rows)

    async def wait_for(self, count: int) -> None:
        """Return once at least ``count`` records are stored."""
        while len(self.rows) < count:
            await self._lot.park()
