"""The initial schema's keys and constraints, through the queries that use them."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage import Database, IntegrityError, apply_migrations, queries

pytestmark = pytest.mark.storage

D = decimal.Decimal
ACCOUNT = "VA000001"
LEGS = [
    {"symbol": "SPY251219P00400000", "side": "short", "quantity": 1},
    {"symbol": "SPY251219P00395000", "side": "long", "quantity": 1},
]
CLOSE_LEGS = [
    {"symbol": "SPY251219P00400000", "side": "buy_to_close", "quantity": 2},
    {"symbol": "SPY251219P00395000", "side": "sell_to_close", "quantity": 2},
]


@pytest.fixture
async def schema(db: Database) -> AsyncIterator[Database]:
    await apply_migrations(db)
    yield db


async def _trade(db: Database, **overrides: Any) -> int:
    fields: dict[str, Any] = {
        "account": ACCOUNT,
        "underlying": "SPY",
        "strategy": "bull_put_credit",
        "legs": LEGS,
        "quantity": 2,
        "entry_price": D("1.25"),
        "origin": "ENGINE",
    }
    fields.update(overrides)
    return await queries.insert_trade(db, **fields)


async def _exit_order(db: Database, trade_id: int, client_order_id: str) -> int:
    return await queries.insert_exit_order(
        db,
        client_order_id=client_order_id,
        account=ACCOUNT,
        trade_id=trade_id,
        exit_action="FULL",
        quantity=2,
        legs=CLOSE_LEGS,
        order_type="debit",
        limit_price=D("0.60"),
        reason="PROFIT_TARGET",
    )


async def test_trade_round_trip(schema: Database) -> None:
    trade_id = await _trade(
        schema, exit_plan={"profit_target": D("0.5")}, entry_iv=D("0.2312"), managed=False
    )
    row = await queries.get_trade(schema, trade_id)
    assert row is not None
    assert row["entry_price"] == D("1.25")
    assert row["quantity"] == row["opening_quantity"] == 2
    assert row["status"] == "OPEN"
    assert row["legs"] == LEGS
    assert row["exit_plan"] == {"profit_target": D("0.5")}
    assert row["fired_tiers"] == []
    assert row["entry_iv"] == D("0.2312")
    assert row["managed"] is False
    assert row["realized_pnl"] is None
    assert row["opened_at"].tzinfo is not None
    assert [r["trade_id"] for r in await queries.open_trades(schema, account=ACCOUNT)] == [trade_id]
    assert await queries.open_trades(schema, account="other") == []


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"origin": "ROBOT"}, "trades_origin_check"),
        ({"strategy": "straddle"}, "trades_strategy_check"),
        ({"quantity": -1}, "trades_quantity_check"),
        ({"legs": []}, "trades_legs_check"),
        ({"entry_price": D("-0.10")}, "trades_entry_price_check"),
    ],
)
async def test_bad_trade_values_are_refused(
    schema: Database, overrides: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(IntegrityError) as caught:
        await _trade(schema, **overrides)
    assert caught.value.constraint_name == constraint
    assert await schema.fetchval("SELECT count(*) FROM trades") == 0


async def test_closing_rules(schema: Database) -> None:
    trade_id = await _trade(schema)
    now = datetime.datetime.now(datetime.UTC)

    async def close(**values: Any) -> None:
        await schema.execute(
            "UPDATE trades SET status = 'CLOSED', quantity = $2, closed_at = $3, "
            "close_reason = $4, realized_pnl = $5 WHERE trade_id = $1",
            trade_id,
            values["quantity"],
            values.get("closed_at", now),
            values["reason"],
            values.get("pnl"),
        )

    # A closed trade holds nothing, has a reason and a time; a phantom close has no P&L.
    with pytest.raises(IntegrityError, match="trades_closed_check"):
        await close(quantity=1, reason="STOP_LOSS", pnl=D("-250"))
    with pytest.raises(IntegrityError, match="trades_closed_check"):
        await close(quantity=0, reason=None, pnl=D("-250"))
    with pytest.raises(IntegrityError, match="trades_close_reason_check"):
        await close(quantity=0, reason="BORED", pnl=D("-250"))
    with pytest.raises(IntegrityError, match="trades_phantom_pnl_check"):
        await close(quantity=0, reason="PHANTOM", pnl=D("0"))
    await close(quantity=0, reason="PHANTOM", pnl=None)
    row = await queries.get_trade(schema, trade_id)
    assert row is not None
    assert (row["status"], row["close_reason"], row["realized_pnl"]) == ("CLOSED", "PHANTOM", None)
    assert row["updated_at"] >= row["created_at"]


async def test_duplicate_client_order_id_is_refused(schema: Database) -> None:
    first = await _trade(schema)
    second = await _trade(schema)
    await _exit_order(schema, first, "sw-1-exit-1")
    with pytest.raises(IntegrityError) as caught:
        await _exit_order(schema, second, "sw-1-exit-1")
    assert caught.value.constraint_name == "orders_client_order_id_key"
    row = await queries.get_order_by_client_order_id(schema, "sw-1-exit-1")
    assert row is not None and row["trade_id"] == first and row["status"] == "NEW"
    assert row["limit_price"] == D("0.60")


async def test_one_working_exit_order_per_trade(schema: Database) -> None:
    trade_id = await _trade(schema)
    first = await _exit_order(schema, trade_id, "sw-1-exit-1")
    with pytest.raises(IntegrityError) as caught:
        await _exit_order(schema, trade_id, "sw-1-exit-2")
    assert caught.value.constraint_name == "orders_one_working_exit_per_trade"
    # Once the first is final (here: rejected), the trade may be exited again.
    await schema.execute(
        "UPDATE orders SET status = 'REJECTED', finalized_at = now() WHERE order_id = $1", first
    )
    await _exit_order(schema, trade_id, "sw-1-exit-2")


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        # (Also breaks the exit_action rule, which PostgreSQL checks first: names sort.)
        ("purpose", "HEDGE", "orders_exit_action_check"),
        ("exit_action", None, "orders_exit_action_check"),
        ("order_type", "stop", "orders_order_type_check"),
        ("status", "LOST", "orders_status_check"),
        ("limit_price", None, "orders_limit_price_by_type_check"),
        ("filled_quantity", 3, "orders_filled_quantity_check"),
    ],
)
async def test_bad_order_values_are_refused(
    schema: Database, column: str, value: Any, constraint: str
) -> None:
    trade_id = await _trade(schema)
    order_id = await _exit_order(schema, trade_id, "sw-1-exit-1")
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(
            f"UPDATE orders SET {column} = $2 WHERE order_id = $1", order_id, value
        )
    assert caught.value.constraint_name == constraint


async def test_order_needs_an_existing_trade(schema: Database) -> None:
    with pytest.raises(IntegrityError) as caught:
        await _exit_order(schema, 999, "sw-999-exit-1")
    assert caught.value.constraint_name == "orders_trade_id_fkey"


async def test_fills_are_stored_once_per_key(schema: Database) -> None:
    trade_id = await _trade(schema)
    order_id = await _exit_order(schema, trade_id, "sw-1-exit-1")
    insert = (
        "INSERT INTO fills (order_id, fill_key, leg_symbol, leg_side, quantity, price, filled_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now())"
    )
    await schema.execute(
        insert, order_id, "leg1:2", "SPY251219P00400000", "buy_to_close", 2, D("0.8")
    )
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(
            insert, order_id, "leg1:2", "SPY251219P00400000", "buy_to_close", 2, D("0.8")
        )
    assert caught.value.constraint_name == "fills_fill_key"
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(insert, order_id, "leg2:2", "SPY251219P00395000", "sell", 2, D("0.2"))
    assert caught.value.constraint_name == "fills_leg_side_check"


async def test_position_leg_key_is_unique(schema: Database) -> None:
    leg = {
        "account": ACCOUNT,
        "symbol": "SPY251219P00400000",
        "underlying": "SPY",
        "expiration": datetime.date(2025, 12, 19),
        "option_type": "put",
        "strike": D("400"),
        "side": "short",
    }
    first = await queries.upsert_position(schema, quantity=2, **leg)
    # The mirror updates the row with the same key instead of adding one.
    assert await queries.upsert_position(schema, quantity=3, **leg) == first
    assert await schema.fetchval("SELECT quantity FROM portfolio_positions") == 3
    insert = (
        "INSERT INTO portfolio_positions (account, symbol, underlying, expiration, option_type,"
        " strike, side, quantity) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)"
    )
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(insert, *leg.values())
    assert caught.value.constraint_name == "portfolio_positions_leg_key"
    # Stock has no option fields; NULLS NOT DISTINCT keeps it to one row as well.
    stock = (ACCOUNT, "SPY", "SPY", None, None, None, "long")
    await schema.execute(insert, *stock)
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(insert, *stock)
    assert caught.value.constraint_name == "portfolio_positions_leg_key"
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(insert, ACCOUNT, "X", "X", None, "call", None, "long")
    assert caught.value.constraint_name == "portfolio_positions_option_fields_check"


async def test_decisions_and_events_take_audit_batches(schema: Database) -> None:
    trade_id = await _trade(schema)
    now = datetime.datetime.now(datetime.UTC)
    await schema.copy_records_to_table(
        "decisions",
        records=[
            (
                trade_id,
                now,
                "EXIT",
                "STOP_LOSS",
                ["STOP_LOSS", "DTE"],
                "FULL",
                2,
                {"mark": D("2.6")},
            ),
            (trade_id, now, "SNAPSHOT", None, [], None, None, {"mark": D("1.1")}),
        ],
        columns=[
            "trade_id",
            "decided_at",
            "kind",
            "rule",
            "rules_fired",
            "exit_action",
            "exit_quantity",
            "inputs",
        ],
    )
    rows = await schema.fetch(
        "SELECT kind, rules_fired, inputs FROM decisions WHERE trade_id = $1 ORDER BY kind",
        trade_id,
    )
    assert [(r["kind"], r["rules_fired"], r["inputs"]) for r in rows] == [
        ("EXIT", ["STOP_LOSS", "DTE"], {"mark": D("2.6")}),
        ("SNAPSHOT", [], {"mark": D("1.1")}),
    ]
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(
            "INSERT INTO decisions (trade_id, decided_at, kind, inputs)"
            " VALUES ($1, now(), 'EXIT', '{}')",
            trade_id,
        )
    assert caught.value.constraint_name == "decisions_rule_check"
    await schema.execute(
        "INSERT INTO events (occurred_at, kind, trade_id, details) VALUES (now(), $1, $2, $3)",
        "portfolio_mirror.phantom",
        trade_id,
        {"confirmations": 3},
    )
    with pytest.raises(IntegrityError) as caught:
        await schema.execute(
            "INSERT INTO events (occurred_at, kind) VALUES (now(), 'Not A Dotted Name')"
        )
    assert caught.value.constraint_name == "events_kind_check"
