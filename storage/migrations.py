"""The migration runner: numbered SQL files applied in order, each once, under a lock.

Migrations are the files ``NNNN_name.sql`` of the ``migrations`` package (found through
``importlib.resources``, so they work from a wheel too), or of a directory given by the caller.
Forward only: there is no "down".

- The whole run holds a PostgreSQL session advisory lock, so two engines starting at once never
  migrate at the same time: the second waits, then finds everything applied.
- Each migration runs in its own transaction together with its row in ``schema_migrations``
  (version, name, sha256 checksum, applied_at): it is applied completely or not at all. A
  migration file must therefore not contain BEGIN/COMMIT or statements that refuse to run in a
  transaction (``CREATE INDEX CONCURRENTLY``).
- Before anything is applied, every applied migration's checksum is compared with its file: an
  edited file, or a migration the database has and this code does not know, is refused with
  ``MigrationError`` and nothing runs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.resources
import pathlib
import re
from collections.abc import Sequence
from importlib.resources.abc import Traversable

import msgspec
import trio

from engine.errors import DatabaseError, MigrationError
from storage.database import Connection, Database, Executor
from storage.errors import QueryError

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationState",
    "apply_migrations",
    "load_migrations",
    "migration_status",
]

#: The advisory lock key the runner holds while migrating ("spreadwa" in ASCII, as an int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"spreadwa", "big", signed=True)

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY CHECK (version > 0),
    name        text        NOT NULL UNIQUE,
    checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

MigrationSource = pathlib.Path | Traversable


class Migration(msgspec.Struct, frozen=True):
    """One migration file. ``name`` is the file name without ``.sql`` (``0001_initial``)."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.sql"


class MigrationState(msgspec.Struct, frozen=True):
    """One migration as ``migration_status`` sees it.

    ``applied_at`` is None for a migration not applied yet. ``checksum_matches`` is False when
    the file changed after it was applied, or when the database has a migration whose file this
    code does not have (``file_missing``).
    """

    version: int
    name: str
    applied_at: datetime.datetime | None
    checksum_matches: bool
    file_missing: bool = False


def load_migrations(source: MigrationSource | None = None) -> list[Migration]:
    """The migrations in ``source`` (default: the ``migrations`` package), in version order.

    Raises ``MigrationError`` for a ``.sql`` file that is not named ``NNNN_name.sql`` and for two
    files with one version number.
    """
    root: MigrationSource = (
        source if source is not None else importlib.resources.files("migrations")
    )
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name} is not named NNNN_name.sql "
                "(four digits, then lowercase letters, digits and underscores)"
            )
        data = entry.read_bytes()
        version = int(match["version"])
        migration = Migration(
            version=version,
            name=entry.name.removesuffix(".sql"),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
        if version in found:
            raise MigrationError(
                f"migration files {found[version].file_name} and {entry.name} "
                f"share version {version:04d}"
            )
        found[version] = migration
    return [found[version] for version in sorted(found)]


async def apply_migrations(db: Database, *, source: MigrationSource | None = None) -> list[str]:
    """Apply every migration not applied yet; return the names applied now (in order).

    Safe to run from several processes at once. Raises ``MigrationError`` naming the file for a
    changed or unknown applied migration (before applying anything) and for a failing one (whose
    changes are rolled back; the ones before it stay applied).
    """
    migrations = load_migrations(source)
    async with db.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            return await _apply_locked(conn, migrations)
        finally:
            # The pool's reset on release unlocks too (and a lost session holds no lock);
            # unlocking here, even when cancelled, keeps the other migrators' wait short.
            with trio.move_on_after(5, shield=True), contextlib.suppress(DatabaseError):
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migration_status(
    db: Executor, *, source: MigrationSource | None = None
) -> list[MigrationState]:
    """Every migration known to the code or the database, in version order. Read only."""
    migrations = load_migrations(source)
    applied = await _applied(db)
    by_version = {m.version: m for m in migrations}
    states: list[MigrationState] = []
    for version in sorted(set(by_version) | set(applied)):
        migration = by_version.get(version)
        row = applied.get(version)
        if migration is None:
            assert row is not None
            states.append(
                MigrationState(version, row[0], row[2], checksum_matches=False, file_missing=True)
            )
        elif row is None:
            states.append(MigrationState(version, migration.name, None, checksum_matches=True))
        else:
            states.append(
                MigrationState(
                    version, migration.name, row[2], checksum_matches=row[1] == migration.checksum
                )
            )
    return states


async def _apply_locked(conn: Connection, migrations: Sequence[Migration]) -> list[str]:
    await conn.execute(_CREATE_TABLE)
    applied = await _applied(conn)
    _refuse_drift(migrations, applied)
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except QueryError as exc:
            where = _line_of(migration.sql, exc.position)
            raise MigrationError(
                f"migration {migration.file_name} failed{where} and was rolled back: {exc}"
            ) from exc
        done.append(migration.name)
    return done


async def _applied(db: Executor) -> dict[int, tuple[str, str, datetime.datetime]]:
    exists = await db.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await db.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return {r["version"]: (r["name"], r["checksum"], r["applied_at"]) for r in rows}


def _refuse_drift(
    migrations: Sequence[Migration], applied: dict[int, tuple[str, str, datetime.datetime]]
) -> None:
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum, _applied_at) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {name}.sql, which this version of spreadwatch "
                "does not know (a newer version migrated it); refusing to migrate"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.file_name} was changed after it was applied "
                f"(checksum {checksum[:12]}… applied, {migration.checksum[:12]}… on disk); "
                "write a new migration instead of editing an applied one"
            )


def _line_of(sql: str, position: int | None) -> str:
    """`` at line N`` for a server error position (1-based character offset), else ``""``."""
    if position is None or position < 1:
        return ""
    return f" at line {sql[: position - 1].count(chr(10)) + 1}"
