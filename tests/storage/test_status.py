"""What ``spreadwatch status`` reads (storage/status.py) on a real PostgreSQL, and the command
run as a user runs it (a subprocess) against the test database. Real clock (DESIGN section 4)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
import trio

from engine import messages as m
from engine.domain.orders import ExitOrder, OrderClass
from engine.domain.spread import Leg, Spread
from engine.messages import ExitAction, OrderLeg, OrderLegSide, OrderType, TradeOrigin
from storage import Database, apply_migrations
from storage.audit import write_audit_batch
from storage.orders import PgOrderStore
from storage.status import read_status
from storage.trades import PgTradeStore

pytestmark = pytest.mark.storage

ACCOUNT = "VA000001"
OTHER = "VA000002"
SHORT = "SPY251219P00400000"
LONG = "SPY251219P00395000"
T0 = dt.datetime(2025, 12, 9, 19, 45, tzinfo=dt.UTC)


@pytest.fixture
async def schema(db: Database) -> AsyncIterator[Database]:
    await apply_migrations(db)
    yield db


def bull_put(quantity: int) -> Spread:
    return Spread.from_legs(
        [Leg.from_position(SHORT, -quantity), Leg.from_position(LONG, quantity)]
    )


async def open_trade(db: Database, *, account: str = ACCOUNT, quantity: int = 2) -> int:
    trade = await PgTradeStore(db).insert_trade(
        account_id=account,
        spread=bull_put(quantity),
        entry_price=Decimal("1.25"),
        origin=TradeOrigin.ENGINE,
        managed=True,
    )
    return trade.trade_id


def leg_quote(symbol: str, bid: str, ask: str, age_ms: int | None) -> m.QuoteSnapshot:
    return m.QuoteSnapshot(symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), age_ms=age_ms)


def decision(
    trade_id: int,
    at: dt.datetime,
    *,
    kind: m.Decision = m.Decision.HOLD,
    mark: str | None = "0.80",
    ages: tuple[int | None, int | None] = (120, 480),
) -> m.DecisionRecord:
    close = None if mark is None else Decimal(mark)
    pnl = None if close is None else Decimal("1.25") - close
    return m.DecisionRecord(
        trade_id=trade_id,
        decision=kind,
        rule=None if kind is m.Decision.HOLD else "stop_loss",
        rules_fired=() if kind is m.Decision.HOLD else ("stop_loss",),
        guard="stale" if kind is m.Decision.HELD_BY_GUARD else None,
        legs=(leg_quote(LONG, "0.40", "0.50", ages[0]), leg_quote(SHORT, "1.20", "1.30", ages[1])),
        underlying=None,
        mark_close_price=close,
        natural_close_price=None if close is None else close + Decimal("0.10"),
        pnl=pnl,
        profit_fraction=None if pnl is None else pnl / Decimal("1.25"),
        loss_fraction=None,
        quantity=2,
        rule_version="exit-rules/1",
        dry_run=False,
        at=at,
    )


async def test_no_open_trades_is_an_empty_read_at_the_database_clock(schema: Database) -> None:
    before = dt.datetime.now(dt.UTC)
    snapshot = await read_status(schema, account_id=ACCOUNT)
    assert snapshot.trades == ()
    assert abs((snapshot.taken_at - before).total_seconds()) < 60


async def test_open_and_closing_trades_with_their_latest_priced_decision(schema: Database) -> None:
    priced = await open_trade(schema)
    unpriced = await open_trade(schema, quantity=1)
    elsewhere = await open_trade(schema, account=OTHER)
    closed = await open_trade(schema)
    await schema.execute(
        "UPDATE trades SET status = 'CLOSED', quantity = 0, closed_at = now(),"
        " close_reason = 'PROFIT_TARGET' WHERE trade_id = $1",
        closed,
    )
    await write_audit_batch(
        schema,
        [
            decision(priced, T0, mark="0.80"),
            decision(
                priced,
                T0 + dt.timedelta(seconds=5),
                kind=m.Decision.HELD_BY_GUARD,
                mark="0.95",
                ages=(300, 15_000),
            ),
            # Newest, but without a mark (a leg never quoted): the guarded one above is shown.
            decision(priced, T0 + dt.timedelta(seconds=9), mark=None, ages=(100, None)),
            decision(closed, T0, mark="0.10"),
        ],
    )

    snapshot = await read_status(schema, account_id=ACCOUNT)
    assert [t.trade_id for t in snapshot.trades] == [priced, unpriced]
    shown = snapshot.trades[0]
    assert (shown.account_id, shown.strategy.value, shown.status) == (
        ACCOUNT,
        "bull_put_credit",
        "OPEN",
    )
    assert {(leg.occ, leg.side.value, leg.quantity) for leg in shown.legs} == {
        (SHORT, "short", 2),
        (LONG, "long", 2),
    }
    assert (shown.quantity, shown.opening_quantity, shown.entry_price) == (2, 2, Decimal("1.25"))
    assert shown.managed and shown.exit_plan == {} and shown.order is None
    assert shown.decision is not None
    assert shown.decision.decided_at == T0 + dt.timedelta(seconds=5)
    assert (shown.decision.kind, shown.decision.rule) == ("GUARDED", "stop_loss")
    assert (shown.decision.mark, shown.decision.pnl) == (Decimal("0.95"), Decimal("0.30"))
    assert shown.decision.quote_age_ms == 15_000  # the stalest leg
    assert snapshot.trades[1].decision is None

    everyone = await read_status(schema)
    assert [t.trade_id for t in everyone.trades] == [priced, unpriced, elsewhere]


async def test_a_leg_without_a_recorded_age_leaves_the_quote_age_unknown(
    schema: Database,
) -> None:
    trade_id = await open_trade(schema)
    await write_audit_batch(schema, [decision(trade_id, T0, ages=(None, 200))])
    (shown,) = (await read_status(schema, account_id=ACCOUNT)).trades
    assert shown.decision is not None
    assert (shown.decision.mark, shown.decision.quote_age_ms) == (Decimal("0.80"), None)


def exit_order(quantity: int) -> ExitOrder:
    return ExitOrder(
        order_class=OrderClass.MULTILEG,
        underlying="SPY",
        order_type=OrderType.DEBIT,
        quantity=quantity,
        limit_price=Decimal("0.62"),
        legs=(
            OrderLeg(option_symbol=SHORT, side=OrderLegSide.BUY_TO_CLOSE, quantity=quantity),
            OrderLeg(option_symbol=LONG, side=OrderLegSide.SELL_TO_CLOSE, quantity=quantity),
        ),
    )


async def test_an_exit_in_flight_is_shown_until_it_is_final(schema: Database) -> None:
    trade_id = await open_trade(schema)
    orders = PgOrderStore(schema)
    recorded = await orders.record_exit_order(
        client_order_id="sw-1-i-1",
        account_id=ACCOUNT,
        trade_id=trade_id,
        order=exit_order(2),
        action=ExitAction.FULL,
        rule="profit_target",
    )
    assert recorded is not None
    await orders.mark_submitted(recorded.order_id)
    await orders.mark_accepted(recorded.order_id, "1001")

    (shown,) = (await read_status(schema, account_id=ACCOUNT)).trades
    assert shown.status == "CLOSING"
    order = shown.order
    assert order is not None
    assert (order.client_order_id, order.purpose, order.exit_action) == ("sw-1-i-1", "EXIT", "FULL")
    assert (order.order_type, order.limit_price, order.status) == (
        "debit",
        Decimal("0.62"),
        "PENDING",
    )
    assert (order.filled_quantity, order.quantity, order.attempts) == (0, 2, 1)
    assert order.created_at <= (await read_status(schema)).taken_at

    await orders.end_unsent(recorded.order_id, status="REJECTED", reason="no")
    (shown,) = (await read_status(schema, account_id=ACCOUNT)).trades
    assert (shown.status, shown.order) == ("OPEN", None)


# ----------------------------------------------------------------------------- the command


def _env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPREADWATCH_", "TRADIER_")) and key != "DATABASE_URL"
    }
    env["TRADIER_ACCOUNT_ID"] = ACCOUNT
    return env


def _argv(database_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "--database-url", database_url, "status", *args]


async def spreadwatch_status(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run ``spreadwatch status ARGS`` on the test database; (exit status, stdout, stderr)."""
    with trio.fail_after(60):
        result: Any = await trio.run_process(
            _argv(database_url, *args),
            env=_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_the_command_prints_the_open_trades_as_a_table_and_as_json(
    database_url: str, db: Database
) -> None:
    # A fresh database: the command applies the migrations itself, then finds nothing.
    status, out, err = await spreadwatch_status(database_url)
    assert (status, err) == (0, "")
    (line,) = out.splitlines()
    assert line.startswith(f"no open trades in {ACCOUNT} at ")

    trade_id = await open_trade(db)
    await write_audit_batch(db, [decision(trade_id, T0, mark="0.80")])
    status, out, err = await spreadwatch_status(database_url)
    assert (status, err) == (0, "")
    title, header, row, legs = out.splitlines()
    assert title.startswith(f"1 open trade in {ACCOUNT} at ")
    assert re.split(r"\s{2,}", header) == [
        "ID", "SPREAD", "QTY", "ENTRY", "MARK", "P&L $", "TO STOP", "TO TARGET", "QUOTE",
        "AS OF", "MANAGED",
    ]  # fmt: skip
    # Credit 1.25, closing at 0.80: +0.45 a spread, +90.00 for 2. Default credit plan: the stop
    # at a 1.25 loss (1.70 away: 340.00), the target at 0.625 profit (0.175 away: 35.00).
    cells = row.split()
    assert cells[:7] == [str(trade_id), "SPY", "bull", "put", "2", "1.25", "0.80"]
    assert cells[7:10] == ["+90.00", "340.00", "35.00"]
    assert cells[10] == "0.5s" and cells[-1] == "yes"
    assert legs.split() == ["legs", "SPY", "2025-12-19", "+395P", "-400P"]
    assert "\x1b[" not in out  # not a terminal: no colour

    status, out, err = await spreadwatch_status(database_url, "--json")
    assert (status, err) == (0, "")
    (document_line,) = out.splitlines()
    document = json.loads(document_line)
    assert document["account_id"] == ACCOUNT
    (trade,) = document["trades"]
    assert (trade["trade_id"], trade["pnl"], trade["to_stop"], trade["to_target"]) == (
        trade_id,
        90,
        340,
        35,
    )
    assert trade["as_of"] == "2025-12-09T19:45:00Z"
    assert trade["exit_in_flight"] is False and trade["order"] is None


async def test_watch_redraws_until_interrupted_and_exits_0(database_url: str, db: Database) -> None:
    await apply_migrations(db)
    trade_id = await open_trade(db)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    _argv(database_url, "--watch", "0.1", "--json"),
                    env=_env(),
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            documents: list[dict[str, Any]] = []
            buffer = b""
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                documents.extend(json.loads(line) for line in lines)
                if len(documents) >= 2:
                    break
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    assert [[t["trade_id"] for t in d["trades"]] for d in documents[:2]] == [[trade_id]] * 2
