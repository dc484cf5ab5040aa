"""The operator's switches in PostgreSQL (storage/control.py), and the ``halt``, ``resume`` and
``close`` commands run as a user runs them (a subprocess) against the test database.

Real clock throughout (DESIGN section 4)."""

from __future__ import annotations

import decimal
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from storage import Database, apply_migrations, queries
from storage.control import (
    CONTROL_CHANNEL,
    CloseRefused,
    get_halted,
    request_close,
    set_halted,
    take_close_requests,
)

pytestmark = pytest.mark.storage

ACCOUNT = "VA000001"
OTHER = "VA000002"
LEGS = [
    {"symbol": "SPY251219P00400000", "side": "short", "quantity": 1},
    {"symbol": "SPY251219P00395000", "side": "long", "quantity": 1},
]


@pytest.fixture
async def schema(db: Database) -> AsyncIterator[Database]:
    await apply_migrations(db)
    yield db


async def open_trade(db: Database, *, account: str = ACCOUNT, managed: bool = True) -> int:
    return await queries.insert_trade(
        db,
        account=account,
        underlying="SPY",
        strategy="bull_put_credit",
        legs=LEGS,
        quantity=2,
        entry_price=decimal.Decimal("1.25"),
        origin="ENGINE",
        managed=managed,
    )


async def close_trade(db: Database, trade_id: int) -> None:
    await db.execute(
        """
        UPDATE trades SET status = 'CLOSED', quantity = 0, closed_at = now(),
                          close_reason = 'PROFIT_TARGET'
        WHERE trade_id = $1
        """,
        trade_id,
    )


async def control_events(db: Database) -> list[tuple[str, int | None, str]]:
    rows = await db.fetch(
        "SELECT kind, trade_id, message FROM events WHERE kind LIKE 'control.%' "
        "ORDER BY occurred_at, recorded_at"
    )
    return [(r["kind"], r["trade_id"], r["message"]) for r in rows]


# ----------------------------------------------------------------------------- the halt switch


async def test_an_account_never_halted_reads_not_halted(schema: Database) -> None:
    state = await get_halted(schema, ACCOUNT)
    assert (state.halted, state.reason, state.changed_at, state.changed_by) == (
        False,
        None,
        None,
        None,
    )


async def test_halt_and_resume_change_the_state_once_each(schema: Database) -> None:
    state, changed = await set_halted(schema, ACCOUNT, True, "maintenance", changed_by="ann@h")
    assert changed and state.halted
    assert (state.reason, state.changed_by) == ("maintenance", "ann@h")
    assert state.changed_at is not None
    assert await get_halted(schema, ACCOUNT) == state
    assert not (await get_halted(schema, OTHER)).halted  # per account

    # Halting again changes nothing: the first reason and author stay.
    again, changed = await set_halted(schema, ACCOUNT, True, "again", changed_by="bob@h")
    assert not changed
    assert again == state

    resumed, changed = await set_halted(schema, ACCOUNT, False, "done", changed_by="bob@h")
    assert changed and not resumed.halted
    assert (resumed.reason, resumed.changed_by) == ("done", "bob@h")
    _, changed = await set_halted(schema, ACCOUNT, False, "twice", changed_by="bob@h")
    assert not changed

    assert await control_events(schema) == [
        ("control.halted", None, "maintenance"),
        ("control.resumed", None, "done"),
    ]


async def test_resuming_an_account_never_halted_writes_nothing(schema: Database) -> None:
    state, changed = await set_halted(schema, ACCOUNT, False, "just in case", changed_by="a@h")
    assert not changed and not state.halted
    assert await schema.fetchval("SELECT count(*) FROM engine_control") == 0
    assert await control_events(schema) == []


async def test_a_halt_notifies_after_commit_and_a_no_op_does_not(schema: Database) -> None:
    async with schema.listen(CONTROL_CHANNEL) as notifications:
        await set_halted(schema, ACCOUNT, True, "maintenance", changed_by="a@h")
        with trio.fail_after(1):
            assert await notifications.receive() == ACCOUNT
        # Woken by the notification, a reader sees the new state: they were one transaction.
        assert (await get_halted(schema, ACCOUNT)).halted

        await set_halted(schema, ACCOUNT, True, "again", changed_by="a@h")  # no change
        await schema.notify(CONTROL_CHANNEL, "marker")
        with trio.fail_after(1):
            # Notifications arrive in commit order: a notification from the no-op would come
            # before the marker.
            assert await notifications.receive() == "marker"


# ----------------------------------------------------------------------------- close requests


async def test_a_close_request_is_served_once(schema: Database) -> None:
    trade_id = await open_trade(schema)
    async with schema.listen(CONTROL_CHANNEL) as notifications:
        request, created = await request_close(
            schema, ACCOUNT, trade_id, "news", requested_by="ann@h"
        )
        with trio.fail_after(1):
            assert await notifications.receive() == ACCOUNT
    assert created
    assert (request.trade_id, request.reason, request.requested_by) == (trade_id, "news", "ann@h")
    assert request.consumed_at is None

    # Asked again before the engine took it: the same request, not a second one.
    same, created = await request_close(schema, ACCOUNT, trade_id, "again", requested_by="b@h")
    assert not created and same == request

    assert await take_close_requests(schema, OTHER) == []
    (taken,) = await take_close_requests(schema, ACCOUNT)
    assert taken.request_id == request.request_id and taken.consumed_at is not None
    assert await take_close_requests(schema, ACCOUNT) == []

    # Once served, a new request is a new one.
    later, created = await request_close(schema, ACCOUNT, trade_id, "later", requested_by="a@h")
    assert created and later.request_id != request.request_id
    assert [r.request_id for r in await take_close_requests(schema, ACCOUNT)] == [later.request_id]
    assert await control_events(schema) == [
        ("control.close_requested", trade_id, "news"),
        ("control.close_requested", trade_id, "later"),
    ]


async def test_requests_are_taken_oldest_first(schema: Database) -> None:
    first, second = await open_trade(schema), await open_trade(schema)
    a, _ = await request_close(schema, ACCOUNT, second, "b", requested_by="a@h")
    b, _ = await request_close(schema, ACCOUNT, first, "a", requested_by="a@h")
    taken = await take_close_requests(schema, ACCOUNT)
    assert [r.request_id for r in taken] == [a.request_id, b.request_id]
    assert [r.trade_id for r in taken] == [second, first]


async def test_a_taker_skips_requests_another_holds_and_a_rollback_keeps_them(
    schema: Database,
) -> None:
    trade_id = await open_trade(schema)
    request, _ = await request_close(schema, ACCOUNT, trade_id, "x", requested_by="a@h")

    class HandOffFailed(Exception):
        pass

    with pytest.raises(HandOffFailed):
        async with schema.transaction() as conn:
            (held,) = await take_close_requests(conn, ACCOUNT)
            assert held.request_id == request.request_id
            with trio.fail_after(2):  # skipped, not waited for
                assert await take_close_requests(schema, ACCOUNT) == []
            raise HandOffFailed  # as if the engine crashed before handing it on

    # Rolled back: still pending, served to the next taker.
    (taken,) = await take_close_requests(schema, ACCOUNT)
    assert taken.request_id == request.request_id


async def test_concurrent_takers_share_each_request_out_once(schema: Database) -> None:
    trade_ids = [await open_trade(schema) for _ in range(6)]
    for trade_id in trade_ids:
        await request_close(schema, ACCOUNT, trade_id, "x", requested_by="a@h")
    results: list[list[int]] = []

    async def taker() -> None:
        results.append([r.trade_id for r in await take_close_requests(schema, ACCOUNT)])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(taker)
    served = [trade_id for batch in results for trade_id in batch]
    assert sorted(served) == trade_ids


async def test_closes_the_engine_cannot_do_are_refused_and_write_nothing(
    schema: Database,
) -> None:
    closed = await open_trade(schema)
    await close_trade(schema, closed)
    elsewhere = await open_trade(schema, account=OTHER)
    unmanaged = await open_trade(schema, managed=False)
    cases = [
        (999_999, r"^no trade 999999: nothing to close$"),
        (closed, rf"^trade {closed} is already CLOSED \(PROFIT_TARGET\)"),
        (elsewhere, rf"^trade {elsewhere} belongs to account {OTHER}, not {ACCOUNT}$"),
        (unmanaged, rf"^trade {unmanaged} is not managed by spreadwatch"),
    ]
    async with schema.listen(CONTROL_CHANNEL) as notifications:
        for trade_id, message in cases:
            with pytest.raises(CloseRefused, match=message):
                await request_close(schema, ACCOUNT, trade_id, "x", requested_by="a@h")
        await schema.notify(CONTROL_CHANNEL, "marker")
        with trio.fail_after(1):
            assert await notifications.receive() == "marker"  # no refusal notified
    assert await schema.fetchval("SELECT count(*) FROM control_requests") == 0
    assert await control_events(schema) == []


async def test_a_closing_trade_may_still_be_asked_to_close(schema: Database) -> None:
    trade_id = await open_trade(schema)
    await schema.execute("UPDATE trades SET status = 'CLOSING' WHERE trade_id = $1", trade_id)
    _, created = await request_close(schema, ACCOUNT, trade_id, "x", requested_by="a@h")
    assert created


# ----------------------------------------------------------------------------- the commands


def _env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env["TRADIER_ACCOUNT_ID"] = ACCOUNT
    return env


async def spreadwatch(database_url: str, *args: str) -> tuple[int, list[str], list[str]]:
    """Run ``spreadwatch ARGS`` on the test database; (exit status, stdout lines, stderr lines)."""
    with trio.fail_after(60):
        result: Any = await trio.run_process(
            [sys.executable, "-m", "engine.cli", "--database-url", database_url, *args],
            env=_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return (
        result.returncode,
        result.stdout.decode().splitlines(),
        result.stderr.decode().splitlines(),
    )


async def test_halt_and_resume_commands_migrate_write_and_say_what_they_did(
    database_url: str, db: Database
) -> None:
    # A fresh database: the first command applies the migrations itself.
    status, out, err = await spreadwatch(database_url, "halt", "--reason", "fomc day")
    assert (status, err) == (0, [])
    assert out == [f"halted {ACCOUNT}: no new orders will be sent (reason: fomc day)"]
    state = await get_halted(db, ACCOUNT)
    assert state.halted and state.reason == "fomc day"
    assert state.changed_by is not None and "@" in state.changed_by

    status, out, _ = await spreadwatch(database_url, "halt")
    assert status == 0
    (line,) = out
    assert line.startswith(f"already halted {ACCOUNT} since ")
    assert line.endswith("(reason: fomc day): nothing changed")

    status, out, _ = await spreadwatch(database_url, "resume")
    assert (status, out) == (
        0,
        [f"resumed {ACCOUNT}: new orders may be sent again (reason: manual resume)"],
    )
    assert not (await get_halted(db, ACCOUNT)).halted
    status, out, _ = await spreadwatch(database_url, "resume")
    assert (status, out) == (0, [f"{ACCOUNT} is not halted: nothing to resume"])


async def test_close_command_requests_once_and_refuses_what_it_cannot_close(
    database_url: str, db: Database
) -> None:
    await apply_migrations(db)
    trade_id = await open_trade(db)
    closed = await open_trade(db)
    await close_trade(db, closed)

    status, out, err = await spreadwatch(database_url, "close", str(trade_id), "--reason", "news")
    assert (status, err) == (0, [])
    (request_id,) = [r["request_id"] for r in await db.fetch("SELECT * FROM control_requests")]
    assert out == [
        f"close requested for trade {trade_id}: the engine will exit it "
        f"(request {request_id}, reason: news)"
    ]

    status, out, _ = await spreadwatch(database_url, "close", str(trade_id))
    assert status == 0
    (line,) = out
    assert line.startswith(f"a close of trade {trade_id} is already pending since ")
    assert line.endswith(f"(request {request_id}): nothing changed")

    for unknown, reason in ((999_999, "no trade 999999"), (closed, "already CLOSED")):
        status, out, err = await spreadwatch(database_url, "close", str(unknown))
        assert (status, out) == (1, [])
        (line,) = err
        assert line.startswith("spreadwatch: error: ") and reason in line
    assert await db.fetchval("SELECT count(*) FROM control_requests") == 1


async def test_close_while_halted_says_the_exit_waits_for_resume(
    database_url: str, db: Database
) -> None:
    await apply_migrations(db)
    trade_id = await open_trade(db)
    await set_halted(db, ACCOUNT, True, "x", changed_by="a@h")
    status, out, _ = await spreadwatch(database_url, "close", str(trade_id))
    assert status == 0
    (line,) = out
    assert line.endswith("the engine is halted, so the exit waits for `spreadwatch resume`")
