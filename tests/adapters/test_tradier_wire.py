"""Tradier's wire quirks, from the reference facts (shared/reference/tradier-api.md)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.brokers.tradier import wire
from engine.errors import BrokerAnswerInvalid

QUOTE = (
    b'{"type":"quote","symbol":"SPY","bid":281.84,"bidsz":60,"bidexch":"M",'
    b'"biddate":"1557757189000","ask":281.85,"asksz":6,"askexch":"Z","askdate":"1557757190000"}'
)
TRADE = (
    b'{"type":"trade","symbol":"SPY","exch":"J","price":"281.85","size":"100",'
    b'"cvol":"27978993","date":"1557757190000","last":"281.85"}'
)
SUMMARY = (
    b'{"type":"summary","symbol":"SPY","open":"282.42","high":"283.49","low":"281.07",'
    b'"prevClose":"288.1"}'
)
TIMESALE = (
    b'{"type":"timesale","symbol":"SPY","exch":"Q","bid":"282.08","ask":"282.09",'
    b'"last":"282.09","size":"100","date":"1557758874355","seq":352795,"flag":"",'
    b'"cancel":false,"correction":false,"session":"normal"}'
)


def test_quote_numbers_and_epoch_ms_strings_decode_exactly() -> None:
    (event,) = wire.decode_market_frame(QUOTE)
    assert isinstance(event, wire.QuoteEvent)
    assert event.bid == Decimal("281.84") and event.ask == Decimal("281.85")
    assert event.biddate == 1557757189000 and event.askdate == 1557757190000
    assert event.bidsz == 60


def test_string_typed_trade_summary_and_timesale_fields() -> None:
    trade, summary, timesale = wire.decode_market_frame(b"\n".join([TRADE, SUMMARY, TIMESALE]))
    assert isinstance(trade, wire.TradeEvent)
    assert trade.price == Decimal("281.85") and trade.size == 100 and trade.cvol == 27978993
    assert isinstance(summary, wire.SummaryEvent) and summary.prev_close == Decimal("288.1")
    assert isinstance(timesale, wire.TimesaleEvent) and timesale.date == 1557758874355


def test_linebreak_frames_hold_several_events_and_blank_lines_are_ignored() -> None:
    events = list(wire.decode_market_frame(QUOTE + b"\n" + QUOTE + b"\n\n"))
    assert len(events) == 2


def test_error_frame_and_unknown_kinds() -> None:
    assert list(wire.decode_market_frame(b'{"error":"invalid symbol XX"}')) == [
        wire.ErrorFrame(error="invalid symbol XX")
    ]
    assert list(wire.decode_market_frame(b'{"type":"newkind","symbol":"SPY"}')) == []


def test_a_frame_mixing_events_with_an_error_or_unknown_kind_keeps_them_in_order() -> None:
    unknown, error = b'{"type":"newkind","symbol":"SPY"}', b'{"error":"invalid symbol XX"}'
    frame = b"\n".join([QUOTE, unknown, error, TRADE])
    for shown in (frame, frame.decode()):  # trio-websocket hands text frames over as str
        first, failure, trade = wire.decode_market_frame(shown)
        assert isinstance(first, wire.QuoteEvent) and isinstance(trade, wire.TradeEvent)
        assert failure == wire.ErrorFrame(error="invalid symbol XX")
    events = wire.decode_market_frame(QUOTE + b"\n<html>")
    assert isinstance(next(events), wire.QuoteEvent)  # what came before the bad line
    with pytest.raises(BrokerAnswerInvalid, match="not JSON"):
        next(events)


def test_malformed_known_event_and_non_json_raise_clearly() -> None:
    with pytest.raises(BrokerAnswerInvalid, match="malformed quote"):
        list(wire.decode_market_frame(b'{"type":"quote","symbol":"SPY","bid":"abc"}'))
    with pytest.raises(BrokerAnswerInvalid, match="not JSON"):
        list(wire.decode_market_frame(b"<html>"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"positions":"null"}', []),
        (
            b'{"positions":{"position":{"cost_basis":-640.0,"date_acquired":"2026-11-01T14:30:00Z",'
            b'"id":1,"quantity":-2.0,"symbol":"SPY261218P00480000"}}}',
            ["SPY261218P00480000"],
        ),
        (
            b'{"positions":{"position":[{"cost_basis":-640,"quantity":-2,"symbol":"A"},'
            b'{"cost_basis":300,"quantity":2,"symbol":"B"}]}}',
            ["A", "B"],
        ),
    ],
)
def test_positions_collapse_and_null(body: bytes, expected: list[str]) -> None:
    assert [p.symbol for p in wire.decode_positions(body)] == expected


def test_positions_answer_without_key_is_not_believed_empty() -> None:
    with pytest.raises(BrokerAnswerInvalid, match="positions"):
        wire.decode_positions(b"{}")
    with pytest.raises(BrokerAnswerInvalid):
        wire.decode_positions(b"null")


def test_short_position_quantity_is_negative_decimal() -> None:
    (position,) = wire.decode_positions(
        b'{"positions":{"position":{"cost_basis":-640.0,"quantity":-2.0,"symbol":"X"}}}'
    )
    assert position.quantity == Decimal(-2) and position.cost_basis == Decimal("-640.0")


def test_orders_null_single_and_multileg_legs() -> None:
    assert wire.decode_orders(b'{"orders":"null"}') == []
    (order,) = wire.decode_orders(
        b'{"orders":{"order":{"id":7,"status":"open","class":"multileg","type":"debit",'
        b'"price":1.25,"quantity":2.00000000,"tag":"sw-1","leg":{"option_symbol":"A",'
        b'"side":"buy_to_close","quantity":2.0,"status":"open"}}}}'
    )
    assert order.order_class == "multileg" and order.quantity == Decimal(2)
    assert [leg.option_symbol for leg in order.legs] == ["A"]


def test_errors_body_single_string_or_list() -> None:
    assert wire.decode_errors(b'{"errors":{"error":"Backoffice rejected"}}') == (
        "Backoffice rejected",
    )
    assert wire.decode_errors(b'{"errors":{"error":["a","b"]}}') == ("a", "b")
    assert wire.decode_errors(b'{"order":{"id":1,"status":"ok"}}') is None


def test_session_placed_order_and_clock() -> None:
    session = wire.decode_session(
        b'{"stream":{"url":"https://stream.tradier.com/v1/markets/events","sessionid":"u-1"}}'
    )
    assert session.sessionid == "u-1"
    placed = wire.decode_placed_order(b'{"order":{"id":13832634,"status":"ok","partner_id":"p"}}')
    assert placed.id == 13832634
    clock = wire.decode_clock(
        b'{"clock":{"date":"2026-11-20","description":"open","state":"open",'
        b'"timestamp":1795000000,"next_change":"16:00","next_state":"postmarket"}}'
    )
    assert clock.state == "open"


def test_account_frames_accept_both_quantity_names() -> None:
    event = wire.decode_account_frame(
        b'{"id":1107075,"event":"order","status":"partially_filled","type":"debit","price":1.2,'
        b'"avg_fill_price":1.1,"executed_quantity":1.0,"remaining_quantity":1.0,"tag":"sw-1"}'
    )
    assert isinstance(event, wire.OrderEvent) and event.filled_quantity == Decimal(1)
    beat = wire.decode_account_frame(
        b'{"event":"heartbeat","status":"active","timestamp":"2025-12-09T18:03:51.029Z"}'
    )
    assert isinstance(beat, wire.Heartbeat)
    assert wire.decode_account_frame(b'{"event":"journal"}') is None
