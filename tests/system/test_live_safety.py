"""System tests: the safety of live order routing (issue 5, "Must show").

Each test runs the simulator and the whole engine over real HTTP and WebSockets on a fresh
embedded database, on the real clock, and asserts on the **simulator's** record of what it
received (``sim_orders``) and on the engine's database:

- an engine killed (SIGKILL) right after sending an exit order, then restarted, finds the order
  by its tag and follows it to its fill; no second order is ever sent;
- two trades on the same strikes, one stopped: one order for exactly that trade's quantity,
  the other trade and its contracts untouched;
- a burst of thirty stops at once stays within the broker's rate limits (no 429) and every trade
  gets exactly one order, filled;
- the halt switch holds every order back within a second of being thrown (decisions recorded,
  intents declined) and resume releases the exit; an operator's close sends one MANUAL order
  for a trade no rule would exit.

The same burst also runs against Tradier's *sandbox* limits (60 reads a minute), with the
engine told so (``broker.read_rate_limit = 60``); and a close requested while halted goes out
on resume (the watcher keeps an operator's close until an order for it fills).

What the simulator answered is seen at its ASGI boundary (:class:`Wire`, wrapped around the app
``serve_simulator`` builds): it counts answers by status, and can hold back the answer to an
order placement (the order is placed, the engine does not hear so) until the test lets it go.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import trio

import sim.server
from engine.scenario_run import seed_trades
from sim.server import SimHandle, serve_simulator
from storage import Database, apply_migrations, open_database
from storage.control import request_close, set_halted
from tests.system.live import Live, live_engine, load, sim_orders, wait_for

__all__: list[str] = []

pytestmark = pytest.mark.system

REPO = pathlib.Path(__file__).resolve().parents[2]
BUDGET = 90.0  # real seconds per test, start-up included: generous, the machine is shared


# --------------------------------------------------------------------------- the wire


class Answer(msgspec.Struct, frozen=True):
    method: str
    path: str
    status: int
    used: int | None  # X-Ratelimit-Used: requests of its group in the current window
    allowed: int | None  # X-Ratelimit-Allowed


class Wire:
    """The simulator's HTTP answers as they leave it (:class:`Answer` each), and an optional
    hold on the answer to order placements (``hold_placements``): the order takes effect at the
    broker, the answer waits until ``release`` is set."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.hold_placements = False
        self.held = trio.Event()
        self.release = trio.Event()

    def wrap(self, app: Any) -> Any:
        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            method, path = scope["method"], scope["path"]

            async def answer(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                    used, allowed = (headers.get(f"x-ratelimit-{h}") for h in ("used", "allowed"))
                    self.answers.append(
                        Answer(
                            method=method,
                            path=path,
                            status=message["status"],
                            used=None if used is None else int(used),
                            allowed=None if allowed is None else int(allowed),
                        )
                    )
                    if self.hold_placements and method == "POST" and path.endswith("/orders"):
                        self.held.set()
                        await self.release.wait()
                await send(message)

            await app(scope, receive, answer)

        return wrapped


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Every simulator started in this test serves through one :class:`Wire`."""
    seen = Wire()
    make_app = sim.server.make_app
    monkeypatch.setattr(sim.server, "make_app", lambda model: seen.wrap(make_app(model)))
    return seen


# --------------------------------------------------------------------------- helpers


async def exit_decisions(db: Database, trade_id: int) -> int:
    count = await db.fetchval(
        "SELECT count(*) FROM decisions WHERE trade_id = $1 AND kind IN ('EXIT', 'PARTIAL_EXIT')",
        trade_id,
    )
    return int(count)


async def events(db: Database, kind: str) -> list[Any]:
    return await db.fetch("SELECT * FROM events WHERE kind = $1 ORDER BY recorded_at", kind)


def log_records(text: str) -> list[dict[str, Any]]:
    """The engine's JSON log lines in ``text`` (anything else is skipped)."""
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                records.append(record)
    return records


def holdings(live_sim: SimHandle) -> dict[str, int]:
    return {h.symbol: h.quantity for h in live_sim.broker.holdings.values() if h.quantity}


async def watching(db: Database, trade_id: int) -> bool:
    """The trade's watcher has evaluated it on quotes (its first sampled snapshot is written
    on its first evaluation that had a mark)."""
    count = await db.fetchval(
        "SELECT count(*) FROM decisions"
        " WHERE trade_id = $1 AND kind = 'SNAPSHOT' AND mark IS NOT NULL",
        trade_id,
    )
    return bool(count)


async def trade_closed(db: Database, trade_id: int) -> bool:
    status = await db.fetchval("SELECT status FROM trades WHERE trade_id = $1", trade_id)
    return bool(status == "CLOSED")


async def closed(live: Live, trade_id: int) -> bool:
    return await trade_closed(live.db, trade_id)


# --------------------------------------------------------------------------- 1. kill and restart


@contextlib.contextmanager
def scratch_dir() -> Iterator[pathlib.Path]:
    """A directory outside pytest's tmp tree (the embedded server may run as another user,
    and a concurrent pytest run chmods its tmp tree)."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="spreadwatch-live-b-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def engine_env(handle: SimHandle, data_dir: pathlib.Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env.update(
        SPREADWATCH_BROKER__KIND="sim",
        SPREADWATCH_BROKER__REST_URL=handle.rest_url,
        SPREADWATCH_BROKER__MARKET_STREAM_URL=handle.market_ws_url,
        SPREADWATCH_BROKER__ACCOUNT_STREAM_URL=handle.account_ws_url,
        TRADIER_TOKEN=handle.token,
        TRADIER_ACCOUNT_ID=handle.account_id,
        SPREADWATCH_DATABASE__DATA_DIR=str(data_dir),
    )
    return env


@contextlib.asynccontextmanager
async def engine_process(
    env: dict[str, str], log_path: pathlib.Path
) -> AsyncIterator[trio.Process]:
    """``spreadwatch run`` as a process, its output appended to ``log_path``. Stopped with
    SIGTERM on the way out (SIGKILL if it does not stop within 10 s), unless already dead."""
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine.cli", "run"],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def logged(log_path: pathlib.Path, event: str) -> list[dict[str, Any]]:
    return [r for r in log_records(log_path.read_text(errors="replace")) if r["event"] == event]


@pytest.mark.parametrize("kill_when", ["before_the_answer", "after_acceptance"])
async def test_an_engine_killed_after_sending_finds_its_order_by_tag_and_sends_no_second(
    wire: Wire, kill_when: str
) -> None:
    """SIGKILL right after an exit order was sent, then ``spreadwatch run`` again: the order is
    found at the broker (by its tag when the engine never heard the answer; by the broker id
    it recorded otherwise), followed to its fill, and the trade closes. One order in all.

    ``before_the_answer``: the simulator places the order and holds its answer; the engine is
    killed while waiting for it, so its database says SUBMITTED with no broker id.
    ``after_acceptance``: killed once the broker id is recorded (status PENDING or OPEN)."""
    scenario = load("live_b_restart.toml")
    wire.hold_placements = kill_when == "before_the_answer"
    with trio.fail_after(BUDGET), scratch_dir() as scratch:
        data_dir = scratch / "pgdata"
        log_path = scratch / "engine.log"
        async with open_database(None, data_dir=data_dir) as db, trio.open_nursery() as nursery:
            await apply_migrations(db)
            handle: SimHandle = await nursery.start(
                lambda task_status: serve_simulator(scenario, task_status=task_status)
            )
            (trade_id,) = await seed_trades(db, scenario, opened_at=handle.clock.now())
            env = engine_env(handle, data_dir)

            def placed() -> bool:
                return bool(sim_orders(handle))

            async def accepted() -> bool:
                rows = await db.fetch("SELECT broker_order_id FROM orders")
                return bool(rows) and rows[0]["broker_order_id"] is not None

            async with engine_process(env, log_path) as first:
                await wait_for(placed, timeout=40, what="the first engine's exit order")
                if kill_when == "after_acceptance":
                    await wait_for(accepted, timeout=10, what="the order's broker id recorded")
                first.kill()
                await first.wait()
            assert first.returncode == -9, log_path.read_text()
            wire.release.set()
            (before,) = await db.fetch("SELECT * FROM orders")
            (order,) = sim_orders(handle)
            assert order.status in {"pending", "open"}, "the order must outlive the first engine"

            async with engine_process(env, log_path) as second:
                await wait_for(
                    lambda: bool(logged(log_path, "order_router.resumed_order")),
                    timeout=30,
                    what="the restarted engine to resume the order",
                )
                status_when_resumed = order.status
                await wait_for(
                    lambda: trade_closed(db, trade_id), timeout=40, what="the trade to close"
                )
                assert second.returncode is None, "the restarted engine must still run"
            trade = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
            (after,) = await db.fetch("SELECT * FROM orders")
            resumed_events = await events(db, "order_router.order_resumed")
            resumed_logs = logged(log_path, "order_router.resumed_order")
            orders = sim_orders(handle)
            nursery.cancel_scope.cancel()

    # The first engine recorded the order before it was sent, and died before (or after) it
    # heard the broker's answer.
    if kill_when == "before_the_answer":
        assert before["status"] == "SUBMITTED" and before["broker_order_id"] is None
    else:
        assert before["status"] in {"PENDING", "OPEN"}
        assert before["broker_order_id"] == str(order.id)
    # Exactly one order ever reached the broker, and it is the one the engine recorded.
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    assert orders[0] is order
    assert order.tag is not None and order.tag.startswith(f"sw-{trade_id}-")
    assert order.tag == before["client_order_id"]
    assert {(leg.option_symbol, leg.side, leg.quantity) for leg in order.legs} == {
        ("SPY251219P00670000", "buy_to_close", 2),
        ("SPY251219P00665000", "sell_to_close", 2),
    }
    assert not order.modifications, "the plan walks no rungs; a resumed order is only followed"
    # The restarted engine found it (the resume event names the broker's id) while it still
    # worked, and followed it to the fill.
    (resumed,) = resumed_logs
    assert resumed["client_order_id"] == order.tag
    assert resumed["broker_order_id"] == str(order.id)
    assert status_when_resumed == "open" and resumed["status"] == "OPEN"
    assert [e["client_order_id"] for e in resumed_events] == [order.tag]
    assert order.status == "filled" and order.exec_quantity == 2
    assert after["broker_order_id"] == str(order.id)
    assert after["status"] == "FILLED" and after["filled_quantity"] == 2
    assert after["avg_fill_price"] == order.avg_fill_price
    assert trade is not None
    assert trade["status"] == "CLOSED" and trade["close_reason"] == "STOP_LOSS"
    assert trade["realized_pnl"] == (Decimal("1.30") - order.avg_fill_price) * 2 * 100
    assert not any(s.startswith("SPY2512") for s in holdings(handle))


# --------------------------------------------------------------------------- 2. shared strikes


async def test_two_trades_on_the_same_strikes_only_the_stopped_one_is_closed() -> None:
    """T1 (2 spreads, stopped) and T2 (1 spread, no rule fires) hold the same 670/665 legs; the
    broker holds 3 of each. One order, for exactly T1's 2, reaches the broker; T1 closes; T2
    stays OPEN with 1, and the broker (and the engine's mirror of it) still holds 1 of each."""
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_b_same_strikes.toml")) as live:
            t1, t2 = live.trade_ids

            async def mirrored_after_the_fill() -> bool:
                rows = await live.db.fetch(
                    "SELECT symbol, side, quantity FROM portfolio_positions WHERE account = $1",
                    live.sim.account_id,
                )
                return {(r["symbol"], r["side"], r["quantity"]) for r in rows} == {
                    ("SPY251219P00670000", "short", 1),
                    ("SPY251219P00665000", "long", 1),
                }

            await wait_for(lambda: closed(live, t1), timeout=60, what="T1 to close")
            await wait_for(mirrored_after_the_fill, timeout=20, what="the mirror to re-read")
            trade1, trade2 = await live.trade(t1), await live.trade(t2)
            orders = sim_orders(live.sim)
            db_orders = await live.orders()
            t2_findings = await live.db.fetch(
                "SELECT kind FROM events WHERE trade_id = $1 AND level <> 'INFO'", t2
            )
            t2_exits = await exit_decisions(live.db, t2)

    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.tag is not None and order.tag.startswith(f"sw-{t1}-")
    assert {(leg.option_symbol, leg.side, leg.quantity) for leg in order.legs} == {
        ("SPY251219P00670000", "buy_to_close", 2),
        ("SPY251219P00665000", "sell_to_close", 2),
    }
    assert order.status == "filled" and order.exec_quantity == 2
    (db_order,) = db_orders
    assert db_order["trade_id"] == t1 and db_order["quantity"] == 2
    assert trade1["status"] == "CLOSED" and trade1["quantity"] == 0
    assert trade1["close_reason"] == "STOP_LOSS"
    assert trade1["realized_pnl"] == (Decimal("1.30") - order.avg_fill_price) * 2 * 100
    # T2: untouched, not mistaken for a phantom or out of sync after T1's legs went.
    assert trade2["status"] == "OPEN" and trade2["quantity"] == 1
    assert trade2["close_reason"] is None and trade2["realized_pnl"] is None
    assert t2_exits == 0 and not t2_findings, (t2_exits, [r["kind"] for r in t2_findings])
    assert holdings(live.sim) == {"SPY251219P00670000": -1, "SPY251219P00665000": 1}


# --------------------------------------------------------------------------- 3. rate limits


def rate_group(answer: Answer) -> str | None:
    """The simulator's rate-limit group of a request (as ``sim.server`` counts them)."""
    if not answer.path.startswith("/v1/"):
        return None
    if answer.path.startswith("/v1/markets/"):
        return "market_data"
    return "trading" if answer.method != "GET" and "/orders" in answer.path else "standard"


def rate_usage(answers: list[Answer]) -> dict[str, tuple[int, int, int | None]]:
    """Per group: requests in all, the most used in one window, and the window's allowance."""
    usage: dict[str, tuple[int, int, int | None]] = {}
    for answer in answers:
        group = rate_group(answer)
        if group is None:
            continue
        count, peak, allowed = usage.get(group, (0, 0, None))
        usage[group] = (count + 1, max(peak, answer.used or 0), answer.allowed or allowed)
    return usage


@pytest.mark.parametrize(
    "limits",
    [
        "live",
        "sandbox",
    ],
)
async def test_a_burst_of_thirty_stops_stays_within_the_rate_limits(
    wire: Wire, limits: str
) -> None:
    """Thirty spreads stopped by one fast gap, against Tradier's rate limits (live: 120/120/60
    per minute; sandbox: 60/60/60): the broker never answers 429, every trade gets exactly one
    order, and every order fills."""
    scenario = load("live_b_burst.toml")
    scenario = msgspec.structs.replace(
        scenario, broker=msgspec.structs.replace(scenario.broker, rate_limits=limits)
    )
    with trio.fail_after(BUDGET):
        # Told the sandbox's read limit (broker.read_rate_limit), as the README says to.
        reads = {"read_rate_limit": 60} if limits == "sandbox" else {}
        async with live_engine(scenario, broker=reads) as live:
            trade_ids = live.trade_ids
            assert len(trade_ids) == 30

            async def all_closed() -> bool:
                count = await live.db.fetchval(
                    "SELECT count(*) FROM trades WHERE status = 'CLOSED' AND trade_id = ANY($1)",
                    trade_ids,
                )
                return bool(count == len(trade_ids))

            await wait_for(all_closed, timeout=75, what="all thirty trades to close")
            started = min(o.create_date for o in sim_orders(live.sim))
            trades = await live.db.fetch(
                "SELECT * FROM trades WHERE trade_id = ANY($1) ORDER BY trade_id", trade_ids
            )
            db_orders = await live.orders()
            orders = sim_orders(live.sim)
            answers = list(wire.answers)

    refused = [a for a in answers if a.status == 429]
    usage = rate_usage(answers)
    last_fill = max(f.at for o in orders for f in o.fills)
    print(  # the figures, for the report (pytest -s)
        f"burst: {len(orders)} orders; requests (all, peak in one window, allowed) {usage}; "
        f"{sum(len(o.modifications) for o in orders)} re-prices, "
        f"first order to last fill {(last_fill - started).total_seconds():.1f} market s"
    )
    assert not refused, f"{len(refused)} answers were 429: {refused[:5]}"
    # The burst pressed the trading limit: more requests than one window allows, and more in
    # one window than the engine's bucket lets go at once (half the limit), so its pacing is
    # what kept the broker from refusing. Every trading request was a placement or a re-price
    # (a re-price may race its order's fill and be refused as final): nothing was cancelled.
    total, peak, allowed = usage["trading"]
    assert allowed == 60 and total > allowed and peak > allowed // 2, usage
    trading = [a for a in answers if rate_group(a) == "trading"]
    assert {a.method for a in trading} == {"POST", "PUT"}, {a.method for a in trading}
    assert sum(a.method == "POST" for a in trading) == len(orders)
    repriced = sum(a.method == "PUT" and a.status == 200 for a in trading)
    assert repriced == sum(len(o.modifications) for o in orders)
    by_trade: dict[int, list[Any]] = {}
    for order in orders:
        assert order.tag is not None and order.tag.startswith("sw-"), order.tag
        by_trade.setdefault(int(order.tag.split("-")[1]), []).append(order)
    assert sorted(by_trade) == sorted(trade_ids)
    assert all(len(sent) == 1 for sent in by_trade.values()), {
        t: [o.id for o in sent] for t, sent in by_trade.items() if len(sent) > 1
    }
    assert all(o.status == "filled" and o.exec_quantity == 1 for o in orders)
    assert len(db_orders) == 30
    assert all(row["status"] == "FILLED" for row in db_orders)
    assert {row["broker_order_id"] for row in db_orders} == {str(o.id) for o in orders}
    assert all(t["close_reason"] == "STOP_LOSS" and t["quantity"] == 0 for t in trades)
    assert not any(h.startswith("SPY2512") for h in holdings(live.sim))


# --------------------------------------------------------------------------- 4. halt and close


async def test_a_halt_holds_every_order_within_a_second_and_resume_releases_the_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Halted while SPY is still far from the stop: the stop then fires again and again (each
    decision recorded) and every intent is declined, no order reaches the broker; the router
    was halted within a second of the switch. Resumed: one order goes out and fills."""
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_b_halt.toml")) as live:
            (trade_id,) = live.trade_ids
            account = live.sim.account_id
            halt, changed = await set_halted(live.db, account, True, "test: halt", changed_by="t")
            switched = trio.current_time()
            assert changed and halt.halted and halt.changed_at is not None

            async def router_halted() -> bool:
                return bool(await events(live.db, "order_router.halted"))

            await wait_for(router_halted, timeout=5, what="the router to record the halt")
            seen_after = trio.current_time() - switched
            (halted,) = await events(live.db, "order_router.halted")
            # The halt must be in place before the stop could fire (SPY is at 680 until 4m).
            assert await exit_decisions(live.db, trade_id) == 0, "the scenario is too fast"

            async def declined_twice() -> bool:
                return await exit_decisions(live.db, trade_id) >= 3

            await wait_for(declined_twice, timeout=30, what="three exit decisions while halted")
            orders_while_halted = list(sim_orders(live.sim))
            db_orders_while_halted = await live.orders()
            decisions_while_halted = await exit_decisions(live.db, trade_id)

            resume, changed = await set_halted(
                live.db, account, False, "test: resume", changed_by="t"
            )
            assert changed and not resume.halted
            await wait_for(lambda: closed(live, trade_id), timeout=30, what="the trade to close")
            trade = await live.trade(trade_id)
            orders = sim_orders(live.sim)
            resumed = await events(live.db, "order_router.resumed")
    logs = log_records(capsys.readouterr().out)

    # Both stamps are the database server's clock: the switch's transaction, the router's
    # event row (written through the audit writer, so this bounds the halt's latency above).
    latency = (halted["recorded_at"] - halt.changed_at).total_seconds()
    print(f"halt: recorded by the router {latency:.3f} s after the switch, seen {seen_after:.3f} s")
    assert latency < 1.0 and seen_after < 1.0, (latency, seen_after)
    assert halted["message"] == "test: halt"
    # While halted: decisions recorded, every intent declined for the halt, nothing sent.
    assert decisions_while_halted >= 3
    assert orders_while_halted == [] and db_orders_while_halted == []
    declines = [
        r for r in logs if r["event"] == "order_router.declined" and r["trade_id"] == trade_id
    ]
    assert len(declines) >= 3 and {r["reason"] for r in declines} == {"halted: no new orders"}
    # Resumed: exactly one order, the stop's, filled; the trade closed by it.
    assert [r["message"] for r in resumed][-1] == "test: resume"
    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.tag is not None and order.tag.startswith(f"sw-{trade_id}-")
    assert order.status == "filled" and order.exec_quantity == 2
    assert trade["close_reason"] == "STOP_LOSS" and trade["quantity"] == 0


async def test_an_operators_close_sends_one_manual_order_for_that_trade_only() -> None:
    """``request_close`` on a trade no rule would exit: one order, for that trade's whole
    quantity, reason ``manual``; the trade closes MANUAL; the other trade is never touched."""
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_b_close.toml")) as live:
            t1, t2 = live.trade_ids
            await wait_for(lambda: watching(live.db, t1), timeout=20, what="quotes for T1")
            request, new = await request_close(
                live.db, live.sim.account_id, t1, "test: close", requested_by="t"
            )
            assert new and request.trade_id == t1
            await wait_for(lambda: closed(live, t1), timeout=30, what="the trade to close")
            trade1, trade2 = await live.trade(t1), await live.trade(t2)
            orders = sim_orders(live.sim)
            db_orders = await live.orders()
            decisions = await live.db.fetch(
                "SELECT trade_id, rule FROM decisions WHERE kind IN ('EXIT', 'PARTIAL_EXIT')"
            )
            pending = await live.db.fetchval(
                "SELECT count(*) FROM control_requests WHERE consumed_at IS NULL"
            )

    assert len(orders) == 1, [(o.id, o.tag, o.status) for o in orders]
    (order,) = orders
    assert order.tag is not None and order.tag.startswith(f"sw-{t1}-")
    assert order.type == "debit" and order.status == "filled" and order.exec_quantity == 2
    assert {(leg.option_symbol, leg.side, leg.quantity) for leg in order.legs} == {
        ("SPY251219P00670000", "buy_to_close", 2),
        ("SPY251219P00665000", "sell_to_close", 2),
    }
    (db_order,) = db_orders
    assert db_order["trade_id"] == t1 and db_order["reason"] == "manual"
    assert db_order["status"] == "FILLED" and db_order["client_order_id"] == order.tag
    assert [(d["trade_id"], d["rule"]) for d in decisions] == [(t1, "manual")]
    assert pending == 0, "the request is consumed once served"
    assert trade1["close_reason"] == "MANUAL" and trade1["quantity"] == 0
    assert trade1["realized_pnl"] == (Decimal("1.30") - order.avg_fill_price) * 2 * 100
    assert trade2["status"] == "OPEN" and trade2["quantity"] == 1
    assert holdings(live.sim) == {"SPY251219P00660000": -1, "SPY251219P00655000": 1}


async def test_a_close_requested_while_halted_goes_out_on_resume() -> None:
    """The operator halts, asks to close a trade, and resumes: the close request must stand
    through the halt (it was consumed and declined while halted) and go out on resume."""
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_b_close.toml")) as live:
            t1, _ = live.trade_ids
            account = live.sim.account_id
            await wait_for(lambda: watching(live.db, t1), timeout=20, what="quotes for T1")
            await set_halted(live.db, account, True, "test: halt", changed_by="t")

            async def router_says(kind: str) -> bool:
                return bool(await events(live.db, kind))

            await wait_for(lambda: router_says("order_router.halted"), timeout=5, what="halt")
            await request_close(live.db, account, t1, "test: close", requested_by="t")

            async def decided() -> bool:
                return await exit_decisions(live.db, t1) >= 1

            await wait_for(decided, timeout=10, what="the manual exit decided (and declined)")
            assert sim_orders(live.sim) == []
            await set_halted(live.db, account, False, "test: resume", changed_by="t")
            await wait_for(lambda: closed(live, t1), timeout=15, what="the close after resume")
            (order,) = sim_orders(live.sim)
            assert order.tag is not None and order.tag.startswith(f"sw-{t1}-")
            assert (await live.trade(t1))["close_reason"] == "MANUAL"
