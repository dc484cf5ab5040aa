"""Exit accounting, pure: what a broker's read of an exit order means for the order and its trade.

The rules (issue 5, DESIGN section 6):

- an order's progress is only ever read from the broker (:class:`~engine.brokers.BrokerOrder`);
  what the engine had recorded moves *forward* to it: the filled quantity never decreases and a
  final status never changes (a stale read, which can arrive after a newer one, changes
  nothing);
- each leg's new executions become fill rows keyed by ``<symbol>:<cumulative contracts>`` so
  the same fill read twice (stream and polling, or before and after a restart) is stored once;
  the price of the new part is derived from the cumulative averages;
- a trade holds ``opening - closed`` spreads, ``closed`` summed over the filled quantities of
  every exit order of the trade (never more than it held a moment before: the mirror may have
  seen a fill first);
- realized P&L in dollars is ``sum over exit orders of (entry cash + close cash) per spread x
  filled x 100``: entry cash is the credit received (credit strategies, positive) or the debit
  paid (negative); close cash is the debit paid to close (negative) or the credit received;
- the trade is CLOSED when it holds nothing; its close reason is the rule that decided the exit
  whose fill closed it, never what happened after; an order that ends (cancelled, rejected,
  expired) with the trade still holding spreads puts the trade back to OPEN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final

import msgspec

from engine.brokers import FINAL_ORDER_STATUSES, BrokerOrder, BrokerOrderStatus
from engine.domain.strategy import Strategy, is_credit
from engine.messages import CloseReason, OrderLegSide, OrderType

__all__ = [
    "FINAL_STATUS_NAMES",
    "ExitFilled",
    "LegFill",
    "OrderProgress",
    "close_reason_for_rule",
    "new_leg_fills",
    "progress",
    "realized_pnl",
    "remaining_quantity",
]

_HUNDRED: Final = Decimal(100)
_PRICE_QUANTUM: Final = Decimal("0.0001")

# The statuses of the orders table an order moves through, in the order it may move.
_RANK: Final[Mapping[str, int]] = {
    "NEW": 0,
    "SUBMITTED": 1,
    "PENDING": 2,
    "OPEN": 3,
    "PARTIALLY_FILLED": 4,
    "CANCEL_REQUESTED": 5,
}
FINAL_STATUS_NAMES: Final = frozenset(status.value for status in FINAL_ORDER_STATUSES)


class OrderProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Where an order stands after a broker read: the status and fill to record, and how many
    spreads filled since the previous record (``newly_filled``)."""

    status: str
    filled_quantity: int
    avg_fill_price: Decimal | None
    newly_filled: int
    reason: str | None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUS_NAMES


class LegFill(msgspec.Struct, frozen=True, kw_only=True):
    """A new fill of one leg: ``quantity`` contracts at ``price`` per share."""

    fill_key: str
    symbol: str
    side: OrderLegSide
    quantity: int
    price: Decimal


class ExitFilled(msgspec.Struct, frozen=True, kw_only=True):
    """What one exit order of a trade has closed: ``filled`` spreads at ``avg_fill_price``
    (positive, per spread) with an order of ``order_type``; ``legs_sides`` decide the sign of a
    single-leg order's cash."""

    order_type: OrderType
    filled: int
    avg_fill_price: Decimal | None
    single_leg_side: OrderLegSide | None = None


def progress(
    recorded_status: str,
    recorded_filled: int,
    recorded_avg: Decimal | None,
    read: BrokerOrder,
) -> OrderProgress:
    """The order's progress after ``read``, never moving backwards from what was recorded."""
    if recorded_status in FINAL_STATUS_NAMES:
        return OrderProgress(
            status=recorded_status,
            filled_quantity=recorded_filled,
            avg_fill_price=recorded_avg,
            newly_filled=0,
            reason=None,
        )
    filled = max(recorded_filled, min(read.filled_quantity, read.quantity))
    avg = read.avg_fill_price if read.filled_quantity >= recorded_filled else recorded_avg
    avg = None if avg is None or filled == 0 else abs(avg)
    status = _status_after(recorded_status, read, filled)
    return OrderProgress(
        status=status,
        filled_quantity=filled,
        avg_fill_price=avg,
        newly_filled=filled - recorded_filled,
        reason=read.reason,
    )


def _status_after(recorded: str, read: BrokerOrder, filled: int) -> str:
    if read.status in FINAL_ORDER_STATUSES:
        if read.status is BrokerOrderStatus.FILLED and filled < read.quantity:
            return "PARTIALLY_FILLED"  # a FILLED read without the quantities: read again
        return read.status.value
    candidate = read.status.value
    if filled > 0 and candidate in ("PENDING", "OPEN"):
        candidate = "PARTIALLY_FILLED"
    # CANCEL_REQUESTED stays until the broker says the order ended.
    if _RANK.get(candidate, 0) < _RANK.get(recorded, 0):
        return recorded
    return candidate


def new_leg_fills(read: BrokerOrder, recorded: Mapping[str, tuple[int, Decimal]]) -> list[LegFill]:
    """Each leg's executions not yet recorded. ``recorded`` maps a leg symbol to the contracts
    and the value (sum of quantity x price) already stored for it."""
    fills: list[LegFill] = []
    for leg in read.legs:
        if leg.side is None or leg.avg_fill_price is None or leg.filled_quantity <= 0:
            continue
        done, value = recorded.get(leg.option_symbol, (0, Decimal(0)))
        new = leg.filled_quantity - done
        if new <= 0:
            continue
        total_value = abs(leg.avg_fill_price) * leg.filled_quantity
        price = max((total_value - value) / new, Decimal(0)).quantize(_PRICE_QUANTUM)
        fills.append(
            LegFill(
                fill_key=f"{leg.option_symbol}:{leg.filled_quantity}",
                symbol=leg.option_symbol,
                side=leg.side,
                quantity=new,
                price=price,
            )
        )
    return fills


def remaining_quantity(quantity_now: int, opening_quantity: int, closed_by_exits: int) -> int:
    """The spreads a trade holds once its exits have closed ``closed_by_exits`` in all."""
    return max(0, min(quantity_now, opening_quantity - closed_by_exits))


def realized_pnl(
    strategy: Strategy, entry_price: Decimal, exits: Sequence[ExitFilled]
) -> Decimal | None:
    """Dollars realized by the trade's exits so far (None when nothing has closed)."""
    entry_cash = entry_price if is_credit(strategy) else -entry_price
    total = Decimal(0)
    closed = 0
    for exit_ in exits:
        if exit_.filled <= 0 or exit_.avg_fill_price is None:
            continue
        close_cash = _close_cash(exit_)
        total += (entry_cash + close_cash) * exit_.filled * _HUNDRED
        closed += exit_.filled
    return total if closed else None


def _close_cash(exit_: ExitFilled) -> Decimal:
    price = abs(exit_.avg_fill_price or Decimal(0))
    if exit_.order_type is OrderType.DEBIT:
        return -price
    if exit_.order_type is OrderType.CREDIT:
        return price
    # A single-leg order (limit or market): buying back pays, selling out receives.
    side = exit_.single_leg_side
    return -price if side in (OrderLegSide.BUY_TO_CLOSE, OrderLegSide.BUY_TO_OPEN) else price


def close_reason_for_rule(rule: str | None) -> CloseReason:
    """The trades.close_reason of an exit decided by ``rule`` (an exit-rule name or
    ``manual``)."""
    if rule is None:
        return CloseReason.MANUAL
    try:
        return CloseReason(rule.upper())
    except ValueError:
        return CloseReason.MANUAL
