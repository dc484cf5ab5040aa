"""Graceful shutdown (issue 7): SIGTERM to a running engine in the middle of an exit, then a
restart. No order is lost, none is sent twice, the audit trail is complete, the exit status is 0.

The engine runs as a real process (``spreadwatch run``) against the simulator on the real clock
and a fresh embedded database. The scenario (``live_b_restart.toml``) starts past the stop, so
the exit order goes out as soon as the spread is watched; it rests unfilled for 240 market
seconds, then fills. The simulator holds back its answer to the placement (the order is placed,
the engine has not heard so), and SIGTERM lands while the engine waits for it: the stopping
engine must still take the answer and record the broker's id (a known state), flush its audit
records, stop its database and exit 0. The restarted engine resumes that order by its id and
follows it to the fill.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sys
from decimal import Decimal

import pytest
import trio

from engine.scenario_run import seed_trades
from sim.server import SimHandle, serve_simulator
from storage import apply_migrations, open_database
from tests.system.live import load, sim_orders, wait_for
from tests.system.test_live_safety import (
    BUDGET,
    Wire,
    engine_env,
    engine_process,
    events,
    holdings,
    logged,
    scratch_dir,
    trade_closed,
    wire,
)

__all__ = ["wire"]  # the fixture, imported for its side of the simulator's wire

pytestmark = pytest.mark.system


async def test_sigterm_mid_exit_records_the_answer_exits_0_and_the_restart_follows_the_order(
    wire: Wire,
) -> None:
    scenario = load("live_b_restart.toml")
    wire.hold_placements = True
    with trio.fail_after(BUDGET), scratch_dir() as scratch:
        data_dir = scratch / "pgdata"
        log_path = scratch / "engine.log"
        async with open_database(None, data_dir=data_dir) as db, trio.open_nursery() as nursery:
            await apply_migrations(db)
            handle: SimHandle = await nursery.start(
                lambda task_status: serve_simulator(scenario, task_status=task_status)
            )
            (trade_id,) = await seed_trades(db, scenario, opened_at=handle.clock.now())
            env = engine_env(handle, data_dir) | {"SPREADWATCH_HTTP__PORT": "0"}

            async with engine_process(env, log_path) as first:
                with trio.fail_after(40):
                    await wire.held.wait()  # the order is at the broker, its answer held
                first.send_signal(signal.SIGTERM)
                await wait_for(
                    lambda: bool(logged(log_path, "engine.stopping")),
                    timeout=10,
                    what="the engine to begin stopping",
                )
                wire.release.set()  # the answer arrives while the engine stops
                with trio.fail_after(25):
                    await first.wait()
            first_log = log_path.read_text()
            assert first.returncode == 0, first_log
            (stopped,) = logged(log_path, "engine.stopped")
            (order,) = sim_orders(handle)
            (recorded,) = await db.fetch("SELECT * FROM orders")
            decision = await db.fetchrow(
                "SELECT * FROM decisions WHERE decision_id = $1", recorded["decision_id"]
            )

            async with engine_process(env, log_path) as second:
                await wait_for(
                    lambda: bool(logged(log_path, "order_router.resumed_order")),
                    timeout=30,
                    what="the restarted engine to resume the order",
                )
                await wait_for(
                    lambda: trade_closed(db, trade_id), timeout=40, what="the trade to close"
                )
                second.send_signal(signal.SIGTERM)
                with trio.fail_after(25):
                    await second.wait()
            assert second.returncode == 0, log_path.read_text()
            trade = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
            (after,) = await db.fetch("SELECT * FROM orders")
            resumed = await events(db, "order_router.order_resumed")
            orders = sim_orders(handle)
            # `spreadwatch tail` over what the two engines really wrote, and a broken line.
            with log_path.open("a") as log:
                log.write('{"ts": "broken\n')
            trade_lines = await tail(
                log_path, "--trade", str(trade_id), "--event", "order_router.*"
            )
            stops = await tail(log_path, "--event", "engine.stop*")
            stopped_json = await tail(log_path, "--json", "--event", "engine.stopped")
            nursery.cancel_scope.cancel()

    # The first engine stopped in a known state: the broker's answer, which arrived after
    # SIGTERM, is recorded (not a SUBMITTED order the next start would have to search for).
    assert recorded["broker_order_id"] == str(order.id), first_log
    assert recorded["status"] in {"PENDING", "OPEN"}
    assert recorded["client_order_id"] == order.tag
    assert stopped["seconds"] < 20
    # The audit trail of the first engine is complete: the decision that sent the order is
    # in the database (flushed on the way out), with the rule that fired.
    assert decision is not None and decision["kind"] == "EXIT" and decision["rule"] == "stop_loss"
    # One order ever reached the broker; the restart followed it (by the id the first engine
    # recorded) to its fill, and the trade closed with the P&L of that fill.
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    assert [e["client_order_id"] for e in resumed] == [order.tag]
    assert order.status == "filled" and order.exec_quantity == 2
    assert after["status"] == "FILLED" and after["broker_order_id"] == str(order.id)
    assert trade is not None and trade["status"] == "CLOSED"
    assert trade["realized_pnl"] == (Decimal("1.30") - order.avg_fill_price) * 2 * 100
    assert not any(s.startswith("SPY2512") for s in holdings(handle))
    # tail: one readable line per event, filtered by trade and event glob; malformed lines are
    # shown as they are; --json passes the kept lines through unchanged.
    assert [line.split()[3] for line in trade_lines[:1]] == ["order_router.routed"]
    assert any("order_router.resumed_order" in line for line in trade_lines)
    assert trade_lines[-1] == '{"ts": "broken'
    assert all("order_router." in line for line in trade_lines[:-1]), trade_lines
    assert [line.split()[3] for line in stops if not line.startswith("{")] == [
        "engine.stopping",
        "engine.stopped",
        "engine.stopping",
        "engine.stopped",
    ]
    assert stops[-1] == '{"ts": "broken'
    assert stopped_json[-1] == '{"ts": "broken'
    assert [json.loads(line)["event"] for line in stopped_json[:-1]] == ["engine.stopped"] * 2


async def tail(log_path: pathlib.Path, *flags: str) -> list[str]:
    done = await trio.run_process(
        [sys.executable, "-m", "engine.cli", "tail", str(log_path), "--color", "never", *flags],
        capture_stdout=True,
        check=True,
    )
    return done.stdout.decode().splitlines()
