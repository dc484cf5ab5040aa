"""Exit accounting, pure: order progress never moves backwards, fills are keyed so a read seen
twice is counted once, trades hold what their exits did not close, P&L sums every exit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.brokers import BrokerOrder, BrokerOrderLeg, BrokerOrderStatus
from engine.domain import accounting
from engine.domain.accounting import ExitFilled
from engine.domain.orders import held_for_trade
from engine.domain.spread import Leg, Spread
from engine.domain.strategy import Strategy
from engine.messages import CloseReason, OrderLegSide, OrderType

SP500 = "SPY240621P00500000"
LP495 = "SPY240621P00495000"
D = Decimal


def _read(
    status: BrokerOrderStatus, filled: int, *, legs_avg: tuple[str, str] | None = None
) -> BrokerOrder:
    legs = ()
    if legs_avg is not None:
        legs = (
            BrokerOrderLeg(
                option_symbol=SP500,
                side=OrderLegSide.BUY_TO_CLOSE,
                quantity=2,
                filled_quantity=filled,
                avg_fill_price=D(legs_avg[0]),
            ),
            BrokerOrderLeg(
                option_symbol=LP495,
                side=OrderLegSide.SELL_TO_CLOSE,
                quantity=2,
                filled_quantity=filled,
                avg_fill_price=D(legs_avg[1]),
            ),
        )
    return BrokerOrder(
        broker_order_id="1",
        client_order_id="sw-1-a-1",
        status=status,
        multileg=True,
        order_type=OrderType.DEBIT,
        underlying="SPY",
        quantity=2,
        filled_quantity=filled,
        remaining_quantity=2 - filled,
        avg_fill_price=D("1.10") if filled else None,
        limit_price=D("1.10"),
        legs=legs,
    )


def test_progress_moves_forward_only() -> None:
    step = accounting.progress("OPEN", 0, None, _read(BrokerOrderStatus.PARTIALLY_FILLED, 1))
    assert (step.status, step.filled_quantity, step.newly_filled) == ("PARTIALLY_FILLED", 1, 1)
    stale = accounting.progress("PARTIALLY_FILLED", 1, D("1.10"), _read(BrokerOrderStatus.OPEN, 0))
    assert (stale.status, stale.filled_quantity, stale.newly_filled) == ("PARTIALLY_FILLED", 1, 0)
    final = accounting.progress("FILLED", 2, D("1.10"), _read(BrokerOrderStatus.CANCELLED, 2))
    assert final.status == "FILLED" and final.newly_filled == 0  # a final status never changes
    # Filled with some quantity working but no fill reported yet: working, not "filled".
    opened = accounting.progress("SUBMITTED", 0, None, _read(BrokerOrderStatus.OPEN, 0))
    assert opened.status == "OPEN" and not opened.is_final


def test_a_cancel_requested_order_stays_so_until_the_broker_ends_it() -> None:
    step = accounting.progress("CANCEL_REQUESTED", 0, None, _read(BrokerOrderStatus.OPEN, 0))
    assert step.status == "CANCEL_REQUESTED"
    done = accounting.progress("CANCEL_REQUESTED", 0, None, _read(BrokerOrderStatus.FILLED, 2))
    assert done.status == "FILLED" and done.newly_filled == 2  # the cancel lost the race


def test_leg_fills_are_keyed_by_cumulative_quantity_and_priced_incrementally() -> None:
    first = accounting.new_leg_fills(
        _read(BrokerOrderStatus.PARTIALLY_FILLED, 1, legs_avg=("1.50", "0.40")), {}
    )
    assert [(f.fill_key, f.quantity, f.price) for f in first] == [
        (f"{SP500}:1", 1, D("1.5000")),
        (f"{LP495}:1", 1, D("0.4000")),
    ]
    recorded = {SP500: (1, D("1.50")), LP495: (1, D("0.40"))}
    # Second lot: cumulative averages 1.55 / 0.35 over 2 -> the new contract at 1.60 / 0.30.
    second = accounting.new_leg_fills(
        _read(BrokerOrderStatus.FILLED, 2, legs_avg=("1.55", "0.35")), recorded
    )
    assert [(f.fill_key, f.quantity, f.price) for f in second] == [
        (f"{SP500}:2", 1, D("1.6000")),
        (f"{LP495}:2", 1, D("0.3000")),
    ]
    done = {SP500: (2, D("3.10")), LP495: (2, D("0.70"))}
    assert (
        accounting.new_leg_fills(
            _read(BrokerOrderStatus.FILLED, 2, legs_avg=("1.55", "0.35")), done
        )
        == []
    )


@pytest.mark.parametrize(
    ("quantity_now", "opening", "closed", "expected"),
    [(3, 3, 1, 2), (3, 3, 3, 0), (1, 3, 1, 1), (2, 3, 0, 2), (2, 3, 5, 0)],
)
def test_remaining_quantity(quantity_now: int, opening: int, closed: int, expected: int) -> None:
    # Never more than the trade held a moment before (the mirror may have seen a fill first).
    assert accounting.remaining_quantity(quantity_now, opening, closed) == expected


def test_realized_pnl_sums_every_exit_in_dollars() -> None:
    exits = [
        ExitFilled(order_type=OrderType.DEBIT, filled=1, avg_fill_price=D("1.10")),
        ExitFilled(order_type=OrderType.DEBIT, filled=2, avg_fill_price=D("0.20")),
    ]
    # Credit 0.45: (0.45 - 1.10) x 100 + (0.45 - 0.20) x 2 x 100
    assert accounting.realized_pnl(Strategy.BULL_PUT_CREDIT, D("0.45"), exits) == D("-15.00")
    debit = [ExitFilled(order_type=OrderType.CREDIT, filled=2, avg_fill_price=D("2.00"))]
    # Paid 1.20, sold for 2.00: (2.00 - 1.20) x 2 x 100
    assert accounting.realized_pnl(Strategy.BULL_CALL_DEBIT, D("1.20"), debit) == D("160.00")
    single = [
        ExitFilled(
            order_type=OrderType.LIMIT,
            filled=1,
            avg_fill_price=D("0.30"),
            single_leg_side=OrderLegSide.BUY_TO_CLOSE,
        )
    ]
    assert accounting.realized_pnl(Strategy.SHORT_PUT, D("1.00"), single) == D("70.00")
    assert accounting.realized_pnl(Strategy.BULL_PUT_CREDIT, D("0.45"), []) is None


def test_close_reason_is_the_deciding_rule() -> None:
    assert accounting.close_reason_for_rule("stop_loss") is CloseReason.STOP_LOSS
    assert accounting.close_reason_for_rule("scale_out") is CloseReason.SCALE_OUT
    assert accounting.close_reason_for_rule("manual") is CloseReason.MANUAL


def _bull_put(quantity: int) -> Spread:
    return Spread.from_legs(
        [Leg.from_position(SP500, -quantity), Leg.from_position(LP495, quantity)]
    )


def test_held_for_trade_never_claims_another_trades_contracts() -> None:
    mine, other = _bull_put(2), _bull_put(1)
    broker = {SP500: -3, LP495: 3}
    assert held_for_trade(mine, broker, [other]) == {SP500: -2, LP495: 2}
    assert held_for_trade(other, broker, [mine]) == {SP500: -1, LP495: 1}
    # The broker holds less than the trades claim: the shortfall is this trade's.
    short = {SP500: -2, LP495: 2}
    assert held_for_trade(mine, short, [other]) == {SP500: -1, LP495: 1}
    # A long leg of another trade on my short contract cancels at the broker: still mine.
    hedge = Spread.from_legs(
        [Leg.from_position(SP500, 1), Leg.from_position("SPY240621P00490000", -1)]
    )
    assert held_for_trade(mine, {SP500: -1, LP495: 2, "SPY240621P00490000": -1}, [hedge]) == {
        SP500: -2,
        LP495: 2,
    }
    # Held the other way round: nothing.
    assert held_for_trade(mine, {SP500: 2, LP495: 2}, []) == {SP500: 0, LP495: 2}
