"""The migration runner: order, once only, checksums, atomic failure, the advisory lock."""

from __future__ import annotations

import pathlib

import pytest
import trio

from engine.errors import MigrationError
from storage import Database, apply_migrations, migration_status, open_database
from storage.migrations import load_migrations

pytestmark = pytest.mark.storage


def _write(directory: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def _tables(db: Database) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def _recorded(db: Database) -> list[tuple[int, str]]:
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


async def test_fresh_database_reports_every_migration_pending(db: Database) -> None:
    states = await migration_status(db)
    assert [s.name for s in states] == [m.name for m in load_migrations()]
    assert states[0].name == "0001_initial"
    assert all(s.applied_at is None and s.checksum_matches for s in states)
    # Status reads only: it does not create the bookkeeping table.
    assert "schema_migrations" not in await _tables(db)


async def test_shipped_migrations_apply_once_and_status_reports_them(db: Database) -> None:
    shipped = [m.name for m in load_migrations()]
    assert await apply_migrations(db) == shipped
    assert {"trades", "portfolio_positions", "orders", "fills", "decisions", "events"} <= (
        await _tables(db)
    )
    states = await migration_status(db)
    assert [s.name for s in states] == shipped
    assert all(s.applied_at is not None and s.checksum_matches for s in states)

    # Re-running is a no-op.
    assert await apply_migrations(db) == []
    assert await _recorded(db) == [(m.version, m.name) for m in load_migrations()]


async def test_migrations_apply_in_version_order_and_new_ones_later(
    db: Database, tmp_path: pathlib.Path
) -> None:
    source = _write(
        tmp_path / "m",
        {
            "0002_second.sql": "ALTER TABLE a ADD COLUMN note text;",
            "0001_first.sql": "CREATE TABLE a (id int PRIMARY KEY);",
            "README.txt": "not a migration",
        },
    )
    assert await apply_migrations(db, source=source) == ["0001_first", "0002_second"]
    _write(source, {"0003_third.sql": "CREATE TABLE c (id int);\nCREATE TABLE d (id int);"})
    assert await apply_migrations(db, source=source) == ["0003_third"]
    assert await _recorded(db) == [(1, "0001_first"), (2, "0002_second"), (3, "0003_third")]
    checksums = await db.fetch("SELECT checksum FROM schema_migrations")
    assert all(len(r["checksum"]) == 64 for r in checksums)


async def test_changed_applied_migration_is_refused(db: Database, tmp_path: pathlib.Path) -> None:
    source = _write(tmp_path / "m", {"0001_first.sql": "CREATE TABLE a (id int);"})
    await apply_migrations(db, source=source)
    _write(
        source,
        {
            "0001_first.sql": "CREATE TABLE a (id bigint);",
            "0002_second.sql": "CREATE TABLE b (id int);",
        },
    )
    with pytest.raises(MigrationError, match=r"0001_first\.sql was changed after it was applied"):
        await apply_migrations(db, source=source)
    # Refused before anything ran: the new migration was not applied either.
    assert "b" not in await _tables(db)
    states = await migration_status(db, source=source)
    assert [(s.name, s.checksum_matches, s.applied_at is not None) for s in states] == [
        ("0001_first", False, True),
        ("0002_second", True, False),
    ]


async def test_migration_unknown_to_this_code_is_refused(
    db: Database, tmp_path: pathlib.Path
) -> None:
    newer = _write(
        tmp_path / "newer",
        {"0001_first.sql": "CREATE TABLE a (id int);", "0002_next.sql": "CREATE TABLE b (id int);"},
    )
    await apply_migrations(db, source=newer)
    older = _write(tmp_path / "older", {"0001_first.sql": "CREATE TABLE a (id int);"})
    with pytest.raises(MigrationError, match=r"0002_next\.sql"):
        await apply_migrations(db, source=older)
    states = await migration_status(db, source=older)
    assert states[-1].name == "0002_next"
    assert states[-1].file_missing and not states[-1].checksum_matches


async def test_failing_migration_leaves_no_trace(db: Database, tmp_path: pathlib.Path) -> None:
    source = _write(
        tmp_path / "m",
        {
            "0001_good.sql": "CREATE TABLE a (id int);",
            "0002_bad.sql": (
                "CREATE TABLE b (id int);\n"
                "INSERT INTO b VALUES (1);\n"
                "INSERT INTO missing VALUES (1);\n"
            ),
            "0003_after.sql": "CREATE TABLE c (id int);",
        },
    )
    with pytest.raises(MigrationError) as caught:
        await apply_migrations(db, source=source)
    message = str(caught.value)
    assert "0002_bad.sql" in message
    assert 'relation "missing" does not exist' in message
    assert "line 3" in message
    assert "\n" not in message
    # The earlier migration stays; the failing one and everything after it left nothing.
    assert await _tables(db) == {"schema_migrations", "a"}
    assert await _recorded(db) == [(1, "0001_good")]
    # And it fails the same way again, still cleanly.
    with pytest.raises(MigrationError, match=r"0002_bad\.sql"):
        await apply_migrations(db, source=source)
    assert await _recorded(db) == [(1, "0001_good")]


def test_badly_named_or_duplicate_files_are_refused(tmp_path: pathlib.Path) -> None:
    bad_name = _write(tmp_path / "a", {"1_first.sql": "SELECT 1;"})
    with pytest.raises(MigrationError, match=r"1_first\.sql"):
        load_migrations(bad_name)
    duplicate = _write(tmp_path / "b", {"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match="share version 0001"):
        load_migrations(duplicate)


async def test_concurrent_migrators_apply_each_migration_once(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    # The first migration takes a while, so without the lock the second migrator would run it
    # too (and fail on the existing table or the schema_migrations key).
    source = _write(
        tmp_path / "m",
        {
            "0001_slow.sql": "CREATE TABLE a (id int);\nSELECT pg_sleep(0.5);",
            "0002_next.sql": "CREATE TABLE b (id int);",
        },
    )
    results: list[list[str]] = []

    async def migrate() -> None:
        async with open_database(database_url, data_dir=tmp_path) as db:
            results.append(await apply_migrations(db, source=source))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(migrate)
            nursery.start_soon(migrate)
    assert sorted(results) == [[], ["0001_slow", "0002_next"]]
    async with open_database(database_url, data_dir=tmp_path) as db:
        assert await _recorded(db) == [(1, "0001_slow"), (2, "0002_next")]
        # The lock was released: a third run takes it at once and finds nothing to do.
        with trio.fail_after(5):
            assert await apply_migrations(db, source=source) == []
