"""``spreadwatch status [--watch [SECONDS]] [--json]``: the open trades, read from the database.

One row per OPEN or CLOSING trade: strategy, quantity, entry, mark, P&L in dollars, how far the
P&L is from the stop and from the profit target (in dollars for the trade's quantity), the age of
the stalest leg quote, the time of the decision those figures come from ("as of"), and whether
spreadwatch manages the trade; under it the legs, and any order in flight (status, limit,
filled/quantity, age). A trade with no priced decision yet shows ``-`` for what needs one.

Thresholds come from the trade's exit plan as the watcher builds it (the strategy's defaults with
the trade's overrides) and the domain's own functions (:func:`engine.domain.exit_rules.
stop_loss_limit`, :mod:`engine.domain.pricing`): "to stop" is the stop's loss limit plus the P&L,
"to target" the target's profit minus the P&L; zero or less means the level is reached.

It reads the database ``run`` uses (:func:`engine.cli_db.open_configured_database`), trades of
``--account`` (default: the configured account id; every account when none is set). ``--json``
prints one JSON document (with ``--watch``, one per line); ``--watch`` redraws every SECONDS
(default 2) until Ctrl-C, and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from engine.cli_db import open_configured_database
from engine.config import Config
from engine.domain.exit_plan import ExitPlan, default_plan, plan_with_overrides
from engine.domain.exit_rules import stop_loss_limit
from engine.domain.exit_types import PositionFacts
from engine.domain.occ import OptionRight, OptionSymbol
from engine.domain.pricing import dollars, max_loss, max_profit
from engine.domain.spread import Side, Spread
from engine.domain.strategy import Strategy
from engine.errors import ConfigError

if TYPE_CHECKING:
    from storage.status import StatusSnapshot, TradeStatus, WorkingOrder

__all__ = [
    "InFlight",
    "LegView",
    "StatusDocument",
    "TradeView",
    "encode_json",
    "register",
    "render_table",
    "status_document",
    "trade_view",
]

_DEFAULT_INTERVAL: Final = 2.0
# stdout is the table: the JSON logs stay at warnings unless asked for.
_QUIET: Final = {"log.level": "warning"}
_CLEAR: Final = "\x1b[H\x1b[2J"
# The colour codes of engine.logview (tail), for the same meanings.
_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_GREEN: Final = "\x1b[32m"
_YELLOW: Final = "\x1b[33m"
_RED: Final = "\x1b[31m"
_CENT: Final = Decimal("0.01")

_json: Final = msgspec.json.Encoder(decimal_format="number")


# ---------------------------------------------------------------------------------------------
# What is shown: pure functions over storage.status rows
# ---------------------------------------------------------------------------------------------


class LegView(msgspec.Struct, frozen=True, kw_only=True):
    """One leg: its OCC symbol, long or short, and contracts held (the trade's quantity times
    the leg's ratio)."""

    symbol: str
    side: str
    quantity: int


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """An order of the trade that is not final, and how long ago it was recorded."""

    client_order_id: str
    purpose: str
    exit_action: str | None
    order_type: str
    limit_price: Decimal | None
    status: str
    quantity: int
    filled_quantity: int
    attempts: int
    age_seconds: float


class TradeView(msgspec.Struct, frozen=True, kw_only=True):
    """One trade as ``status`` shows it. Per-spread prices; ``pnl``, ``to_stop`` and
    ``to_target`` in dollars for the trade's quantity; None where there is nothing to show
    (no decision yet, a rule that is off, an unbounded max profit or loss)."""

    trade_id: int
    account_id: str
    underlying: str
    strategy: Strategy
    legs: tuple[LegView, ...]
    status: str
    quantity: int
    opening_quantity: int
    entry_price: Decimal
    origin: str
    managed: bool
    as_of: dt.datetime | None
    decision_kind: str | None
    mark: Decimal | None
    pnl: Decimal | None
    profit_fraction: Decimal | None
    loss_fraction: Decimal | None
    stop_loss_limit: Decimal | None  # loss per spread that breaches the stop
    profit_target_pnl: Decimal | None  # profit per spread that reaches the target
    to_stop: Decimal | None
    to_target: Decimal | None
    quote_age_seconds: float | None
    quote_stale: bool
    exit_in_flight: bool
    order: InFlight | None
    plan_error: str | None


class StatusDocument(msgspec.Struct, frozen=True, kw_only=True):
    """What ``--json`` prints: the read's time, the account asked for, the trades."""

    taken_at: dt.datetime
    account_id: str | None
    trades: tuple[TradeView, ...]


def _plan(trade: TradeStatus) -> tuple[ExitPlan | None, str | None]:
    """The plan the watcher uses for this trade (see actors.position_watcher), or why not."""
    try:
        return plan_with_overrides(default_plan(trade.strategy), trade.exit_plan), None
    except ConfigError as exc:
        return None, str(exc)


def _thresholds(trade: TradeStatus, plan: ExitPlan | None) -> tuple[Decimal | None, ...]:
    """(stop loss limit, target profit), per spread."""
    if plan is None:
        return None, None
    spread = Spread.from_legs(trade.legs, underlying=trade.underlying)
    position = PositionFacts(
        spread=spread,
        entry_price=trade.entry_price,
        opening_quantity=trade.opening_quantity,
        opened_at=trade.opened_at,
        managed=trade.managed,
    )
    stop = stop_loss_limit(plan, position, max_loss(spread, trade.entry_price))
    top = max_profit(spread, trade.entry_price)
    target = None if plan.profit_target is None or top is None else plan.profit_target * top
    return stop, target


def _in_flight(order: WorkingOrder | None, taken_at: dt.datetime) -> InFlight | None:
    if order is None:
        return None
    return InFlight(
        client_order_id=order.client_order_id,
        purpose=order.purpose,
        exit_action=order.exit_action,
        order_type=order.order_type,
        limit_price=order.limit_price,
        status=order.status,
        quantity=order.quantity,
        filled_quantity=order.filled_quantity,
        attempts=order.attempts,
        age_seconds=max(0.0, (taken_at - order.created_at).total_seconds()),
    )


def _cents(per_spread: Decimal, quantity: int) -> Decimal:
    """Dollars for ``quantity`` spreads, to the cent (a fraction of max profit can have more
    places than a price)."""
    return dollars(per_spread, quantity).quantize(_CENT)


def trade_view(trade: TradeStatus, taken_at: dt.datetime) -> TradeView:
    """The figures ``status`` shows for one trade (see the module docstring)."""
    plan, plan_error = _plan(trade)
    stop, target = _thresholds(trade, plan)
    decision = trade.decision
    pnl = None if decision is None else decision.pnl
    age = None
    if decision is not None and decision.quote_age_ms is not None:
        age = decision.quote_age_ms / 1000
    return TradeView(
        trade_id=trade.trade_id,
        account_id=trade.account_id,
        underlying=trade.underlying,
        strategy=trade.strategy,
        legs=tuple(
            LegView(symbol=leg.occ, side=leg.side.value, quantity=leg.quantity)
            for leg in trade.legs
        ),
        status=trade.status,
        quantity=trade.quantity,
        opening_quantity=trade.opening_quantity,
        entry_price=trade.entry_price,
        origin=trade.origin.value,
        managed=trade.managed,
        as_of=None if decision is None else decision.decided_at,
        decision_kind=None if decision is None else decision.kind,
        mark=None if decision is None else decision.mark,
        pnl=None if pnl is None else _cents(pnl, trade.quantity),
        profit_fraction=None if decision is None else decision.profit_fraction,
        loss_fraction=None if decision is None else decision.loss_fraction,
        stop_loss_limit=stop,
        profit_target_pnl=target,
        to_stop=None if stop is None or pnl is None else _cents(stop + pnl, trade.quantity),
        to_target=None if target is None or pnl is None else _cents(target - pnl, trade.quantity),
        quote_age_seconds=age,
        quote_stale=plan is not None and age is not None and age > plan.max_quote_age_seconds,
        exit_in_flight=trade.status == "CLOSING" or trade.order is not None,
        order=_in_flight(trade.order, taken_at),
        plan_error=plan_error,
    )


def status_document(snapshot: StatusSnapshot, account_id: str | None) -> StatusDocument:
    return StatusDocument(
        taken_at=snapshot.taken_at,
        account_id=account_id,
        trades=tuple(trade_view(trade, snapshot.taken_at) for trade in snapshot.trades),
    )


def encode_json(document: StatusDocument) -> str:
    """One line of JSON; prices and dollars as exact JSON numbers."""
    return _json.encode(document).decode()


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and code else text


def _price(value: Decimal | None) -> str:
    """At least two decimals, more only when the price has them (0.625 stays 0.625)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value == value.quantize(_CENT) else f"{value.normalize():f}"


def _money(value: Decimal | None, *, signed: bool) -> str:
    if value is None:
        return "-"
    return f"{value:+,.2f}" if signed else f"{value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 9.95:  # what would round to 10.0s is shown as 10s
        return f"{seconds:.1f}s"
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _as_of(when: dt.datetime | None, now: dt.datetime, tz: dt.tzinfo | None) -> str:
    if when is None:
        return "-"
    local = when.astimezone(tz)
    if local.date() == now.astimezone(tz).date():
        return f"{local:%H:%M:%S}"
    return f"{local:%m-%d %H:%M}"


def _strategy(strategy: Strategy) -> str:
    # A vertical's name says credit or debit already (a bull put is always a credit spread).
    return strategy.value.removesuffix("_credit").removesuffix("_debit").replace("_", " ")


def _legs_line(view: TradeView) -> str:
    """``SPY 2025-12-19 +395P -400P``: legs grouped by root and expiration; a ratio is shown
    as ``-2x400P``."""
    groups: dict[tuple[str, dt.date], list[str]] = {}
    for leg in view.legs:
        symbol = OptionSymbol.parse(leg.symbol)
        ratio = leg.quantity // view.quantity
        right = "C" if symbol.right is OptionRight.CALL else "P"
        text = f"{'-' if leg.side == Side.SHORT else '+'}{f'{ratio}x' if ratio > 1 else ''}"
        text += f"{symbol.strike}{right}"
        groups.setdefault((symbol.root, symbol.expiration), []).append(text)
    return "  ".join(
        f"{root} {expiration:%Y-%m-%d} {' '.join(legs)}"
        for (root, expiration), legs in groups.items()
    )


def _exit_line(view: TradeView) -> str | None:
    order = view.order
    if order is None:
        return "closing: no order working" if view.exit_in_flight else None
    kind = order.purpose if order.exit_action is None else f"{order.purpose} {order.exit_action}"
    limit = order.order_type if order.limit_price is None else f"{order.order_type} "
    limit += "" if order.limit_price is None else _price(order.limit_price)
    attempts = "attempt" if order.attempts == 1 else "attempts"
    return (
        f"{kind} {order.status}  {limit}  filled {order.filled_quantity}/{order.quantity}  "
        f"for {_duration(order.age_seconds)}  {order.attempts} {attempts}"
    )


_HEADERS: Final = (
    "ID", "SPREAD", "QTY", "ENTRY", "MARK", "P&L $", "TO STOP", "TO TARGET", "QUOTE", "AS OF",
    "MANAGED",
)  # fmt: skip
_LEFT: Final = frozenset({"SPREAD", "AS OF", "MANAGED"})

_Cell = tuple[str, str | None]  # text and colour


def _cells(view: TradeView, taken_at: dt.datetime, tz: dt.tzinfo | None) -> list[_Cell]:
    """One row, in :data:`_HEADERS` order. Red: a loss, or the stop reached; green: a profit,
    or the target reached; yellow: a stale quote; dim: a trade spreadwatch does not manage."""
    quantity = str(view.quantity)
    if view.quantity != view.opening_quantity:
        quantity += f"/{view.opening_quantity}"
    pnl_color = None if not view.pnl else (_GREEN if view.pnl > 0 else _RED)
    stop_reached = view.to_stop is not None and view.to_stop <= 0
    target_reached = view.to_target is not None and view.to_target <= 0
    return [
        (str(view.trade_id), None),
        (f"{view.underlying} {_strategy(view.strategy)}", None),
        (quantity, None),
        (_price(view.entry_price), None),
        (_price(view.mark), None),
        (_money(view.pnl, signed=True), pnl_color),
        (_money(view.to_stop, signed=False), _RED if stop_reached else None),
        (_money(view.to_target, signed=False), _GREEN if target_reached else None),
        (_duration(view.quote_age_seconds), _YELLOW if view.quote_stale else None),
        (_as_of(view.as_of, taken_at, tz), None),
        ("yes" if view.managed else "no", None if view.managed else _DIM),
    ]


def _line(
    cells: Sequence[_Cell], headers: Sequence[str], widths: Sequence[int], color: bool
) -> str:
    texts = [
        text.ljust(width) if header in _LEFT else text.rjust(width)
        for (text, _), header, width in zip(cells, headers, widths, strict=True)
    ]
    texts[-1] = texts[-1].rstrip()  # no trailing blanks
    return "  ".join(
        _paint(text, code, color) for text, (_, code) in zip(texts, cells, strict=True)
    )


def _title(document: StatusDocument, tz: dt.tzinfo | None) -> str:
    where = "" if document.account_id is None else f" in {document.account_id}"
    count = len(document.trades)
    what = "no open trades" if not count else f"{count} open trade{'s' if count > 1 else ''}"
    title = f"{what}{where} at {document.taken_at.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}"
    return title + ("; P&L and distances to stop and target in $" if count else "")


def render_table(
    document: StatusDocument, *, color: bool = False, tz: dt.tzinfo | None = None
) -> str:
    """The table (several lines, no trailing newline); no trades is one line saying so."""
    title = _title(document, tz)
    if not document.trades:
        return title
    # Several accounts (none asked for): each account's trades under a line naming it.
    many_accounts = len({view.account_id for view in document.trades}) > 1
    rows = [_cells(view, document.taken_at, tz) for view in document.trades]
    widths = [max(len(h), *(len(row[i][0]) for row in rows)) for i, h in enumerate(_HEADERS)]
    indent = " " * (widths[0] + 2)
    lines = [
        _paint(title, _BOLD, color),
        _line([(h, None) for h in _HEADERS], _HEADERS, widths, color),
    ]
    account = None
    for view, row in zip(document.trades, rows, strict=True):
        if many_accounts and view.account_id != account:
            account = view.account_id
            lines.append(_paint(f"account {account}", _BOLD, color))
        lines.append(_line(row, _HEADERS, widths, color))
        lines.append(_paint(f"{indent}legs  {_legs_line(view)}", _DIM, color))
        exit_line = _exit_line(view)
        if exit_line is not None:
            lines.append(_paint(f"{indent}exit  {exit_line}", _YELLOW, color))
        if view.plan_error is not None:
            lines.append(_paint(f"{indent}plan  {view.plan_error}", _RED, color))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the open trades: P&L, distance to stop and target, exits in flight",
        description="Show the open trades from the database: strategy, legs, quantity, entry, "
        "mark, P&L, distance to the stop and to the target, quote age, managed or not, and any "
        "exit in flight. Figures are as of each trade's latest decision.",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_positive_seconds,
        const=_DEFAULT_INTERVAL,
        default=None,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {_DEFAULT_INTERVAL:g}) until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document (per refresh)")
    parser.add_argument(
        "--account", default=None, help="this account (default: the configured account id)"
    )
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.set_defaults(handler=_status, config_defaults=_QUIET)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return seconds


def _frame(snapshot: StatusSnapshot, account_id: str | None, *, as_json: bool, color: bool) -> str:
    document = status_document(snapshot, account_id)
    if as_json:
        return encode_json(document)
    return render_table(document, color=color)


async def _status(args: argparse.Namespace, config: Config) -> int:
    from engine.cli_tail import use_color
    from storage import apply_migrations
    from storage.status import read_status

    account_id: str | None = args.account or config.broker.account_id or None
    tty = sys.stdout.isatty()
    color = not args.json and use_color(args.color, isatty=tty, environ=os.environ)
    async with open_configured_database(config) as db:
        await apply_migrations(db)
        if args.watch is None:
            snapshot = await read_status(db, account_id=account_id)
            print(_frame(snapshot, account_id, as_json=args.json, color=color), flush=True)
            return 0
        # Ctrl-C (or SIGTERM) ends the watch, not the program: the database is closed cleanly
        # and the exit status is 0.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                first = True
                while True:
                    snapshot = await read_status(db, account_id=account_id)
                    text = _frame(snapshot, account_id, as_json=args.json, color=color)
                    if not args.json:
                        # A terminal is redrawn; a pipe or file gets frames a blank line apart.
                        text = (_CLEAR if tty else "" if first else "\n") + text
                    print(text, flush=True)
                    first = False
                    await trio.sleep(args.watch)
    return 0


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return
