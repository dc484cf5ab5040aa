"""The trio-facing database: connecting, failing fast, transactions, cancellation, LISTEN."""

from __future__ import annotations

import decimal
import pathlib
import time
import uuid
from functools import partial

import pytest
import trio
import trio_asyncio

from engine.errors import DatabaseError, DatabaseUnavailable
from storage import Database, IntegrityError, QueryError, open_database
from storage.database import describe_url

pytestmark = pytest.mark.storage

UNREACHABLE_URL = "postgresql://nobody@127.0.0.1:1/none"


async def _make_table(db: Database) -> None:
    await db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")


async def _count(db: Database) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM notes")
    return count


async def test_queries_round_trip_exact_values(db: Database) -> None:
    row = await db.fetchrow(
        "SELECT $1::numeric AS price, $2::jsonb AS doc, current_database() AS name",
        decimal.Decimal("1.2345"),
        {"legs": [{"strike": decimal.Decimal("400.5")}], "n": 3},
    )
    assert row is not None
    assert row["price"] == decimal.Decimal("1.2345")
    # JSON numbers with a fraction come back as Decimal, never float.
    assert row["doc"] == {"legs": [{"strike": decimal.Decimal("400.5")}], "n": 3}
    doc = await db.fetchval("SELECT '{\"mark\": 0.15}'::jsonb")
    assert doc == {"mark": decimal.Decimal("0.15")}
    assert type(doc["mark"]) is decimal.Decimal
    assert row["name"].startswith("spreadwatch_test_")


async def test_executemany_and_copy_records(db: Database) -> None:
    await _make_table(db)
    await db.executemany("INSERT INTO notes VALUES ($1, $2)", [(1, "a"), (2, "b")])
    result = await db.copy_records_to_table("notes", records=[(3, "c"), (4, "d")])
    assert result == "COPY 2"
    assert [r["body"] for r in await db.fetch("SELECT body FROM notes ORDER BY id")] == [
        "a",
        "b",
        "c",
        "d",
    ]


async def test_copy_records_with_jsonb_and_uuid(db: Database) -> None:
    await db.execute("CREATE TABLE audit (id uuid PRIMARY KEY, doc jsonb NOT NULL)")
    key = uuid.uuid4()
    await db.copy_records_to_table(
        "audit", records=[(key, {"mark": decimal.Decimal("0.35")})], columns=["id", "doc"]
    )
    assert await db.fetchval("SELECT doc FROM audit WHERE id = $1", key) == {
        "mark": decimal.Decimal("0.35")
    }


async def test_unreachable_url_fails_fast_with_one_line(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(DatabaseUnavailable) as caught:
        async with open_database(UNREACHABLE_URL, data_dir=tmp_path, connect_timeout=3):
            pytest.fail("connected to a port nobody listens on")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "\n" not in message
    assert "127.0.0.1:1" in message
    assert "refused" in message


async def test_silent_server_fails_within_the_connect_timeout(tmp_path: pathlib.Path) -> None:
    # A server that accepts the TCP connection and never answers: only our own deadline ends
    # the attempt.
    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        started = time.monotonic()
        with trio.fail_after(10), pytest.raises(DatabaseUnavailable) as caught:
            async with open_database(
                f"postgresql://postgres@127.0.0.1:{port}/x", data_dir=tmp_path, connect_timeout=0.5
            ):
                pytest.fail("connected to a server that never answers")
        assert time.monotonic() - started < 3
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "no answer within 0.5 s" in str(caught.value)
        assert "\n" not in str(caught.value)
        nursery.cancel_scope.cancel()


async def test_exception_in_the_block_comes_out_as_itself(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    # Not wrapped in the exception groups of trio-asyncio's nurseries.
    with pytest.raises(LookupError, match="mine"):
        async with open_database(database_url, data_dir=tmp_path) as db:
            await db.fetchval("SELECT 1")
            raise LookupError("mine")


async def test_works_inside_an_outer_trio_asyncio_loop(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    async with trio_asyncio.open_loop() as outer:
        async with open_database(database_url, data_dir=tmp_path) as db:
            assert await db.fetchval("SELECT 41 + 1") == 42
            # The caller's loop is reused rather than a second loop nested in it.
            assert db._bridge.loop is outer
        assert not outer.is_closed()


async def test_usable_from_tasks_whose_context_names_no_loop(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_database(database_url, data_dir=tmp_path, max_size=3) as db:
        results: list[int] = []

        async def query(n: int) -> None:
            # As in a task spawned outside any trio-asyncio loop's block.
            trio_asyncio.current_loop.set(None)
            results.append(await db.fetchval("SELECT $1::int * 2", n))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(query, n)
    assert sorted(results) == [n * 2 for n in range(20)]


async def test_transaction_commits(db: Database) -> None:
    await _make_table(db)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO notes VALUES (1, 'kept')")
        assert conn.is_in_transaction()
    assert await _count(db) == 1


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    await _make_table(db)
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO notes VALUES (1, 'gone')")
            raise RuntimeError("boom")
    assert await _count(db) == 0


async def test_constraint_violation_rolls_back_the_whole_transaction(db: Database) -> None:
    await _make_table(db)
    await db.execute("INSERT INTO notes VALUES (1, 'first')")
    with pytest.raises(IntegrityError) as caught:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO notes VALUES (2, 'second')")
            await conn.execute("INSERT INTO notes VALUES (1, 'duplicate')")
    assert caught.value.sqlstate == "23505"
    assert caught.value.constraint_name == "notes_pkey"
    assert await _count(db) == 1


async def test_nested_transaction_is_a_savepoint(db: Database) -> None:
    await _make_table(db)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO notes VALUES (1, 'outer')")
        with pytest.raises(IntegrityError):
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES (1, 'inner duplicate')")
        await conn.execute("INSERT INTO notes VALUES (2, 'after the savepoint')")
    assert await _count(db) == 2


async def test_cancellation_mid_transaction_rolls_back_and_keeps_the_connection(
    db: Database,
) -> None:
    await _make_table(db)
    async with db.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        started = time.monotonic()
        with trio.move_on_after(0.5) as scope:
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES (1, 'never committed')")
                await conn.fetchval("SELECT pg_sleep(30)")
        assert scope.cancelled_caught
        assert time.monotonic() - started < 5
        # Same session, out of the transaction, and the sleeping query was cancelled on the
        # server (this query would wait 30 s behind it otherwise).
        with trio.fail_after(5):
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM notes") == 0


async def test_cancelled_pooled_query_leaves_the_pool_usable(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_database(database_url, data_dir=tmp_path, max_size=1) as db:
        with trio.move_on_after(0.3):
            await db.fetchval("SELECT pg_sleep(30)")
        with trio.fail_after(5):
            assert await db.fetchval("SELECT 1") == 1


async def test_query_error_is_translated(db: Database) -> None:
    with pytest.raises(QueryError) as caught:
        await db.execute("SELECT * FROM no_such_table")
    assert caught.value.sqlstate == "42P01"
    assert "no_such_table" in str(caught.value)
    assert not isinstance(caught.value, DatabaseUnavailable)


async def test_lost_connection_is_database_unavailable(db: Database) -> None:
    async with db.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        await db.execute("SELECT pg_terminate_backend($1)", backend)
        with trio.fail_after(5), pytest.raises(DatabaseUnavailable) as caught:
            await conn.fetchval("SELECT 1")
        assert "\n" not in str(caught.value)
    # The pool replaces the dead connection.
    with trio.fail_after(5):
        assert await db.fetchval("SELECT 1") == 1


async def test_listen_receives_notifications(db: Database) -> None:
    with trio.fail_after(10):
        async with db.listen("halt_switch") as notifications:
            await db.notify("halt_switch", "halt")
            await db.notify("halt_switch", "resume")
            assert await notifications.receive() == "halt"
            assert await notifications.receive() == "resume"


async def test_listen_reports_a_lost_connection(db: Database) -> None:
    with trio.fail_after(10):
        async with db.listen("halt_switch") as notifications:
            backend = await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
                "AND datname = current_database()"
            )
            assert backend is not None
            await db.execute("SELECT pg_terminate_backend($1)", backend)
            with pytest.raises(DatabaseUnavailable, match="halt_switch"):
                await notifications.receive()


async def test_database_errors_are_spreadwatch_errors(db: Database) -> None:
    with pytest.raises(DatabaseError):
        await db.fetchval("SELECT 1/0")


def test_servers_are_named_without_passwords() -> None:
    assert describe_url("postgresql://app:s3cret@db.example:6543/trading") == (
        "PostgreSQL at db.example:6543 (database trading, user app)"
    )
    assert describe_url("postgresql://postgres@/spreadwatch?host=/run/pg&port=5432") == (
        "PostgreSQL at socket /run/pg (database spreadwatch, user postgres)"
    )
    assert "s3cret" not in describe_url("postgresql://app:s3cret@[::1]:5432/x")
