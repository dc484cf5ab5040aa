"""ControlListener against a real PostgreSQL: the operator's switches reach the engine's channel
within a second, once each, and a restarted listener restores the halt.

Real clock (DESIGN section 4): every wait has a hard ``fail_after`` budget. The database
fixtures are the storage tests' (tests/storage/conftest.py), imported here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import os
import sys
import time
from collections.abc import AsyncIterator

import pytest
import trio

from actors.control_listener import halt_command, run
from engine.errors import DatabaseUnavailable
from engine.messages import CloseTradeNow, ControlCommand, Halt, Resume
from storage import Database, apply_migrations, queries
from storage.control import CONTROL_CHANNEL, HaltState, request_close, set_halted
from tests.storage.conftest import database_url, db, server_url

__all__ = ["database_url", "db", "server_url"]  # fixtures, re-exported for pytest

ACCOUNT = "VA000001"
OTHER = "VA000002"
AT = dt.datetime(2024, 6, 10, 15, 0, tzinfo=dt.UTC)
LEGS = [
    {"symbol": "SPY251219P00400000", "side": "short", "quantity": 1},
    {"symbol": "SPY251219P00395000", "side": "long", "quantity": 1},
]
# Poll far slower than any budget below, so a pass proves the notification path.
NO_POLL = 3600.0


# ----------------------------------------------------------------------------- the pure part


def test_a_cold_start_says_the_state_whatever_it_is() -> None:
    halted = HaltState(account_id=ACCOUNT, halted=True, reason="fomc", changed_at=AT)
    assert halt_command(None, halted) == Halt(reason="fomc", requested_at=AT)
    resumed = HaltState(account_id=ACCOUNT, halted=False, reason="done", changed_at=AT)
    assert halt_command(None, resumed) == Resume(reason="done", requested_at=AT)
    never = halt_command(None, HaltState(account_id=ACCOUNT, halted=False))
    assert isinstance(never, Resume) and never.reason == "not halted"


def test_afterwards_only_a_change_is_said() -> None:
    halted = HaltState(account_id=ACCOUNT, halted=True, reason="fomc", changed_at=AT)
    resumed = HaltState(account_id=ACCOUNT, halted=False, reason="done", changed_at=AT)
    assert halt_command(halted, halted) is None
    assert halt_command(resumed, resumed) is None
    assert halt_command(resumed, halted) == Halt(reason="fomc", requested_at=AT)
    assert halt_command(halted, resumed) == Resume(reason="done", requested_at=AT)


# ----------------------------------------------------------------------------- on the database


@pytest.fixture
async def schema(db: Database) -> AsyncIterator[Database]:
    await apply_migrations(db)
    yield db


async def open_trade(db: Database) -> int:
    return await queries.insert_trade(
        db,
        account=ACCOUNT,
        underlying="SPY",
        strategy="bull_put_credit",
        legs=LEGS,
        quantity=1,
        entry_price=decimal.Decimal("1.25"),
        origin="ENGINE",
    )


async def start_listener(
    nursery: trio.Nursery, db: Database, *, poll_interval: float = NO_POLL
) -> trio.MemoryReceiveChannel[ControlCommand]:
    send, receive = trio.open_memory_channel[ControlCommand](0)
    with trio.fail_after(10):
        await nursery.start(
            functools.partial(
                run, db=db, account_id=ACCOUNT, outbox=send, poll_interval=poll_interval
            )
        )
    return receive


async def next_command(
    commands: trio.MemoryReceiveChannel[ControlCommand], budget: float = 1.0
) -> ControlCommand:
    with trio.fail_after(budget):
        return await commands.receive()


def changed_at(state: HaltState) -> dt.datetime:
    assert state.changed_at is not None  # a switch that was thrown
    return state.changed_at


async def held_by_a_taker(db: Database) -> None:
    """Wait until a taker's transaction has taken the pending request and is waiting (idle in
    its transaction) to hand it on. Read from pg_stat_activity: a probe that locked the row
    would make the taker skip it."""
    with trio.fail_after(5):
        while True:
            holders = await db.fetchval(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND state = 'idle in transaction'
                  AND query LIKE '%UPDATE control_requests SET consumed_at%'
                """
            )
            if holders == 1:
                return
            await trio.sleep(0.01)


pytestmark = pytest.mark.storage


async def test_halt_and_resume_reach_the_engine_within_a_second(schema: Database) -> None:
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        started = await next_command(commands)
        assert isinstance(started, Resume) and started.reason == "not halted"

        state, _ = await set_halted(schema, ACCOUNT, True, "fomc day", changed_by="ann@h")
        assert await next_command(commands) == Halt(
            reason="fomc day", requested_at=changed_at(state)
        )
        state, _ = await set_halted(schema, ACCOUNT, False, "over", changed_by="ann@h")
        assert await next_command(commands) == Resume(reason="over", requested_at=changed_at(state))
        nursery.cancel_scope.cancel()


async def test_no_second_halt_without_a_change_and_others_accounts_are_ignored(
    schema: Database,
) -> None:
    trade_id = await open_trade(schema)
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Resume)
        await set_halted(schema, ACCOUNT, True, "fomc", changed_by="a@h")
        assert isinstance(await next_command(commands), Halt)

        await schema.notify(CONTROL_CHANNEL, ACCOUNT)  # a wake-up with nothing changed
        await set_halted(schema, ACCOUNT, True, "again", changed_by="a@h")  # a no-op
        await set_halted(schema, OTHER, True, "theirs", changed_by="a@h")
        await set_halted(schema, OTHER, False, "theirs", changed_by="a@h")
        await request_close(schema, ACCOUNT, trade_id, "news", requested_by="a@h")
        # Everything above was committed before the close request and the listener serves
        # wake-ups in order: a second Halt (or a Resume) would arrive before the close.
        command = await next_command(commands)
        assert isinstance(command, CloseTradeNow) and command.trade_id == trade_id
        nursery.cancel_scope.cancel()


async def test_a_close_request_reaches_the_engine_once(schema: Database) -> None:
    trade_id = await open_trade(schema)
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Resume)
        request, _ = await request_close(schema, ACCOUNT, trade_id, "news", requested_by="a@h")
        assert await next_command(commands) == CloseTradeNow(
            trade_id=trade_id, reason="news", requested_at=request.requested_at
        )
        # Another wake-up must not serve it again: the next command is the halt.
        await schema.notify(CONTROL_CHANNEL, ACCOUNT)
        await set_halted(schema, ACCOUNT, True, "x", changed_by="a@h")
        assert isinstance(await next_command(commands), Halt)
        nursery.cancel_scope.cancel()
    consumed = await schema.fetchval(
        "SELECT consumed_at FROM control_requests WHERE request_id = $1", request.request_id
    )
    assert consumed is not None


async def test_a_restarted_listener_keeps_the_halt_and_serves_what_was_asked_while_down(
    schema: Database,
) -> None:
    trade_id = await open_trade(schema)
    # Thrown while no engine runs.
    state, _ = await set_halted(schema, ACCOUNT, True, "overnight", changed_by="a@h")
    await request_close(schema, ACCOUNT, trade_id, "news", requested_by="a@h")

    for incarnation in range(2):
        async with trio.open_nursery() as nursery:
            commands = await start_listener(nursery, schema)
            assert await next_command(commands) == Halt(
                reason="overnight", requested_at=changed_at(state)
            )
            if incarnation == 0:
                command = await next_command(commands)
                assert isinstance(command, CloseTradeNow) and command.trade_id == trade_id
            else:
                # Served by the first incarnation: the second goes straight to the resume.
                await set_halted(schema, ACCOUNT, False, "morning", changed_by="a@h")
                assert isinstance(await next_command(commands), Resume)
            nursery.cancel_scope.cancel()


async def test_a_restarted_listener_lifts_a_halt_resumed_while_it_was_down(
    schema: Database,
) -> None:
    await set_halted(schema, ACCOUNT, True, "x", changed_by="a@h")
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Halt)
        nursery.cancel_scope.cancel()
    await set_halted(schema, ACCOUNT, False, "resumed while down", changed_by="a@h")
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        command = await next_command(commands)
        assert isinstance(command, Resume) and command.reason == "resumed while down"
        nursery.cancel_scope.cancel()


async def test_a_request_not_handed_on_stays_pending_for_the_next_start(
    schema: Database,
) -> None:
    trade_id = await open_trade(schema)
    await request_close(schema, ACCOUNT, trade_id, "news", requested_by="a@h")
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Resume)
        await held_by_a_taker(schema)  # taken, waiting to be handed on
        nursery.cancel_scope.cancel()  # the engine dies before anyone receives it
    pending = await schema.fetchval(
        "SELECT count(*) FROM control_requests WHERE consumed_at IS NULL"
    )
    assert pending == 1
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Resume)
        command = await next_command(commands)
        assert isinstance(command, CloseTradeNow) and command.trade_id == trade_id
        nursery.cancel_scope.cancel()


async def test_the_poll_catches_a_change_whose_notification_was_lost(schema: Database) -> None:
    trade_id = await open_trade(schema)
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema, poll_interval=0.2)
        assert isinstance(await next_command(commands), Resume)
        # Written without NOTIFY, as if the notification had been lost.
        await schema.execute(
            "INSERT INTO engine_control (account, halted, reason, changed_by) "
            "VALUES ($1, true, 'silent', 'a@h')",
            ACCOUNT,
        )
        command = await next_command(commands, budget=3)
        assert isinstance(command, Halt) and command.reason == "silent"
        await schema.execute(
            "INSERT INTO control_requests (account, kind, trade_id, reason, requested_by) "
            "VALUES ($1, 'CLOSE_TRADE', $2, 'silent', 'a@h')",
            ACCOUNT,
            trade_id,
        )
        command = await next_command(commands, budget=3)
        assert isinstance(command, CloseTradeNow) and command.trade_id == trade_id
        nursery.cancel_scope.cancel()


async def test_a_lost_listening_connection_crashes_the_listener(schema: Database) -> None:
    with pytest.RaisesGroup(DatabaseUnavailable, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            commands = await start_listener(nursery, schema)
            assert isinstance(await next_command(commands), Resume)
            killed = await schema.fetchval(
                """
                SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND query ILIKE 'LISTEN%'
                """
            )
            assert killed == 1
            with trio.fail_after(5):
                await trio.sleep_forever()  # until the listener's crash cancels us


async def test_the_halt_command_reaches_a_running_listener_within_a_second(
    database_url: str, schema: Database
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env["TRADIER_ACCOUNT_ID"] = ACCOUNT
    async with trio.open_nursery() as nursery:
        commands = await start_listener(nursery, schema)
        assert isinstance(await next_command(commands), Resume)
        with trio.fail_after(60):
            result = await trio.run_process(
                [sys.executable, "-m", "engine.cli", "--database-url", database_url, "halt"],
                env=env,
                capture_stdout=True,
                check=True,
            )
        exited = time.monotonic()
        command = await next_command(commands)
        assert isinstance(command, Halt) and command.reason == "manual halt"
        assert time.monotonic() - exited < 1.0
        assert result.stdout.decode().startswith(f"halted {ACCOUNT}:")
        nursery.cancel_scope.cancel()
