"""``spreadwatch status``: the figures, the table and the JSON, as pure functions over the rows
storage.status reads. The query and the command on a real database are in
tests/storage/test_status.py."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import msgspec
import pytest

from engine.cli import _parse
from engine.cli_status import encode_json, render_table, status_document, trade_view
from engine.domain.spread import Leg
from engine.domain.strategy import Strategy
from engine.messages import TradeOrigin
from storage.status import LatestDecision, StatusSnapshot, TradeStatus, WorkingOrder

D = Decimal
NOW = dt.datetime(2025, 12, 9, 19, 46, tzinfo=dt.UTC)
AS_OF = dt.datetime(2025, 12, 9, 19, 45, 30, tzinfo=dt.UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def legs(*positions: tuple[str, int]) -> tuple[Leg, ...]:
    return tuple(sorted(Leg.from_position(symbol, quantity) for symbol, quantity in positions))


def priced(mark: str, pnl: str, *, age_ms: int | None = 480) -> LatestDecision:
    return LatestDecision(
        decided_at=AS_OF,
        kind="SNAPSHOT",
        rule=None,
        mark=D(mark),
        pnl=D(pnl),
        profit_fraction=None,
        loss_fraction=None,
        underlying_price=None,
        quote_age_ms=age_ms,
    )


def trade(
    trade_id: int = 1,
    *,
    strategy: Strategy = Strategy.BULL_PUT_CREDIT,
    trade_legs: tuple[Leg, ...] | None = None,
    quantity: int = 2,
    opening_quantity: int | None = None,
    entry: str = "1.25",
    decision: LatestDecision | None = None,
    order: WorkingOrder | None = None,
    status: str = "OPEN",
    managed: bool = True,
    exit_plan: dict[str, object] | None = None,
    account: str = "VA1",
    underlying: str = "SPY",
) -> TradeStatus:
    return TradeStatus(
        trade_id=trade_id,
        account_id=account,
        underlying=underlying,
        strategy=strategy,
        legs=trade_legs
        or legs(("SPY251219P00400000", -quantity), ("SPY251219P00395000", quantity)),
        status=status,
        quantity=quantity,
        opening_quantity=opening_quantity or quantity,
        entry_price=D(entry),
        origin=TradeOrigin.ENGINE,
        managed=managed,
        exit_plan=dict(exit_plan or {}),
        opened_at=NOW - dt.timedelta(days=3),
        decision=decision,
        order=order,
    )


def working_exit(**changes: object) -> WorkingOrder:
    fields: dict[str, object] = {
        "client_order_id": "sw-1-1",
        "purpose": "EXIT",
        "exit_action": "FULL",
        "order_type": "debit",
        "limit_price": D("2.45"),
        "status": "PARTIALLY_FILLED",
        "quantity": 2,
        "filled_quantity": 1,
        "attempts": 3,
        "created_at": NOW - dt.timedelta(seconds=75),
    }
    fields.update(changes)
    return WorkingOrder(**fields)  # type: ignore[arg-type]


def table(*trades: TradeStatus, account: str | None = "VA1", color: bool = False) -> str:
    snapshot = StatusSnapshot(taken_at=NOW, trades=trades)
    return render_table(status_document(snapshot, account), color=color, tz=dt.UTC)


# ----------------------------------------------------------------------------- the figures


def test_a_credit_spread_against_its_default_stop_and_target() -> None:
    # Credit 1.25 on a 5-wide put spread, closing at 0.80: +0.45 a spread. Credit defaults: the
    # stop at a loss of 1.0 x the credit (1.25), the target at 0.50 of max profit (0.625).
    view = trade_view(trade(decision=priced("0.80", "0.45")), NOW)
    assert view.pnl == D("90.00")  # 0.45 x 2 spreads x 100
    assert (view.stop_loss_limit, view.profit_target_pnl) == (D("1.25"), D("0.625"))
    assert view.to_stop == D("340.00")  # (1.25 + 0.45) x 200
    assert view.to_target == D("35.00")  # (0.625 - 0.45) x 200
    assert (view.quote_age_seconds, view.quote_stale) == (0.48, False)
    assert (view.as_of, view.mark) == (AS_OF, D("0.80"))
    assert not view.exit_in_flight and view.order is None


def test_a_debit_spread_against_its_default_stop_and_target() -> None:
    # Debit 4.10 on a 10-wide call spread: max profit 5.90, max loss 4.10. Debit defaults: the
    # stop at 0.50 of max loss (2.05), the target at 0.60 of max profit (3.54).
    view = trade_view(
        trade(
            strategy=Strategy.BULL_CALL_DEBIT,
            trade_legs=legs(("QQQ251219C00520000", 5), ("QQQ251219C00530000", -5)),
            quantity=5,
            entry="4.10",
            decision=priced("6.30", "2.20"),
        ),
        NOW,
    )
    assert (view.stop_loss_limit, view.profit_target_pnl) == (D("2.05"), D("3.540"))
    assert (view.pnl, view.to_stop, view.to_target) == (D("1100.00"), D("2125.00"), D("670.00"))


def test_the_trades_own_plan_overrides_the_defaults() -> None:
    overridden = trade(
        decision=priced("2.90", "-1.65"),
        exit_plan={"stop_loss": 2, "profit_target": False},
    )
    view = trade_view(overridden, NOW)
    # Stop at 2 x credit = 2.50, capped at max loss 3.75 - no cap here; target off.
    assert view.stop_loss_limit == D("2.50")
    assert view.to_stop == D("170.00")  # (2.50 - 1.65) x 200
    assert (view.profit_target_pnl, view.to_target) == (None, None)


def test_a_stop_already_breached_is_a_negative_distance() -> None:
    view = trade_view(trade(decision=priced("2.60", "-1.35")), NOW)
    assert view.to_stop == D("-20.00")  # (1.25 - 1.35) x 200


def test_a_trade_without_a_decision_has_no_mark_pnl_or_distances() -> None:
    view = trade_view(trade(), NOW)
    assert (view.as_of, view.mark, view.pnl, view.to_stop, view.to_target) == (None,) * 5
    assert view.stop_loss_limit == D("1.25")  # the plan is known without quotes
    assert view.quote_age_seconds is None


def test_a_stale_quote_is_older_than_the_plans_limit() -> None:
    assert trade_view(trade(decision=priced("0.8", "0.45", age_ms=10_001)), NOW).quote_stale
    assert not trade_view(trade(decision=priced("0.8", "0.45", age_ms=10_000)), NOW).quote_stale


def test_a_bad_stored_plan_is_reported_not_raised() -> None:
    view = trade_view(trade(decision=priced("0.8", "0.45"), exit_plan={"stop_los": 1}), NOW)
    assert view.plan_error is not None and "stop_los" in view.plan_error
    assert (view.to_stop, view.to_target, view.pnl) == (None, None, D("90.00"))


def test_custom_spreads_have_no_thresholds() -> None:
    view = trade_view(
        trade(
            strategy=Strategy.CUSTOM,
            trade_legs=legs(("SPY251219P00400000", -1), ("SPY260116P00400000", 1)),
            quantity=1,
        ),
        NOW,
    )
    assert (view.stop_loss_limit, view.profit_target_pnl) == (None, None)


def test_an_order_in_flight_and_its_age() -> None:
    view = trade_view(trade(status="CLOSING", order=working_exit()), NOW)
    assert view.exit_in_flight
    assert view.order is not None and view.order.age_seconds == 75.0


# ----------------------------------------------------------------------------- the table


def test_no_trades_is_one_line() -> None:
    assert table() == "no open trades in VA1 at 2025-12-09 19:46:00 UTC"
    assert table(account=None) == "no open trades at 2025-12-09 19:46:00 UTC"


def test_the_table_aligns_each_column_and_shows_legs_and_exits() -> None:
    condor = trade(
        2,
        strategy=Strategy.IRON_CONDOR,
        trade_legs=legs(
            ("SPXW251219P05800000", -3),
            ("SPXW251219P05790000", 3),
            ("SPXW251219C06100000", -3),
            ("SPXW251219C06110000", 3),
        ),
        quantity=3,
        entry="2.85",
        decision=priced("3.40", "-0.55", age_ms=14_500),
        managed=False,
        underlying="SPX",
    )
    closing = trade(3, quantity=1, opening_quantity=2, status="CLOSING", order=working_exit())
    text = table(trade(1, decision=priced("0.80", "0.45")), condor, closing)
    lines = text.splitlines()
    assert lines[0] == (
        "3 open trades in VA1 at 2025-12-09 19:46:00 UTC; P&L and distances to stop and target in $"
    )
    header, first, first_legs, second, second_legs, third, third_legs, third_exit = lines[1:]
    assert header.split("  ")[0] == "ID"
    assert first.split() == [
        "1", "SPY", "bull", "put", "2", "1.25", "0.80", "+90.00", "340.00", "35.00", "0.5s",
        "19:45:30", "yes",
    ]  # fmt: skip
    assert second.split()[1:4] == ["SPX", "iron", "condor"]
    assert second.split()[-3:] == ["14s", "19:45:30", "no"]
    assert third.split()[4:] == ["1/2", "1.25", "-", "-", "-", "-", "-", "-", "yes"]
    # Right-aligned numbers end in the same column as their header.
    for name in ("QTY", "ENTRY", "MARK", "P&L $", "TO STOP", "TO TARGET", "QUOTE"):
        end = header.index(name) + len(name)
        for row in (first, second):
            assert row[end - 1] != " " and row[end : end + 2] == "  ", (name, row)
    assert first_legs.split() == ["legs", "SPY", "2025-12-19", "+395P", "-400P"]
    assert second_legs.split() == [
        "legs", "SPXW", "2025-12-19", "-6100C", "+6110C", "+5790P", "-5800P",
    ]  # fmt: skip
    assert third_legs.split()[-2:] == ["+395P", "-400P"]
    assert third_exit.split() == [
        "exit", "EXIT", "FULL", "PARTIALLY_FILLED", "debit", "2.45", "filled", "1/2", "for",
        "1m", "3", "attempts",
    ]  # fmt: skip
    assert all(line == line.rstrip() for line in lines)
    assert max(len(line) for line in lines) <= 100
    assert "\x1b[" not in text


def test_a_closing_trade_without_an_order_says_so() -> None:
    (*_, last) = table(trade(status="CLOSING")).splitlines()
    assert last.split() == ["exit", "closing:", "no", "order", "working"]


def test_ratio_legs_show_their_ratio() -> None:
    ratio = trade(
        strategy=Strategy.CUSTOM,
        trade_legs=legs(("SPY251219P00400000", -4), ("SPY251219P00395000", 2)),
        quantity=2,
    )
    (*_, last) = table(ratio).splitlines()
    assert last.split() == ["legs", "SPY", "2025-12-19", "+395P", "-2x400P"]


def test_large_amounts_still_fit_in_100_columns() -> None:
    big = trade(
        4,
        strategy=Strategy.IRON_CONDOR,
        trade_legs=legs(
            ("SPXW251219P05800000", -40),
            ("SPXW251219P05750000", 40),
            ("SPXW251219C06100000", -40),
            ("SPXW251219C06150000", 40),
        ),
        quantity=40,
        entry="12.85",
        decision=priced("21.40", "-8.55"),
        underlying="SPX",
    )
    text = table(big, trade(5, account="VA2"), account=None)
    lines = text.splitlines()
    # Two accounts: each account's trades under a line naming it.
    assert [lines[2], lines[5]] == ["account VA1", "account VA2"]
    assert lines[3].split()[:2] == ["4", "SPX"] and lines[6].split()[:2] == ["5", "SPY"]
    assert "-34,200.00" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_colour_marks_profit_loss_a_reached_stop_a_stale_quote_and_unmanaged() -> None:
    green, red, yellow, dim = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[2m"
    winning = table(trade(decision=priced("0.50", "0.75", age_ms=20_000)), color=True)
    row = winning.splitlines()[2]
    assert re.search(rf"{re.escape(green)}\s*\+150\.00", row)
    assert re.search(rf"{re.escape(green)}\s*-25\.00", row)  # past the target
    assert re.search(rf"{re.escape(yellow)}\s*20s", row)
    losing = table(trade(decision=priced("2.60", "-1.35"), managed=False), color=True)
    row = losing.splitlines()[2]
    assert re.search(rf"{re.escape(red)}\s*-270\.00", row)
    assert re.search(rf"{re.escape(red)}\s*-20\.00", row)  # past the stop
    assert f"{dim}no" in row
    # Colour never changes the text.
    assert ANSI.sub("", losing) == table(trade(decision=priced("2.60", "-1.35"), managed=False))


def test_a_decision_from_another_day_shows_its_date() -> None:
    earlier = msgspec.structs.replace(
        priced("0.80", "0.45"), decided_at=AS_OF - dt.timedelta(days=1)
    )
    row = table(trade(decision=earlier)).splitlines()[2]
    assert "12-08 19:45" in row


# ----------------------------------------------------------------------------- JSON


def test_json_is_one_document_with_exact_numbers() -> None:
    snapshot = StatusSnapshot(
        taken_at=NOW,
        trades=(trade(decision=priced("0.80", "0.45"), status="CLOSING", order=working_exit()),),
    )
    line = encode_json(status_document(snapshot, "VA1"))
    assert "\n" not in line
    document = json.loads(line)
    assert (document["taken_at"], document["account_id"]) == ("2025-12-09T19:46:00Z", "VA1")
    (shown,) = document["trades"]
    assert shown["strategy"] == "bull_put_credit"
    assert shown["legs"] == [
        {"symbol": "SPY251219P00395000", "side": "long", "quantity": 2},
        {"symbol": "SPY251219P00400000", "side": "short", "quantity": 2},
    ]
    assert (shown["pnl"], shown["to_stop"], shown["to_target"]) == (90, 340, 35)
    assert (shown["mark"], shown["entry_price"], shown["quote_age_seconds"]) == (0.8, 1.25, 0.48)
    assert shown["as_of"] == "2025-12-09T19:45:30Z"
    assert shown["exit_in_flight"] is True
    assert shown["order"]["status"] == "PARTIALLY_FILLED"
    assert (shown["order"]["filled_quantity"], shown["order"]["age_seconds"]) == (1, 75.0)
    # Exact: the text holds the Decimal, not a float's approximation.
    assert '"pnl":90.00' in line


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "watch", "as_json"),
    [
        (["status"], None, False),
        (["status", "--watch"], 2.0, False),
        (["status", "--watch", "0.5"], 0.5, False),
        (["status", "--watch", "--json"], 2.0, True),
    ],
)
def test_arguments(argv: list[str], watch: float | None, as_json: bool) -> None:
    _, args = _parse(argv)
    assert (args.command, args.watch, args.json) == ("status", watch, as_json)
    assert args.handler.__module__ == "engine.cli_status"


@pytest.mark.parametrize("interval", ["0", "-1", "soon", "inf"])
def test_a_watch_interval_must_be_a_positive_number(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["status", "--watch", interval])
    assert exc.value.code == 2
    assert "not a positive number of seconds" in capsys.readouterr().err
