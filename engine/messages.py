"""Every message that crosses between actors, grouped by direction (DESIGN section 2).

Messages are frozen msgspec Structs tagged with their class name, keyword-only. The union type
alias under each banner is the contract of that channel: a receiver dispatches with ``match`` and
ends with ``assert_never``. Commands are imperative (``CancelOrder``), events past tense
(``OrderFilled``); records (``*Record``) go to the AuditWriter.

Conventions (the same in every message):

- **Ids.** ``trade_id: int`` is the ``trades`` table's key. ``client_order_id: str`` is the id we
  give an order and send as the broker ``tag``; ``broker_order_id: str`` is the broker's (Tradier
  sends numbers, Alpaca UUIDs, so it is text), None until the broker has answered.
  ``intent_id: str`` names one exit decision. ``account_id: str`` is the broker account.
- **Prices and money** are ``Decimal``, never float. Prices are per share and per ONE spread. A
  ``*_close_price`` follows :mod:`engine.domain.pricing`'s price convention: the positive debit
  paid to close a credit spread, the positive credit received to close a debit spread;
  ``entry_price`` is the positive credit received / debit paid at entry. Dollar amounts (price x
  quantity x 100) say so in the name (``realized_pnl_dollars``).
- **Quantities** of contracts and of spreads are ``int``: whole contracts are exact integers, and a
  fractional quantity is not an option position (the broker adapters reject it at the boundary).
- **Times.** ``*_at: datetime`` is an aware UTC wall-clock time for facts the engine records.
  Broker timestamps on market data (``bid_at``, ``ask_at``, ``traded_at``) are ``int`` epoch
  milliseconds as the broker sent them. ``received_at: float`` is ``trio.current_time()`` when the
  engine received a quote: it measures quote ages and latency in-process (virtual under the
  autojump clock) and is never persisted as a wall time.
- **Free-form dicts** (exit-plan overrides, thresholds, event details) hold JSON values. They go
  through :func:`encode` / :func:`decode` with Decimals as JSON numbers, and come back as
  ``Decimal`` (a Decimal with no fractional digits, e.g. ``Decimal("2")``, comes back as the equal
  ``int``).

:func:`encode` and :func:`decode` are the one JSON encoder/decoder pair for messages: storage
(jsonb columns, the audit journal) and tests use them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar, get_args, overload

import msgspec

from engine.domain.spread import Leg, Spread
from engine.domain.strategy import Strategy

__all__ = [
    "MESSAGE_TYPES",
    "AnyMessage",
    "AuditRecord",
    "CancelOrder",
    "CloseReason",
    "CloseTradeNow",
    "ControlCommand",
    "Decision",
    "DecisionRecord",
    "EngineEventRecord",
    "ExitAction",
    "ExitIntent",
    "ExitIntentDeclined",
    "FeedEvent",
    "FeedState",
    "FeedStatusChanged",
    "Fill",
    "Halt",
    "Message",
    "OrderAccepted",
    "OrderCanceled",
    "OrderEvent",
    "OrderExpired",
    "OrderFilled",
    "OrderLeg",
    "OrderLegSide",
    "OrderPartiallyFilled",
    "OrderRejected",
    "OrderRepriced",
    "OrderSubmitted",
    "OrderType",
    "Quote",
    "QuoteSnapshot",
    "RefreshPositions",
    "ReleaseSymbols",
    "RepriceOrder",
    "Resume",
    "RouterCommand",
    "RouterEvent",
    "SpreadBackInSync",
    "SpreadClosed",
    "SpreadLifecycle",
    "SpreadOpened",
    "SpreadOutOfSync",
    "SpreadQuantityChanged",
    "SubscriptionCommand",
    "TradeOrigin",
    "TradePrint",
    "TradeSnapshot",
    "WantSymbols",
    "WatcherEvent",
    "decode",
    "encode",
]


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of every message and of the values nested in them: frozen, tagged with the class
    name (``{"type": "OrderFilled", ...}``), keyword-only."""


# ---------------------------------------------------------------------------------------------
# Closed sets of values
# ---------------------------------------------------------------------------------------------


class FeedState(StrEnum):
    CONNECTED = "connected"  # streaming, frames arriving
    STALE = "stale"  # connected but silent past the limit; a reconnect follows
    DISCONNECTED = "disconnected"  # no market data at all right now
    POLLING = "polling"  # no stream available; quotes come from REST polling


class TradeOrigin(StrEnum):
    # Values spelled as in the trades table (DESIGN names this set in capitals).
    ENGINE = "ENGINE"  # opened by an order the engine sent
    MANUAL = "MANUAL"  # entered by a person through the engine (e.g. a seeded trade)
    IMPORTED = "IMPORTED"  # found at the broker and adopted


class ExitAction(StrEnum):
    # Values spelled as in the orders and decisions tables.
    PARTIAL = "PARTIAL"  # close part of the position (a scale-out tier)
    FULL = "FULL"  # close everything the trade holds


class CloseReason(StrEnum):
    """Why a trade closed: the values of ``trades.close_reason``. The exit rules' reasons are
    the rule names in capitals; the rest say what happened outside the exit rules."""

    PROFIT_TARGET = "PROFIT_TARGET"
    STOP_LOSS = "STOP_LOSS"
    TRAILING_PROFIT = "TRAILING_PROFIT"
    SCALE_OUT = "SCALE_OUT"
    DTE = "DTE"
    EXPIRATION_DAY = "EXPIRATION_DAY"
    LOW_VALUE = "LOW_VALUE"
    IV_CRUSH = "IV_CRUSH"
    UNDERLYING_BREACH = "UNDERLYING_BREACH"
    UNDERLYING_MOVE = "UNDERLYING_MOVE"
    UNDERLYING_SPIKE = "UNDERLYING_SPIKE"
    MAX_DAYS = "MAX_DAYS"
    SHORT_DELTA = "SHORT_DELTA"
    VIX_REGIME = "VIX_REGIME"
    GAMMA_FLIP = "GAMMA_FLIP"
    MANUAL = "MANUAL"  # CloseTradeNow
    PHANTOM = "PHANTOM"  # vanished at the broker, confirmed; no P&L invented
    EXTERNAL = "EXTERNAL"  # closed at the broker outside the engine
    EXPIRED = "EXPIRED"
    ASSIGNED = "ASSIGNED"


class Decision(StrEnum):
    HOLD = "hold"  # no rule fired (recorded as a sampled snapshot)
    EXIT = "exit"  # a rule fired and an exit is intended
    HELD_BY_GUARD = "held_by_guard"  # a rule would fire, but a quote guard held it back


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"  # single-leg orders
    DEBIT = "debit"  # multileg: pay to close a credit spread
    CREDIT = "credit"  # multileg: receive to close a debit spread
    EVEN = "even"


class OrderLegSide(StrEnum):
    BUY_TO_OPEN = "buy_to_open"
    BUY_TO_CLOSE = "buy_to_close"
    SELL_TO_OPEN = "sell_to_open"
    SELL_TO_CLOSE = "sell_to_close"


# ---------------------------------------------------------------------------------------------
# Values nested in messages
# ---------------------------------------------------------------------------------------------


class TradeSnapshot(Message, frozen=True, kw_only=True):
    """What a PositionWatcher needs to start watching one trade (its state that must survive a
    restart included). ``legs`` hold the trade's whole quantity (``quantity`` spreads);
    ``exit_plan`` holds only this trade's overrides of its strategy's default plan, as JSON
    values keyed by plan field name. ``high_water_mark`` is the highest profit fraction seen
    (for the trailing-profit rule), ``fired_tiers`` the indices of the scale-out tiers already
    fired, ``entry_iv`` the short leg's implied volatility at entry."""

    trade_id: int
    account_id: str
    underlying: str
    strategy: Strategy
    legs: tuple[Leg, ...]
    quantity: int
    opening_quantity: int
    entry_price: Decimal
    origin: TradeOrigin
    managed: bool
    exit_plan: dict[str, Any] = {}
    high_water_mark: Decimal | None = None
    fired_tiers: tuple[int, ...] = ()
    entry_iv: Decimal | None = None
    opened_at: dt.datetime

    def spread(self) -> Spread:
        """The domain spread of these legs (classified afresh, canonically sorted)."""
        return Spread.from_legs(self.legs, underlying=self.underlying)


class QuoteSnapshot(Message, frozen=True, kw_only=True):
    """One quote as a decision saw it, for the audit record: enough to replay the decision."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None = None
    bid_at: int | None = None  # broker epoch ms
    ask_at: int | None = None  # broker epoch ms
    age_ms: int | None = None  # how old the quote was when the decision was made


class OrderLeg(Message, frozen=True, kw_only=True):
    """One leg of an order as sent to the broker."""

    option_symbol: str
    side: OrderLegSide
    quantity: int


# ---------------------------------------------------------------------------------------------
# QuoteStream -> PositionWatchers: market data and feed state (quotes are state: newest wins)
# ---------------------------------------------------------------------------------------------


class Quote(Message, frozen=True, kw_only=True):
    """The top of the book for one symbol (an option or an underlying). A side the broker did
    not quote is None; a zero bid is a real quote."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    bid_size: int = 0
    ask_size: int = 0
    bid_at: int | None = None  # broker epoch ms
    ask_at: int | None = None  # broker epoch ms
    received_at: float  # trio.current_time() on arrival


class TradePrint(Message, frozen=True, kw_only=True):
    """A trade printed on the tape for one symbol."""

    symbol: str
    last: Decimal
    size: int
    traded_at: int | None = None  # broker epoch ms
    received_at: float  # trio.current_time() on arrival


class FeedStatusChanged(Message, frozen=True, kw_only=True):
    """The market-data feed changed state; ``reason`` says why, for people."""

    state: FeedState
    reason: str
    at: dt.datetime


FeedEvent: TypeAlias = Quote | TradePrint | FeedStatusChanged


# ---------------------------------------------------------------------------------------------
# WatcherPool / PositionWatchers -> QuoteStream: which symbols each owner needs
# ---------------------------------------------------------------------------------------------


class WantSymbols(Message, frozen=True, kw_only=True):
    """``owner`` (a watcher's key, e.g. ``"trade:42"``) now needs exactly ``symbols`` (legs and
    underlying): it replaces the owner's previous set. QuoteStream subscribes to the union over
    all owners and delivers each symbol's quotes to every owner that wants it. How quotes reach
    an owner (its mailbox) is QuoteStream's API, not a message: endpoints are not data."""

    owner: str
    symbols: frozenset[str]


class ReleaseSymbols(Message, frozen=True, kw_only=True):
    """``owner`` needs nothing any more (its watcher stopped)."""

    owner: str


SubscriptionCommand: TypeAlias = WantSymbols | ReleaseSymbols


# ---------------------------------------------------------------------------------------------
# PortfolioMirror -> WatcherPool: spread lifecycle
# ---------------------------------------------------------------------------------------------


class SpreadOpened(Message, frozen=True, kw_only=True):
    """A managed spread is open (newly seen, adopted, or found at start): watch it."""

    trade: TradeSnapshot


class SpreadQuantityChanged(Message, frozen=True, kw_only=True):
    """The broker now holds a different number of spreads for this trade (a partial exit, an
    add). ``legs`` are the trade's legs at the new quantity."""

    trade_id: int
    quantity: int
    previous_quantity: int
    legs: tuple[Leg, ...]
    at: dt.datetime


class SpreadClosed(Message, frozen=True, kw_only=True):
    """The trade is closed: stop its watcher. ``realized_pnl_dollars`` is None when no P&L can
    be known (a phantom)."""

    trade_id: int
    reason: CloseReason
    realized_pnl_dollars: Decimal | None
    at: dt.datetime


class SpreadOutOfSync(Message, frozen=True, kw_only=True):
    """Some of the trade's legs are gone at the broker while others remain: the watcher keeps
    watching but proposes no exit until :class:`SpreadBackInSync`."""

    trade_id: int
    missing_symbols: frozenset[str]
    at: dt.datetime


class SpreadBackInSync(Message, frozen=True, kw_only=True):
    """Every leg of the trade is held again."""

    trade_id: int
    at: dt.datetime


SpreadLifecycle: TypeAlias = (
    SpreadOpened | SpreadQuantityChanged | SpreadClosed | SpreadOutOfSync | SpreadBackInSync
)


# ---------------------------------------------------------------------------------------------
# PositionWatcher -> OrderRouter: exit intents; anyone -> OrderRouter: order commands
# ---------------------------------------------------------------------------------------------


class ExitIntent(Message, frozen=True, kw_only=True):
    """A watcher decided to exit ``quantity`` spreads of a trade. ``rule`` names the decision
    (the first rule that fired), ``rules_fired`` all that fired. The prices are per spread in
    the close-price convention, None when the quotes gave none (a manual close may still be
    routed). In dry run the router records the intent and sends nothing."""

    intent_id: str
    trade_id: int
    action: ExitAction
    quantity: int
    rule: str
    decision_id: uuid.UUID | None = None  # the DecisionRecord of this decision
    rules_fired: tuple[str, ...]
    mark_close_price: Decimal | None
    natural_close_price: Decimal | None
    decided_at: dt.datetime
    dry_run: bool


class CancelOrder(Message, frozen=True, kw_only=True):
    """Cancel one working order."""

    client_order_id: str
    trade_id: int
    reason: str


class RepriceOrder(Message, frozen=True, kw_only=True):
    """Move one working order's limit (per spread, close-price convention)."""

    client_order_id: str
    trade_id: int
    limit_price: Decimal


# ---------------------------------------------------------------------------------------------
# Control: operator (CLI, via the database) -> engine
# ---------------------------------------------------------------------------------------------


class Halt(Message, frozen=True, kw_only=True):
    """Send no new order until Resume. Working orders are left alone; watching goes on."""

    reason: str
    requested_at: dt.datetime


class Resume(Message, frozen=True, kw_only=True):
    """Lift a Halt."""

    reason: str
    requested_at: dt.datetime


class CloseTradeNow(Message, frozen=True, kw_only=True):
    """Exit one trade now through the normal path (its watcher emits an ExitIntent)."""

    trade_id: int
    reason: str
    requested_at: dt.datetime


class RefreshPositions(Message, frozen=True, kw_only=True):
    """Re-read the broker's positions now (after a fill, or on request)."""

    reason: str
    trade_id: int | None = None


ControlCommand: TypeAlias = Halt | Resume | CloseTradeNow | RefreshPositions
RouterCommand: TypeAlias = ExitIntent | CancelOrder | RepriceOrder | Halt | Resume


# ---------------------------------------------------------------------------------------------
# OrderRouter -> PositionWatchers / PortfolioMirror: order events and fills (never dropped)
# ---------------------------------------------------------------------------------------------


class ExitIntentDeclined(Message, frozen=True, kw_only=True):
    """The router will not act on an intent (halted, dry run, an exit already working, trade
    not managed, nothing held); the watcher may decide again later."""

    intent_id: str
    trade_id: int
    reason: str
    at: dt.datetime


class OrderSubmitted(Message, frozen=True, kw_only=True):
    """An order was recorded and sent; the broker has not answered yet. ``quantity`` is in
    spreads; ``limit_price`` is per spread (None for a market order)."""

    client_order_id: str
    trade_id: int
    intent_id: str
    action: ExitAction
    quantity: int
    order_type: OrderType
    limit_price: Decimal | None
    legs: tuple[OrderLeg, ...]
    at: dt.datetime


class OrderAccepted(Message, frozen=True, kw_only=True):
    """The broker took the order and gave it an id; it is working."""

    client_order_id: str
    broker_order_id: str
    trade_id: int
    at: dt.datetime


class OrderRepriced(Message, frozen=True, kw_only=True):
    """The working order's limit moved (toward the natural price)."""

    client_order_id: str
    broker_order_id: str
    trade_id: int
    previous_price: Decimal | None
    limit_price: Decimal
    at: dt.datetime


class OrderPartiallyFilled(Message, frozen=True, kw_only=True):
    """Part of the order filled. Quantities are in spreads and cumulative; ``avg_fill_price``
    is the net per-spread price over everything filled so far."""

    client_order_id: str
    broker_order_id: str
    trade_id: int
    quantity: int
    filled_quantity: int
    remaining_quantity: int
    avg_fill_price: Decimal
    at: dt.datetime


class OrderFilled(Message, frozen=True, kw_only=True):
    """The whole order filled."""

    client_order_id: str
    broker_order_id: str
    trade_id: int
    filled_quantity: int
    avg_fill_price: Decimal
    at: dt.datetime


class OrderCanceled(Message, frozen=True, kw_only=True):
    """The order is canceled; ``filled_quantity`` spreads had filled before (0 if none)."""

    client_order_id: str
    broker_order_id: str | None
    trade_id: int
    filled_quantity: int
    reason: str
    at: dt.datetime


class OrderRejected(Message, frozen=True, kw_only=True):
    """The broker refused the order (``reason`` holds its words)."""

    client_order_id: str
    broker_order_id: str | None
    trade_id: int
    reason: str
    at: dt.datetime


class OrderExpired(Message, frozen=True, kw_only=True):
    """The order expired at the broker (end of day); ``filled_quantity`` filled before."""

    client_order_id: str
    broker_order_id: str | None
    trade_id: int
    filled_quantity: int
    at: dt.datetime


class Fill(Message, frozen=True, kw_only=True):
    """One execution of one leg: ``quantity`` contracts at ``price`` per share."""

    client_order_id: str
    broker_order_id: str
    trade_id: int
    option_symbol: str
    side: OrderLegSide
    quantity: int
    price: Decimal
    at: dt.datetime


OrderEvent: TypeAlias = (
    ExitIntentDeclined
    | OrderSubmitted
    | OrderAccepted
    | OrderRepriced
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCanceled
    | OrderRejected
    | OrderExpired
    | Fill
)

# What OrderRouter sends to WatcherPool, on one channel so that a trade's accounting (its new
# quantity, or its close) reaches the watcher before the order event that caused it.
RouterEvent: TypeAlias = OrderEvent | SpreadQuantityChanged | SpreadClosed

# What WatcherPool forwards to one PositionWatcher (quotes come through QuoteStream's mailbox).
WatcherEvent: TypeAlias = (
    SpreadQuantityChanged | SpreadClosed | SpreadOutOfSync | SpreadBackInSync | CloseTradeNow
) | OrderEvent


# ---------------------------------------------------------------------------------------------
# Any actor -> AuditWriter: audit records (append-only, never dropped)
# ---------------------------------------------------------------------------------------------


class DecisionRecord(Message, frozen=True, kw_only=True):
    """One exit decision and everything that produced it, so that it can be replayed.

    ``rule`` is the deciding rule (None for a hold), ``guard`` the quote guard that held an
    exit back (None otherwise). ``legs`` are the leg quotes in the spread's leg order.
    Prices and ``pnl`` are per spread; ``quantity`` is the spreads held, ``exit_quantity`` the
    spreads to close (None for a hold). ``thresholds`` are the plan values the rules compared
    against; ``rule_version`` names the exit-plan code that decided. ``decision_id`` is made
    with the record, so a journal replay can skip what already reached the database, and an
    ExitIntent can point at it."""

    decision_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    trade_id: int
    decision: Decision
    rule: str | None
    rules_fired: tuple[str, ...]
    guard: str | None = None
    legs: tuple[QuoteSnapshot, ...]
    underlying: QuoteSnapshot | None
    mark_close_price: Decimal | None
    natural_close_price: Decimal | None
    pnl: Decimal | None
    profit_fraction: Decimal | None
    loss_fraction: Decimal | None
    quantity: int
    exit_action: ExitAction | None = None
    exit_quantity: int | None = None
    thresholds: dict[str, Any] = {}
    rule_version: str
    dry_run: bool
    at: dt.datetime


class EngineEventRecord(Message, frozen=True, kw_only=True):
    """An engine event worth keeping (a restart, a reconnect, a reconciliation finding and what
    was done). ``kind`` is dotted lower_snake (``quote_stream.reconnected``); ``level`` one of
    DEBUG, INFO, WARNING, ERROR, CRITICAL; ``action_taken`` what the engine did about it."""

    event_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    kind: str
    actor: str
    level: str = "INFO"
    trade_id: int | None = None
    client_order_id: str | None = None
    symbol: str | None = None
    message: str | None = None
    action_taken: str | None = None
    detail: dict[str, Any] = {}
    at: dt.datetime


AuditRecord: TypeAlias = DecisionRecord | EngineEventRecord


# ---------------------------------------------------------------------------------------------
# Every message, and the one encoder/decoder pair
# ---------------------------------------------------------------------------------------------

AnyMessage: TypeAlias = (
    FeedEvent
    | SubscriptionCommand
    | SpreadLifecycle
    | ExitIntent
    | CancelOrder
    | RepriceOrder
    | ControlCommand
    | OrderEvent
    | AuditRecord
)
MESSAGE_TYPES: tuple[type[Message], ...] = get_args(AnyMessage)
"""Every type that travels on a channel (not the values nested in them)."""

T = TypeVar("T")

# Decimals go out as JSON numbers so that ones inside free-form dicts come back as Decimal
# (float_hook) instead of strings; typed Decimal fields decode from numbers exactly.
_encoder = msgspec.json.Encoder(decimal_format="number")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(message: object) -> bytes:
    """JSON bytes of a message (or any value made of messages and builtins)."""
    return _encoder.encode(message)


@overload
def decode(data: bytes | str) -> AnyMessage: ...
@overload
def decode(data: bytes | str, type: type[T]) -> T: ...
@overload
def decode(data: bytes | str, type: Any) -> Any: ...
def decode(data: bytes | str, type: Any = AnyMessage) -> Any:
    """Decode JSON into ``type`` (default: any message, chosen by its tag). A channel's union
    alias works as ``type``. Raises msgspec.ValidationError / DecodeError on bad input."""
    decoder = _decoders.get(type)
    if decoder is None:
        decoder = _decoders[type] = msgspec.json.Decoder(type, float_hook=Decimal)
    return decoder.decode(data)
