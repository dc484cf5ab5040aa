"""Closing orders, pure: what to send to exit a trade, how to price it, and what to call it.

:func:`build_exit_order` turns "close N spreads of this trade" into one order closing every leg,
or refuses with a reason. The rules (DESIGN section 6; each one a lesson from production):

- one order closes every leg: ``buy_to_close`` each short leg, ``sell_to_close`` each long leg;
  a spread is one ``multileg`` order typed ``debit`` to close a credit spread and ``credit`` to
  close a debit spread; a single-leg trade is one ``option`` order typed ``limit``;
- each leg's quantity is its ratio in the spread times the spreads to close, so the order keeps
  the spread's shape;
- the quantity is never more than the broker holds **for this trade** (``held``), never a
  quantity that would open a position or flip one (closing a short leg with more than is short,
  or a leg held the other way round), never zero, never more than the trade itself holds;
- custom spreads are never auto-exited, and a trade whose recorded strategy no longer matches
  its legs is not traded either;
- a debit/credit/limit price is the positive net per spread, on the tick; a market order only
  when the caller says the plan allows it.

Nothing is ever clamped: a request that breaks a rule is refused (:class:`ExitRefused`) with a
reason, and the caller decides (e.g. :func:`closable_quantity` says how much *could* be closed).

:func:`price_ladder` gives the limits an exit walks through, from the mark toward the natural;
:func:`client_order_id` names an order deterministically so it can be found by its broker tag
after a crash.

Prices follow :mod:`engine.domain.pricing`'s close-price convention: the positive debit paid to
close a credit spread, the positive credit received to close a debit spread.

This module imports :mod:`engine.messages` (for ``OrderLeg`` and friends), and
``engine.messages`` imports the domain package: so ``engine.domain.__init__`` must **not**
re-export this module (that would make an import cycle). Import it as
``engine.domain.orders``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Final

import msgspec

from engine.domain.spread import Spread
from engine.domain.strategy import Strategy, is_credit, is_debit
from engine.messages import OrderLeg, OrderLegSide, OrderType

__all__ = [
    "CLIENT_ORDER_ID_PREFIX",
    "DEFAULT_TICK",
    "ClientOrderId",
    "ExitOrder",
    "ExitRefused",
    "OrderClass",
    "RefusalCode",
    "build_exit_order",
    "client_order_id",
    "closable_quantity",
    "held_for_trade",
    "parse_client_order_id",
    "price_ladder",
]

DEFAULT_TICK: Final = Decimal("0.01")
"""The smallest price increment of an option order (Tradier: a penny)."""

CLIENT_ORDER_ID_PREFIX: Final = "sw"
"""Every client order id spreadwatch makes starts with ``sw-``: how reconciliation tells our
broker orders from a person's."""


class OrderClass(StrEnum):
    OPTION = "option"  # one leg
    MULTILEG = "multileg"  # 2 to 4 legs, one net price


class ExitOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A closing order ready to send. Invariants (held by :func:`build_exit_order`):

    - ``legs`` follow the spread's canonical leg order, one per leg, sides closing only;
    - each leg's ``quantity`` = its ratio x ``quantity`` (spreads), > 0;
    - ``order_type`` is DEBIT/CREDIT for multileg, LIMIT for option, or MARKET;
    - ``limit_price`` is > 0 and on the tick, None exactly for MARKET.
    """

    order_class: OrderClass
    underlying: str  # Tradier's ``symbol`` parameter
    order_type: OrderType
    quantity: int  # spreads
    limit_price: Decimal | None
    legs: tuple[OrderLeg, ...]


class RefusalCode(StrEnum):
    CUSTOM_STRATEGY = "custom_strategy"  # never auto-exited
    STRATEGY_MISMATCH = "strategy_mismatch"  # recorded strategy != what the legs make
    BAD_QUANTITY = "bad_quantity"  # zero or negative spreads
    MORE_THAN_TRADE = "more_than_trade"  # more spreads than the trade holds
    NOT_HELD = "not_held"  # a leg the broker does not hold for this trade, or held reversed
    MORE_THAN_HELD = "more_than_held"  # would open/flip: more than held for this trade
    BAD_PRICE = "bad_price"  # missing, zero, negative or off-tick limit
    MARKET_NOT_ALLOWED = "market_not_allowed"  # no limit and the plan forbids market orders
    LEG_COUNT = "leg_count"  # Tradier's multileg takes 2 to 4 legs


class ExitRefused(msgspec.Struct, frozen=True, kw_only=True):
    """Why no order was built: ``code`` for the router, ``reason`` for people and the audit."""

    code: RefusalCode
    reason: str


def closable_quantity(spread: Spread, held: Mapping[str, int]) -> int:
    """How many whole spreads could be closed right now without opening or flipping anything:
    for each leg, the contracts held the same way round divided by the leg's ratio; the least
    over legs, and never more than the trade's own quantity. 0 if any leg is not held (or is
    held the other way round). ``held`` maps OCC symbols to signed quantities attributed to
    this trade (negative = short)."""
    best = spread.quantity
    for leg, ratio in zip(spread.legs, spread.ratios, strict=True):
        signed = held.get(leg.occ, 0)
        same_way = signed * leg.sign  # > 0 when held the way the trade holds it
        best = min(best, max(same_way, 0) // ratio)
    return best


def build_exit_order(
    spread: Spread,
    strategy: Strategy,
    quantity: int,
    held: Mapping[str, int],
    limit_price: Decimal | None,
    *,
    allow_market: bool = False,
    tick: Decimal = DEFAULT_TICK,
) -> ExitOrder | ExitRefused:
    """The order closing ``quantity`` spreads of a trade, or why not.

    ``spread`` holds the trade's legs at its full quantity; ``strategy`` is the trade's recorded
    strategy (refused unless the legs still make it). ``held`` maps each OCC symbol to the
    signed quantity the broker holds **attributed to this trade** (negative = short); symbols
    of other legs are ignored. ``limit_price`` is the positive net per spread (close-price
    convention, on ``tick``); None asks for a market order, refused unless ``allow_market``.
    """
    refusal = _check_shape(spread, strategy, quantity)
    if refusal is None:
        refusal = _check_held(spread, quantity, held)
    if refusal is None:
        refusal = _check_price(limit_price, allow_market=allow_market, tick=tick)
    if refusal is not None:
        return refusal
    legs = tuple(
        OrderLeg(
            option_symbol=leg.occ,
            side=OrderLegSide.BUY_TO_CLOSE if leg.is_short else OrderLegSide.SELL_TO_CLOSE,
            quantity=ratio * quantity,
        )
        for leg, ratio in zip(spread.legs, spread.ratios, strict=True)
    )
    single = len(legs) == 1
    if limit_price is None:
        order_type = OrderType.MARKET
    elif single:
        order_type = OrderType.LIMIT
    else:
        order_type = OrderType.DEBIT if is_credit(strategy) else OrderType.CREDIT
    return ExitOrder(
        order_class=OrderClass.OPTION if single else OrderClass.MULTILEG,
        underlying=spread.underlying,
        order_type=order_type,
        quantity=quantity,
        limit_price=limit_price,
        legs=legs,
    )


def _check_shape(spread: Spread, strategy: Strategy, quantity: int) -> ExitRefused | None:
    if strategy is Strategy.CUSTOM or spread.strategy is Strategy.CUSTOM:
        return ExitRefused(
            code=RefusalCode.CUSTOM_STRATEGY,
            reason="custom spreads are mirrored, never auto-exited",
        )
    if spread.strategy is not strategy:
        return ExitRefused(
            code=RefusalCode.STRATEGY_MISMATCH,
            reason=f"trade recorded as {strategy} but its legs make {spread.strategy}",
        )
    if not (is_credit(strategy) or is_debit(strategy)) or not 1 <= len(spread.legs) <= 4:
        # Unreachable for the classified strategies today; kept so a new one cannot slip by.
        return ExitRefused(
            code=RefusalCode.LEG_COUNT,
            reason=f"{strategy} with {len(spread.legs)} legs cannot be closed in one order",
        )
    if quantity <= 0:
        return ExitRefused(code=RefusalCode.BAD_QUANTITY, reason=f"cannot close {quantity} spreads")
    if quantity > spread.quantity:
        return ExitRefused(
            code=RefusalCode.MORE_THAN_TRADE,
            reason=f"asked to close {quantity} spreads; the trade holds {spread.quantity}",
        )
    return None


def _check_held(spread: Spread, quantity: int, held: Mapping[str, int]) -> ExitRefused | None:
    for leg, ratio in zip(spread.legs, spread.ratios, strict=True):
        signed = held.get(leg.occ, 0)
        needed = ratio * quantity
        if signed == 0 or (signed < 0) != leg.is_short:
            way = "not held" if signed == 0 else f"held {signed:+d}, the other way round"
            return ExitRefused(
                code=RefusalCode.NOT_HELD,
                reason=f"{leg.occ} is {way} for this trade; the trade holds it {leg.side}",
            )
        if needed > abs(signed):
            return ExitRefused(
                code=RefusalCode.MORE_THAN_HELD,
                reason=(
                    f"closing {needed} of {leg.occ} would open or flip a position: "
                    f"{abs(signed)} held {leg.side} for this trade "
                    f"(at most {closable_quantity(spread, held)} spreads can be closed)"
                ),
            )
    return None


def _check_price(
    limit_price: Decimal | None, *, allow_market: bool, tick: Decimal
) -> ExitRefused | None:
    if limit_price is None:
        if allow_market:
            return None
        return ExitRefused(
            code=RefusalCode.MARKET_NOT_ALLOWED,
            reason="no limit price and the exit plan does not allow a market order",
        )
    if not limit_price.is_finite() or limit_price <= 0:
        return ExitRefused(
            code=RefusalCode.BAD_PRICE,
            reason=f"limit price {limit_price} is not a positive net price",
        )
    if limit_price % tick != 0:
        return ExitRefused(
            code=RefusalCode.BAD_PRICE,
            reason=f"limit price {limit_price} is not on the {tick} tick",
        )
    return None


# ---------------------------------------------------------------------------------------------
# Price walking
# ---------------------------------------------------------------------------------------------


def price_ladder(
    mark_close_price: Decimal,
    natural_close_price: Decimal,
    steps: int,
    cap_fraction: Decimal,
    tick: Decimal = DEFAULT_TICK,
) -> tuple[Decimal, ...]:
    """The limit prices an exit walks through, first to last, in the close-price convention.

    The cap is ``mark + cap_fraction x (natural - mark)``: 0 stays at the mark, 1 goes all the
    way to the natural (``cap_fraction`` must be within [0, 1]). Rung ``i`` of ``steps`` is
    ``mark + (cap - mark) x i / steps``; ``steps = 0`` gives the mark alone.

    Rounding: every rung is rounded to ``tick`` **toward the mark** (down when the natural is
    above the mark, as when paying a debit; up when it is below, as when receiving a credit), so
    no rung concedes more than it should and none passes the cap. The first rung is therefore
    the mark or a hair better. Equal neighbouring rungs are merged (no modification that moves
    nothing).

    Non-positive prices: a debit/credit/limit order cannot carry a price <= 0, so a rung <= 0
    becomes one ``tick``, the smallest price an order can carry. This is the one case a rung
    may pass the cap: closing a credit spread whose mark and natural say it would *pay* us to
    close it costs at most one tick per spread (the usual way to buy back a worthless spread).
    When closing a debit spread it only asks for more than the market offers (no overpaying).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not Decimal(0) <= cap_fraction <= Decimal(1):
        raise ValueError(f"cap_fraction must be within [0, 1], got {cap_fraction}")
    if tick <= 0:
        raise ValueError(f"tick must be positive, got {tick}")
    cap = mark_close_price + cap_fraction * (natural_close_price - mark_close_price)
    rounding = ROUND_FLOOR if natural_close_price >= mark_close_price else ROUND_CEILING
    rungs: list[Decimal] = []
    for i in range(steps + 1):
        if i == 0:
            raw = mark_close_price
        elif i == steps:
            raw = cap  # exactly, not through a division that could round past it
        else:
            raw = mark_close_price + (cap - mark_close_price) * i / steps
        price = (raw / tick).to_integral_value(rounding=rounding) * tick
        price = max(price, tick)
        if not rungs or price != rungs[-1]:
            rungs.append(price)
    return tuple(rungs)


# ---------------------------------------------------------------------------------------------
# Client order ids (sent as the broker tag)
# ---------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[A-Za-z0-9-]{1,200}")
_OURS = re.compile(rf"{CLIENT_ORDER_ID_PREFIX}-(\d+)-([A-Za-z0-9-]+)-(\d+)")


class ClientOrderId(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`parse_client_order_id` reads back from a tag. ``intent`` is the intent id
    as written in the tag (the intent id itself, or ``x`` + a digest when it was not
    tag-safe)."""

    trade_id: int
    intent: str
    attempt: int


def client_order_id(trade_id: int, intent_id: str, attempt: int) -> str:
    """The id of attempt ``attempt`` (1, 2, ... : each new order for one intent, not each
    re-price, which modifies the same order) at exiting ``trade_id`` for ``intent_id``.

    ``sw-<trade_id>-<intent>-<attempt>``: deterministic (the same inputs give the same id, so
    after a crash the engine recomputes it and finds the order by tag), and within Tradier's
    tag rule (at most 255 letters, digits and ``-``). ``<intent>`` is the intent id itself
    when it is 1-200 such characters, else ``x`` + 40 hex digits of its SHA-256 (still
    deterministic, still unique in practice)."""
    if trade_id < 0:
        raise ValueError(f"trade_id must be >= 0, got {trade_id}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if _SAFE.fullmatch(intent_id):
        intent = intent_id
    else:
        intent = "x" + hashlib.sha256(intent_id.encode()).hexdigest()[:40]
    return f"{CLIENT_ORDER_ID_PREFIX}-{trade_id}-{intent}-{attempt}"


def parse_client_order_id(tag: str | None) -> ClientOrderId | None:
    """Read one of our client order ids back from a broker tag; None for anything else (a
    person's order, an order without a tag)."""
    if tag is None:
        return None
    match = _OURS.fullmatch(tag)
    if match is None:
        return None
    return ClientOrderId(trade_id=int(match[1]), intent=match[2], attempt=int(match[3]))


# ---------------------------------------------------------------------------------------------
# What the broker holds for one trade
# ---------------------------------------------------------------------------------------------


def held_for_trade(
    spread: Spread, broker_net: Mapping[str, int], others: Sequence[Spread]
) -> dict[str, int]:
    """The signed quantity of each of ``spread``'s legs the broker holds **for this trade**.

    ``broker_net`` maps OCC symbols to the broker's signed net quantity; ``others`` are the
    account's other open trades (their legs at their quantities). The broker's net is expected
    to be the sum of every trade's signed legs, so this trade may claim what is left once the
    other trades' legs are taken out, in its own direction, and never more than its own leg:
    closing it can then never touch another trade's contracts, even on the same strikes. When
    the broker holds less than the trades claim, the shortfall is charged to this trade (the
    cautious side: an exit may close less, never someone else's position)."""
    claimed_by_others: dict[str, int] = {}
    for other in others:
        for leg in other.legs:
            claimed_by_others[leg.occ] = claimed_by_others.get(leg.occ, 0) + leg.signed_quantity
    held: dict[str, int] = {}
    for leg in spread.legs:
        left = broker_net.get(leg.occ, 0) - claimed_by_others.get(leg.occ, 0)
        same_way = max(0, min(left * leg.sign, leg.quantity))
        held[leg.occ] = same_way * leg.sign
    return held
