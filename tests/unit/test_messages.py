"""Every message type round-trips through the one encoder/decoder, exactly."""

from __future__ import annotations

import datetime as dt
import inspect
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from engine import messages as m
from engine.domain import Leg, Strategy

AT = dt.datetime(2025, 6, 20, 19, 50, 0, 123456, tzinfo=dt.UTC)
LEGS = (
    Leg.from_position("SPY250620P00495000", 2),
    Leg.from_position("SPY250620P00500000", -2),
)
TRADE = m.TradeSnapshot(
    trade_id=42,
    account_id="VA000001",
    underlying="SPY",
    strategy=Strategy.BULL_PUT_CREDIT,
    legs=LEGS,
    quantity=2,
    opening_quantity=3,
    entry_price=Decimal("1.55"),
    origin=m.TradeOrigin.IMPORTED,
    managed=True,
    exit_plan={
        "profit_target": Decimal("0.65"),
        "stop_loss_debounce_ticks": 5,
        "scale_out": [[Decimal("0.25"), Decimal("0.5")]],
        "note": "from the seed",
    },
    high_water_mark=Decimal("0.3125"),
    fired_tiers=(0,),
    entry_iv=Decimal("0.1834"),
    opened_at=AT,
)
QUOTE_SNAPSHOT = m.QuoteSnapshot(
    symbol="SPY250620P00500000",
    bid=Decimal("0"),
    ask=Decimal("0.05"),
    bid_at=1750448999000,
    ask_at=1750449000000,
    age_ms=12,
)
ORDER_LEG = m.OrderLeg(
    option_symbol="SPY250620P00500000", side=m.OrderLegSide.BUY_TO_CLOSE, quantity=2
)

EXAMPLES: list[m.Message] = [
    # values nested in messages
    TRADE,
    QUOTE_SNAPSHOT,
    ORDER_LEG,
    # QuoteStream -> watchers
    m.Quote(
        symbol="SPY250620P00500000",
        bid=Decimal("1.10"),
        ask=Decimal("1.15"),
        bid_size=12,
        ask_size=30,
        bid_at=1750448999000,
        ask_at=1750449000000,
        received_at=1234.000125,
    ),
    m.Quote(symbol="SPY250620P00480000", bid=None, ask=Decimal("0.05"), received_at=1.0),
    m.TradePrint(
        symbol="SPY", last=Decimal("501.27"), size=100, traded_at=1750449000000, received_at=2.5
    ),
    m.FeedStatusChanged(state=m.FeedState.POLLING, reason="no market stream in the sandbox", at=AT),
    # watchers -> QuoteStream
    m.WantSymbols(owner="trade:42", symbols=frozenset({"SPY", "SPY250620P00500000"})),
    m.ReleaseSymbols(owner="trade:42"),
    # PortfolioMirror -> WatcherPool
    m.SpreadOpened(trade=TRADE),
    m.SpreadQuantityChanged(trade_id=42, quantity=1, previous_quantity=2, legs=LEGS, at=AT),
    m.SpreadClosed(
        trade_id=42, reason=m.CloseReason.STOP_LOSS, realized_pnl_dollars=Decimal("-310.00"), at=AT
    ),
    m.SpreadClosed(trade_id=43, reason=m.CloseReason.PHANTOM, realized_pnl_dollars=None, at=AT),
    m.SpreadOutOfSync(trade_id=42, missing_symbols=frozenset({"SPY250620P00495000"}), at=AT),
    m.SpreadBackInSync(trade_id=42, at=AT),
    # watcher -> OrderRouter, and order commands
    m.ExitIntent(
        intent_id="i-42-1",
        trade_id=42,
        action=m.ExitAction.PARTIAL,
        quantity=1,
        rule="scale_out",
        decision_id=uuid.UUID("0b0e2c43-5d7e-4a57-9d4f-7c1e1a2b3c4d"),
        rules_fired=("scale_out", "trailing_profit"),
        mark_close_price=Decimal("0.775"),
        natural_close_price=Decimal("0.85"),
        decided_at=AT,
        dry_run=False,
    ),
    m.CancelOrder(client_order_id="sw-42-1", trade_id=42, reason="repricing cap reached"),
    m.RepriceOrder(client_order_id="sw-42-1", trade_id=42, limit_price=Decimal("0.80")),
    # control
    m.Halt(reason="operator", requested_at=AT),
    m.Resume(reason="operator", requested_at=AT),
    m.CloseTradeNow(trade_id=42, reason="operator", requested_at=AT),
    m.RefreshPositions(reason="fill", trade_id=42),
    # OrderRouter -> watchers / mirror
    m.ExitIntentDeclined(intent_id="i-42-1", trade_id=42, reason="halted", at=AT),
    m.OrderSubmitted(
        client_order_id="sw-42-1",
        trade_id=42,
        intent_id="i-42-1",
        action=m.ExitAction.FULL,
        quantity=2,
        order_type=m.OrderType.DEBIT,
        limit_price=Decimal("0.78"),
        legs=(
            ORDER_LEG,
            m.OrderLeg(
                option_symbol="SPY250620P00495000", side=m.OrderLegSide.SELL_TO_CLOSE, quantity=2
            ),
        ),
        at=AT,
    ),
    m.OrderAccepted(client_order_id="sw-42-1", broker_order_id="13832634", trade_id=42, at=AT),
    m.OrderRepriced(
        client_order_id="sw-42-1",
        broker_order_id="13832634",
        trade_id=42,
        previous_price=Decimal("0.78"),
        limit_price=Decimal("0.80"),
        at=AT,
    ),
    m.OrderPartiallyFilled(
        client_order_id="sw-42-1",
        broker_order_id="13832634",
        trade_id=42,
        quantity=2,
        filled_quantity=1,
        remaining_quantity=1,
        avg_fill_price=Decimal("0.80"),
        at=AT,
    ),
    m.OrderFilled(
        client_order_id="sw-42-1",
        broker_order_id="13832634",
        trade_id=42,
        filled_quantity=2,
        avg_fill_price=Decimal("0.805"),
        at=AT,
    ),
    m.OrderCanceled(
        client_order_id="sw-42-1",
        broker_order_id=None,
        trade_id=42,
        filled_quantity=0,
        reason="x",
        at=AT,
    ),
    m.OrderRejected(
        client_order_id="sw-42-1",
        broker_order_id=None,
        trade_id=42,
        reason="quantity exceeds position",
        at=AT,
    ),
    m.OrderExpired(
        client_order_id="sw-42-1", broker_order_id="13832634", trade_id=42, filled_quantity=1, at=AT
    ),
    m.Fill(
        client_order_id="sw-42-1",
        broker_order_id="13832634",
        trade_id=42,
        option_symbol="SPY250620P00500000",
        side=m.OrderLegSide.BUY_TO_CLOSE,
        quantity=1,
        price=Decimal("1.0500"),
        at=AT,
    ),
    # any actor -> AuditWriter
    m.DecisionRecord(
        trade_id=42,
        decision=m.Decision.HELD_BY_GUARD,
        rule="stop_loss",
        rules_fired=("stop_loss",),
        guard="crossed_quote",
        legs=(QUOTE_SNAPSHOT, m.QuoteSnapshot(symbol="SPY250620P00495000", bid=None, ask=None)),
        underlying=m.QuoteSnapshot(
            symbol="SPY", bid=Decimal("499.99"), ask=Decimal("500.01"), last=Decimal("500")
        ),
        mark_close_price=Decimal("3.10"),
        natural_close_price=Decimal("3.30"),
        pnl=Decimal("-1.55"),
        profit_fraction=Decimal("-1"),
        loss_fraction=Decimal("0.4626865671641791044776119403"),
        quantity=2,
        exit_action=m.ExitAction.FULL,
        exit_quantity=2,
        thresholds={"stop_loss_fraction": Decimal("1.0"), "debounce_ticks": 3},
        rule_version="exit-plan/1",
        dry_run=True,
        at=AT,
    ),
    m.DecisionRecord(
        trade_id=42,
        decision=m.Decision.HOLD,
        rule=None,
        rules_fired=(),
        legs=(),
        underlying=None,
        mark_close_price=None,
        natural_close_price=None,
        pnl=None,
        profit_fraction=None,
        loss_fraction=None,
        quantity=2,
        rule_version="exit-plan/1",
        dry_run=False,
        at=AT,
    ),
    m.EngineEventRecord(
        kind="portfolio_mirror.phantom_declared",
        actor="portfolio_mirror",
        level="WARNING",
        trade_id=42,
        client_order_id="sw-42-1",
        symbol="SPY250620P00500000",
        message="positions answer empty three times running",
        action_taken="closed the trade as PHANTOM",
        detail={"confirmations": 3, "last_seen_quantity": Decimal("2.5"), "symbols": ["A", "B"]},
        at=AT,
    ),
    m.EngineEventRecord(kind="quote_stream.reconnected", actor="quote_stream", at=AT),
]

# The values nested in messages; everything else defined in the module must travel on a channel.
VALUE_TYPES = {m.TradeSnapshot, m.QuoteSnapshot, m.OrderLeg}
CHANNELS = {
    "FeedEvent": m.FeedEvent,
    "SubscriptionCommand": m.SubscriptionCommand,
    "SpreadLifecycle": m.SpreadLifecycle,
    "RouterCommand": m.RouterCommand,
    "ControlCommand": m.ControlCommand,
    "OrderEvent": m.OrderEvent,
    "WatcherEvent": m.WatcherEvent,
    "AuditRecord": m.AuditRecord,
}


def _struct_types_in_module() -> set[type[msgspec.Struct]]:
    return {
        obj
        for _, obj in inspect.getmembers(m, inspect.isclass)
        if issubclass(obj, msgspec.Struct) and obj.__module__ == m.__name__ and obj is not m.Message
    }


def test_every_struct_in_the_module_has_an_example() -> None:
    missing = _struct_types_in_module() - {type(x) for x in EXAMPLES}
    assert not missing, f"add an example for {sorted(t.__name__ for t in missing)}"


def test_every_message_travels_on_a_channel_or_is_a_nested_value() -> None:
    defined = _struct_types_in_module()
    assert set(m.MESSAGE_TYPES) == defined - VALUE_TYPES
    on_channels = {t for alias in CHANNELS.values() for t in get_args(alias)}
    assert set(m.MESSAGE_TYPES) == on_channels
    assert set(m.__all__) >= {t.__name__ for t in defined}


def test_tags_are_class_names_and_unique() -> None:
    tags = [msgspec.inspect.type_info(t).tag for t in _struct_types_in_module()]  # type: ignore[attr-defined]
    assert sorted(tags) == sorted(t.__name__ for t in _struct_types_in_module())
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(message: m.Message) -> None:
    data = m.encode(message)
    assert msgspec.json.decode(data)["type"] == type(message).__name__
    again = m.decode(data, type(message))
    assert again == message
    _assert_exact(again, message)
    if type(message) in m.MESSAGE_TYPES:
        # By tag alone, and through every channel contract that carries it.
        by_tag = m.decode(data)
        assert type(by_tag) is type(message) and by_tag == message
        _assert_exact(by_tag, message)
        for alias in CHANNELS.values():
            if type(message) in get_args(alias):
                assert m.decode(data, alias) == message


def _assert_exact(got: Any, want: Any) -> None:
    """Equal, and every Decimal with the same digits and exponent (0.10 stays 0.10, not 0.1);
    every datetime aware and in UTC."""
    if isinstance(want, Decimal):
        assert isinstance(got, Decimal)
        assert got.as_tuple() == want.as_tuple()
    elif isinstance(want, dt.datetime):
        assert got == want and got.utcoffset() == dt.timedelta(0)
    elif isinstance(want, msgspec.Struct):
        assert type(got) is type(want)
        for field in msgspec.structs.fields(want):
            _assert_exact(getattr(got, field.name), getattr(want, field.name))
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _assert_exact(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_exact(a, b)
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: type(x).__name__)
def test_frozen(message: m.Message) -> None:
    field = msgspec.structs.fields(message)[0].name
    with pytest.raises(AttributeError):
        setattr(message, field, None)


def test_decimals_are_exact_numbers_on_the_wire() -> None:
    quote = m.Quote(
        symbol="X", bid=Decimal("0.10"), ask=Decimal("12345678901234.123456789"), received_at=0.0
    )
    data = m.encode(quote)
    assert b'"bid":0.10' in data and b'"ask":12345678901234.123456789' in data
    assert m.decode(data, m.Quote).ask == Decimal("12345678901234.123456789")


def test_decimals_decode_from_strings_too() -> None:
    data = b'{"type":"Quote","symbol":"X","bid":"0.10","ask":1.1,"received_at":0}'
    quote = m.decode(data, m.FeedEvent)
    assert isinstance(quote, m.Quote)
    assert quote.bid == Decimal("0.10") and quote.ask == Decimal("1.1")
    assert quote.bid_size == 0 and quote.bid_at is None


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"Nope"}',
        b'{"type":"Quote","symbol":"X","bid":"lots","ask":1,"received_at":0}',
        b'{"type":"OrderFilled","client_order_id":"a"}',
        b'{"type":"Halt","reason":"x","requested_at":"yesterday"}',
    ],
)
def test_bad_input_is_refused(data: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        m.decode(data)


def test_a_channel_refuses_messages_that_do_not_belong_to_it() -> None:
    with pytest.raises(msgspec.ValidationError):
        m.decode(m.encode(m.Halt(reason="x", requested_at=AT)), m.FeedEvent)


def test_messages_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        m.ReleaseSymbols("trade:1")  # type: ignore[misc]


def test_trade_snapshot_gives_its_spread() -> None:
    spread = TRADE.spread()
    assert spread.strategy is Strategy.BULL_PUT_CREDIT
    assert spread.quantity == 2
    assert spread.underlying == "SPY"


def test_audit_records_get_their_own_ids() -> None:
    one = m.EngineEventRecord(kind="a.b", actor="x", at=AT)
    two = m.EngineEventRecord(kind="a.b", actor="x", at=AT)
    assert one.event_id != two.event_id
    assert m.decode(m.encode(one)) == one
    assert isinstance(EXAMPLES[-1], m.EngineEventRecord)


def _check_values(constraint: str) -> set[str]:
    """The quoted values of a CHECK (... IN (...)) constraint in the first migration."""
    sql = (Path(__file__).parents[2] / "migrations" / "0001_initial.sql").read_text()
    found = re.search(constraint + r" CHECK \([^()]*IN \(([^()]*)\)", sql)
    assert found, constraint
    return set(re.findall(r"'([A-Za-z_]+)'", found[1]))


def test_enum_values_match_the_database_spelling() -> None:
    assert {x.value for x in m.TradeOrigin} == _check_values("trades_origin_check")
    assert {x.value for x in m.CloseReason} == _check_values("trades_close_reason_check")
    assert {x.value for x in Strategy} == _check_values("trades_strategy_check")
    assert {x.value for x in m.OrderType} == _check_values("orders_order_type_check")
    assert {x.value for x in m.OrderLegSide} == _check_values("fills_leg_side_check")
    assert {x.value for x in m.ExitAction} == {"PARTIAL", "FULL"}
