"""Tradier's wire format: small view Structs holding only the fields spreadwatch uses.

Tradier mixes types freely (stream quotes carry JSON numbers, trades carry strings, epoch
milliseconds arrive as strings), so every numeric field is decoded with ``strict=False``:
msgspec then accepts ``281.84`` and ``"281.84"`` alike, straight into ``Decimal`` without a
float in between. List answers collapse (one element comes back as a bare object) and empty
answers differ by endpoint (``"null"`` the string, JSON ``null``, or a missing key); every list
goes through :func:`as_list`, the one tolerant helper.

Anything that does not decode raises :class:`engine.errors.BrokerAnswerInvalid` naming what was
being read, never a bare msgspec error.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from engine.errors import BrokerAnswerInvalid

__all__ = [
    "AccountEvent",
    "ClockAnswer",
    "ErrorFrame",
    "Heartbeat",
    "OrderEvent",
    "OrderLeg",
    "OrderPreview",
    "OrderView",
    "PlacedOrder",
    "Position",
    "QuoteEvent",
    "RestQuote",
    "StreamEvent",
    "StreamSession",
    "SummaryEvent",
    "TimesaleEvent",
    "TradeEvent",
    "TradexEvent",
    "as_list",
    "decode_account_frame",
    "decode_clock",
    "decode_errors",
    "decode_market_frame",
    "decode_order",
    "decode_order_preview",
    "decode_orders",
    "decode_placed_order",
    "decode_positions",
    "decode_quotes",
    "decode_session",
]

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Market data stream events (one JSON object per event; several per frame with linebreak=true)
# ---------------------------------------------------------------------------------------------


class QuoteEvent(msgspec.Struct, tag_field="type", tag="quote", frozen=True):
    symbol: str
    bid: Decimal | None = None
    ask: Decimal | None = None
    bidsz: int | None = None
    asksz: int | None = None
    biddate: int | None = None  # epoch ms (a string on the wire)
    askdate: int | None = None


class TradeEvent(msgspec.Struct, tag_field="type", tag="trade", frozen=True):
    symbol: str
    price: Decimal | None = None
    size: int | None = None
    cvol: int | None = None
    date: int | None = None
    last: Decimal | None = None


class TradexEvent(TradeEvent, tag="tradex", frozen=True):
    """A trade with extended details; spreadwatch reads the same fields as a trade."""


class SummaryEvent(msgspec.Struct, tag_field="type", tag="summary", frozen=True):
    symbol: str
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    prev_close: Decimal | None = msgspec.field(default=None, name="prevClose")
    close: Decimal | None = None


class TimesaleEvent(msgspec.Struct, tag_field="type", tag="timesale", frozen=True):
    symbol: str
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    size: int | None = None
    date: int | None = None


class ErrorFrame(msgspec.Struct, frozen=True):
    """``{"error": "..."}``: Tradier's way of refusing a subscription or a session."""

    error: str


StreamEvent = QuoteEvent | TradeEvent | TradexEvent | SummaryEvent | TimesaleEvent

_stream_decoder = msgspec.json.Decoder(StreamEvent, strict=False)


class _Untagged(msgspec.Struct):
    type: str | None = None
    error: str | None = None


_untagged_decoder = msgspec.json.Decoder(_Untagged)


def decode_market_frame(frame: bytes | str) -> Iterator[StreamEvent | ErrorFrame]:
    """Yield the events of one WebSocket frame (one or several lines).

    Event kinds spreadwatch does not know are skipped; an ``{"error": ...}`` frame is yielded
    as :class:`ErrorFrame`; a line that is not JSON at all raises BrokerAnswerInvalid.
    """
    try:
        # The common case, every line a known event: the whole frame in one call.
        events = _stream_decoder.decode_lines(frame)
    except msgspec.MsgspecError:
        pass  # an error, an unknown kind or a bad line somewhere: line by line, below
    else:
        yield from events
        return
    data = frame.encode() if isinstance(frame, str) else frame
    lines = data.split(b"\n") if b"\n" in data else (data,)
    for line in lines:
        if not line.strip():
            continue
        try:
            yield _stream_decoder.decode(line)
        except msgspec.ValidationError:
            yield from _decode_untagged(line)
        except msgspec.DecodeError as exc:
            raise BrokerAnswerInvalid(f"market stream frame is not JSON: {line[:80]!r}") from exc


def _decode_untagged(line: bytes) -> Iterator[ErrorFrame]:
    try:
        other = _untagged_decoder.decode(line)
    except msgspec.MsgspecError as exc:
        raise BrokerAnswerInvalid(f"market stream event not understood: {line[:80]!r}") from exc
    if other.error is not None:
        yield ErrorFrame(error=other.error)
    elif other.type in _KNOWN_KINDS:
        # A known kind whose fields do not decode is a broken answer, not an unknown event.
        raise BrokerAnswerInvalid(f"malformed {other.type} event: {line[:120]!r}")
    # Unknown kinds are ignored: Tradier may add event types.


_KNOWN_KINDS = frozenset({"quote", "trade", "tradex", "summary", "timesale"})


# ---------------------------------------------------------------------------------------------
# Account (order) event stream
# ---------------------------------------------------------------------------------------------


class OrderEvent(msgspec.Struct, frozen=True):
    id: int
    status: str
    event: str = "order"
    type: str | None = None
    price: Decimal | None = None
    avg_fill_price: Decimal | None = None
    exec_quantity: Decimal | None = None
    executed_quantity: Decimal | None = None  # the field table's name; the example uses exec_
    last_fill_quantity: Decimal | None = None
    last_fill_price: Decimal | None = None
    remaining_quantity: Decimal | None = None
    transaction_date: str | None = None
    create_date: str | None = None
    account: str | None = None
    parent_id: int | None = None
    tag: str | None = None

    @property
    def filled_quantity(self) -> Decimal | None:
        return self.exec_quantity if self.exec_quantity is not None else self.executed_quantity


class Heartbeat(msgspec.Struct, frozen=True):
    event: str
    status: str | None = None
    timestamp: str | None = None


AccountEvent = OrderEvent | Heartbeat | ErrorFrame

_account_probe = msgspec.json.Decoder(dict[str, Any])
_order_event_decoder = msgspec.json.Decoder(OrderEvent, strict=False)
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def decode_account_frame(frame: bytes | str) -> AccountEvent | None:
    """Decode one account-stream frame; None for kinds spreadwatch does not follow."""
    data = frame.encode() if isinstance(frame, str) else frame
    try:
        probe = _account_probe.decode(data)
        if "error" in probe and "event" not in probe:
            return ErrorFrame(error=str(probe["error"]))
        event = probe.get("event")
        if event == "order":
            return _order_event_decoder.decode(data)
        if event == "heartbeat":
            return _heartbeat_decoder.decode(data)
    except msgspec.MsgspecError as exc:
        raise BrokerAnswerInvalid(f"account stream frame not understood: {data[:120]!r}") from exc
    return None


# ---------------------------------------------------------------------------------------------
# REST answers
# ---------------------------------------------------------------------------------------------


def as_list(value: Any, key: str | None = None) -> list[Any]:
    """Tradier's collapsing lists, made regular.

    ``{"position": [a, b]}`` -> [a, b]; ``{"position": a}`` -> [a]; ``"null"``, ``None``,
    a missing key or an empty string -> []. ``key`` names the inner element (``"position"``).
    """
    if value is None or value == "null" or value == "":
        return []
    if key is not None:
        if not isinstance(value, dict):
            raise BrokerAnswerInvalid(f"expected an object holding {key!r}, got {value!r:.80}")
        value = value.get(key)
        if value is None or value == "null":
            return []
    return value if isinstance(value, list) else [value]


class StreamSession(msgspec.Struct, frozen=True):
    sessionid: str
    url: str | None = None


class Position(msgspec.Struct, frozen=True):
    symbol: str
    quantity: Decimal
    cost_basis: Decimal
    id: int | None = None
    date_acquired: str | None = None


class RestQuote(msgspec.Struct, frozen=True):
    symbol: str
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    bidsize: int | None = None
    asksize: int | None = None
    bid_date: int | None = None
    ask_date: int | None = None
    underlying: str | None = None
    strike: Decimal | None = None
    option_type: str | None = None
    expiration_date: str | None = None


class OrderLeg(msgspec.Struct, frozen=True):
    option_symbol: str | None = None
    side: str | None = None
    quantity: Decimal | None = None
    status: str | None = None
    exec_quantity: Decimal | None = None
    avg_fill_price: Decimal | None = None


class OrderView(msgspec.Struct, frozen=True):
    id: int
    status: str
    type: str | None = None
    side: str | None = None
    symbol: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    avg_fill_price: Decimal | None = None
    exec_quantity: Decimal | None = None
    last_fill_price: Decimal | None = None
    last_fill_quantity: Decimal | None = None
    remaining_quantity: Decimal | None = None
    create_date: str | None = None
    transaction_date: str | None = None
    option_symbol: str | None = None
    reason_description: str | None = None
    tag: str | None = None
    leg: Any = None  # collapsing list of OrderLeg; read through .legs
    # The name Tradier uses for the order's class; ``class`` is a keyword in Python.
    order_class: str | None = msgspec.field(default=None, name="class")

    @property
    def legs(self) -> list[OrderLeg]:
        return [msgspec.convert(x, OrderLeg, strict=False) for x in as_list(self.leg)]


class PlacedOrder(msgspec.Struct, frozen=True):
    id: int
    status: str
    partner_id: str | None = None


class OrderPreview(msgspec.Struct, frozen=True):
    """The answer to ``preview=true``: the order was validated, not placed (no id)."""

    status: str
    result: bool | None = None
    cost: Decimal | None = None
    order_cost: Decimal | None = None
    commission: Decimal | None = None
    fees: Decimal | None = None
    margin_change: Decimal | None = None
    quantity: Decimal | None = None
    type: str | None = None
    price: Decimal | None = None
    strategy: str | None = None
    order_class: str | None = msgspec.field(default=None, name="class")


class ClockAnswer(msgspec.Struct, frozen=True):
    date: str
    state: str
    timestamp: int
    description: str | None = None
    next_change: str | None = None
    next_state: str | None = None


_json = msgspec.json.Decoder(dict[str, Any])


def _body(data: bytes, what: str) -> dict[str, Any]:
    try:
        return _json.decode(data)
    except msgspec.MsgspecError as exc:
        raise BrokerAnswerInvalid(f"{what}: answer is not a JSON object: {data[:120]!r}") from exc


def _convert(value: Any, type_: type[T], what: str) -> T:
    try:
        return msgspec.convert(value, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise BrokerAnswerInvalid(f"{what}: {exc}") from exc


def decode_errors(data: bytes) -> tuple[str, ...] | None:
    """The reasons of an ``{"errors": {"error": ...}}`` body (HTTP 200 rejections), else None."""
    try:
        body = _json.decode(data)
    except msgspec.MsgspecError:
        return None
    errors = body.get("errors")
    if errors is None:
        return None
    return tuple(str(e) for e in as_list(errors, "error")) or ("rejected without a reason",)


def decode_session(data: bytes) -> StreamSession:
    body = _body(data, "stream session")
    if "stream" not in body:
        raise BrokerAnswerInvalid(f"stream session: no 'stream' in answer {data[:120]!r}")
    return _convert(body["stream"], StreamSession, "stream session")


def decode_positions(data: bytes) -> list[Position]:
    """``{"positions": {"position": [...] | {...}}}``, or ``{"positions": "null"}`` when none.

    A body without the ``positions`` key is a broken answer (raised), never "no positions":
    believing an empty mirror is how the replaced systems wiped their state.
    """
    body = _body(data, "positions")
    if "positions" not in body:
        raise BrokerAnswerInvalid(f"positions: no 'positions' key in answer {data[:120]!r}")
    return [_convert(p, Position, "positions") for p in as_list(body["positions"], "position")]


def decode_quotes(data: bytes) -> list[RestQuote]:
    body = _body(data, "quotes")
    if "quotes" not in body:
        raise BrokerAnswerInvalid(f"quotes: no 'quotes' key in answer {data[:120]!r}")
    return [_convert(q, RestQuote, "quotes") for q in as_list(body["quotes"], "quote")]


def decode_orders(data: bytes) -> list[OrderView]:
    body = _body(data, "orders")
    if "orders" not in body:
        raise BrokerAnswerInvalid(f"orders: no 'orders' key in answer {data[:120]!r}")
    return [_convert(o, OrderView, "orders") for o in as_list(body["orders"], "order")]


def decode_order(data: bytes) -> OrderView:
    body = _body(data, "order")
    if not isinstance(body.get("order"), dict):
        raise BrokerAnswerInvalid(f"order: no 'order' object in answer {data[:120]!r}")
    return _convert(body["order"], OrderView, "order")


def decode_placed_order(data: bytes) -> PlacedOrder:
    body = _body(data, "placed order")
    if not isinstance(body.get("order"), dict):
        raise BrokerAnswerInvalid(f"placed order: no 'order' object in answer {data[:120]!r}")
    return _convert(body["order"], PlacedOrder, "placed order")


def decode_order_preview(data: bytes) -> OrderPreview:
    body = _body(data, "order preview")
    if not isinstance(body.get("order"), dict):
        raise BrokerAnswerInvalid(f"order preview: no 'order' object in answer {data[:120]!r}")
    return _convert(body["order"], OrderPreview, "order preview")


def decode_clock(data: bytes) -> ClockAnswer:
    body = _body(data, "clock")
    if not isinstance(body.get("clock"), dict):
        raise BrokerAnswerInvalid(f"clock: no 'clock' object in answer {data[:120]!r}")
    return _convert(body["clock"], ClockAnswer, "clock")


def decode_profile_accounts(data: bytes) -> tuple[str, ...]:
    """The account numbers of ``/user/profile``: ``profile.account`` is one object for one
    account and a list for several (the usual Tradier collapse)."""
    body = _body(data, "user profile")
    profile = body.get("profile")
    if not isinstance(profile, dict):
        raise BrokerAnswerInvalid(f"user profile: no 'profile' object in answer {data[:120]!r}")
    accounts = profile.get("account")
    listed = accounts if isinstance(accounts, list) else [accounts] if accounts else []
    numbers = [a.get("account_number") for a in listed if isinstance(a, dict)]
    if not numbers or not all(isinstance(n, str) and n for n in numbers):
        raise BrokerAnswerInvalid(f"user profile: no account numbers in answer {data[:120]!r}")
    return tuple(str(n) for n in numbers)
