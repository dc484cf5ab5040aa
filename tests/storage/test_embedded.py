"""The embedded server: started on demand in a fresh directory, stopped on exit, reopened."""

from __future__ import annotations

import json
import pathlib

import pytest
import trio

from engine.errors import DatabaseUnavailable
from storage import APP_DATABASE, apply_migrations, migration_status, open_database

pytestmark = pytest.mark.storage


def _running(pgdata: pathlib.Path) -> bool:
    # postmaster.pid exists exactly while the server runs (pg_ctl stop removes it).
    return (pgdata / "postmaster.pid").exists()


async def test_starts_in_a_fresh_directory_stops_on_exit_and_reopens(
    pg_dir: pathlib.Path,
) -> None:
    pgdata = pg_dir / "data" / "pgdata"  # neither exists yet
    with trio.fail_after(60):
        async with open_database(None, data_dir=pgdata) as db:
            assert db.embedded
            assert _running(pgdata)
            assert await db.fetchval("SELECT current_database()") == APP_DATABASE
            assert await apply_migrations(db) != []
            await db.execute(
                "INSERT INTO events (occurred_at, kind) VALUES (now(), 'test.first_run')"
            )
        assert not _running(pgdata)

        async with open_database(None, data_dir=pgdata) as db:
            assert _running(pgdata)
            states = await migration_status(db)
            assert states and all(s.applied_at is not None for s in states)
            assert await apply_migrations(db) == []
            assert await db.fetchval("SELECT kind FROM events") == "test.first_run"
        assert not _running(pgdata)


async def test_two_users_in_one_process_share_the_server(pg_dir: pathlib.Path) -> None:
    pgdata = pg_dir / "pgdata"
    with trio.fail_after(60):
        async with open_database(None, data_dir=pgdata) as first:
            async with open_database(None, data_dir=pgdata) as second:
                assert await second.fetchval("SELECT 1") == 1
            # The second one letting go did not stop the server under the first.
            assert _running(pgdata)
            assert await first.fetchval("SELECT 2") == 2
        assert not _running(pgdata)


async def test_a_killed_process_does_not_keep_the_server_alive(pg_dir: pathlib.Path) -> None:
    pgdata = pg_dir / "pgdata"
    dead = await trio.lowlevel.open_process(["true"])
    await dead.wait()
    with trio.fail_after(60):
        async with open_database(None, data_dir=pgdata) as db:
            assert await db.fetchval("SELECT 1") == 1
            # As if another engine had used the server and been killed with SIGKILL.
            handles = pgdata / ".handle_pids.json"
            pids = json.loads(handles.read_text())
            handles.write_text(json.dumps([dead.pid, *pids]))
        assert not _running(pgdata)


async def test_unusable_data_directory_fails_with_one_line(pg_dir: pathlib.Path) -> None:
    # A non-empty directory that is not a PostgreSQL data directory: initdb refuses it.
    pgdata = pg_dir / "pgdata"
    pgdata.mkdir()
    (pgdata / "notes.txt").write_text("not a database")
    with trio.fail_after(60), pytest.raises(DatabaseUnavailable) as caught:
        async with open_database(None, data_dir=pgdata):
            pytest.fail("started a server in a directory initdb refuses")
    message = str(caught.value)
    assert "\n" not in message
    assert str(pgdata) in message
