"""engine.logview: log lines parsed, filtered and formatted; malformed lines never raise.

``data/engine_log_sample.jsonl`` is real engine output: two ``spreadwatch --log-level debug
scenario run`` runs (credit_spread_stop.toml, then iron_condor_faults.toml) captured as is.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from engine.log import LogSink, get_logger
from engine.logview import (
    LogFilter,
    Malformed,
    Record,
    ViewOptions,
    format_record,
    matches,
    parse_line,
    parse_since,
    render_line,
    since_cutoff,
)

SAMPLE = Path(__file__).parent / "data" / "engine_log_sample.jsonl"
SAMPLE_LINES = SAMPLE.read_bytes().splitlines(keepends=True)
EXIT_DECIDED = next(line for line in SAMPLE_LINES if b"position_watcher.exit_decided" in line)
NEW_YORK = timezone(timedelta(hours=-5), "EST")


def _records() -> list[Record]:
    parsed = [parse_line(line) for line in SAMPLE_LINES]
    assert all(isinstance(p, Record) for p in parsed)
    return [p for p in parsed if isinstance(p, Record)]


def _line(**fields: object) -> Record:
    header = {"ts": "2025-12-09T14:45:00.000Z", "level": "info", "event": "t.e", "actor": "t"}
    record = parse_line(_json({**header, **fields}))
    assert isinstance(record, Record)
    return record


def _json(value: object) -> bytes:
    return msgspec.json.encode(value)


# ---- parsing ---------------------------------------------------------------------------------


def test_every_real_engine_line_parses_with_its_fields_in_order() -> None:
    records = _records()
    assert len(records) == len(SAMPLE_LINES) == 42
    decided = parse_line(EXIT_DECIDED)
    assert decided == Record(
        ts=datetime(2026, 11, 21, 1, 24, 59, 138000, tzinfo=UTC),
        level="info",
        event="position_watcher.exit_decided",
        actor="position_watcher",
        fields={
            "trade_id": 1,
            "rule": "stop_loss",
            "rules_fired": ["stop_loss"],
            "action": "FULL",
            "quantity": 2,
            "mark_close_price": "1.09",
            "pnl": "-0.64",
            "dry_run": True,
        },
    )
    assert isinstance(decided, Record) and list(decided.fields)[:2] == ["trade_id", "rule"]


def test_what_engine_log_writes_reads_back_redacted_and_exact() -> None:
    buffer = io.BytesIO()
    sink = LogSink(stream=buffer, level="debug", now=lambda: "2025-12-09T14:45:01.5Z")
    log = get_logger("order_router", sink=sink).bind(trade_id=7)
    log.warning(
        "order_router.submitted",
        client_order_id="sw-7-1",
        limit_price=Decimal("1.10"),
        delay_seconds=0.125,
        token="abc",
        url="https://u:pw@broker/x",
    )
    record = parse_line(buffer.getvalue())
    assert isinstance(record, Record)
    text = format_record(record, tz=UTC)
    assert text == (
        "14:45:01.500 WARNING  order_router     order_router.submitted trade_id=7 "
        "client_order_id=sw-7-1 limit_price=1.10 delay_seconds=0.125 token=*** "
        "url=https://u:***@broker/x"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json at all\n", "not JSON"),
        (b"", "not JSON"),
        (b'{"ts": "2025-', "not JSON"),
        (b"\xff\xfe{}\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'"a string"\n', "not a JSON object"),
        (b"null\n", "not a JSON object"),
        (b"{}\n", "missing or not a string: ts, level, event, actor"),
        (b'{"ts":"2025-12-09T14:45:00Z","level":"info","event":"a.b"}', "not a string: actor"),
        (b'{"ts":1,"level":"info","event":"a.b","actor":"a"}', "not a string: ts"),
        (b'{"ts":"x","level":"info","event":"a.b","actor":"a"}', "bad timestamp 'x'"),
        (b'{"ts":"2025-12-09T14:45:00Z","level":"trace","event":"a.b","actor":"a"}', "'trace'"),
        (b'{"ts":"2025-12-09T14:45:00Z","level":null,"event":"a.b","actor":"a"}', "level"),
    ],
)
def test_malformed_lines_are_values_not_exceptions(line: bytes, reason: str) -> None:
    parsed = parse_line(line)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason
    rendered = render_line(line, ViewOptions(filter=LogFilter(trades=("1",), min_level="error")))
    assert rendered.malformed
    assert rendered.output == (line if line.endswith(b"\n") else line + b"\n")


def test_a_zone_less_timestamp_is_taken_as_utc() -> None:
    record = parse_line(b'{"ts":"2025-12-09T14:45:00","level":"info","event":"a.b","actor":"a"}')
    assert isinstance(record, Record)
    assert record.ts == datetime(2025, 12, 9, 14, 45, tzinfo=UTC)


# ---- formatting ------------------------------------------------------------------------------


def test_a_real_line_formats_with_key_fields_first() -> None:
    record = parse_line(EXIT_DECIDED)
    assert isinstance(record, Record)
    assert format_record(record, tz=UTC) == (
        "01:24:59.138 INFO     position_watcher position_watcher.exit_decided trade_id=1 "
        "rule=stop_loss action=FULL quantity=2 mark_close_price=1.09 pnl=-0.64 "
        "rules_fired=[stop_loss] dry_run=true"
    )


def test_time_is_local_by_default_and_in_the_given_zone_otherwise() -> None:
    record = parse_line(EXIT_DECIDED)
    assert isinstance(record, Record)
    assert format_record(record, tz=NEW_YORK).startswith("20:24:59.138 INFO ")
    local = record.ts.astimezone()
    assert format_record(record).startswith(f"{local:%H:%M:%S}.138 ")


def test_important_fields_come_first_the_rest_keep_their_order() -> None:
    record = _line(
        zeta=1,
        realized_pnl="3.00",
        limit_price="1.05",
        alpha=2,
        status="filled",
        filled_quantity=1,
        client_order_id="c-1",
        symbol="SPY",
        trade_id=9,
        bid="1.00",
    )
    keys = [part.split("=")[0] for part in format_record(record, tz=UTC).split()[4:]]
    assert keys == [
        "trade_id",
        "symbol",
        "client_order_id",
        "status",
        "filled_quantity",
        "limit_price",
        "bid",
        "realized_pnl",
        "zeta",
        "alpha",
    ]


def test_values_are_quoted_when_ambiguous_and_long_ones_shortened() -> None:
    record = _line(
        reason="two words",
        empty="",
        eq="a=b",
        escape="\x1b[31mred",
        nothing=None,
        nested={"a": [1, 2.5]},
        long="x" * 200,
    )
    text = format_record(record, tz=UTC, max_value=20)
    assert 'reason="two words"' in text
    assert 'empty=""' in text
    assert 'eq="a=b"' in text
    assert "\x1b" not in text and 'escape="\\u001b[31mred"' in text
    assert "nothing=null" in text
    assert 'nested={"a":[1,2.5]}' in text
    assert f"long={'x' * 19}…" in text


def test_a_long_real_symbol_list_is_shortened() -> None:
    line = next(line for line in SAMPLE_LINES if b"QQQ251219P00580000" in line)
    record = parse_line(line)
    assert isinstance(record, Record)
    text = format_record(record, tz=UTC)
    symbols = next(p for p in text.split() if p.startswith("symbols="))
    assert len(symbols) == len("symbols=") + 80
    assert symbols.startswith("symbols=[QQQ,QQQ251219C00640000,") and symbols.endswith("…")


@pytest.mark.parametrize(
    ("level", "code"),
    [
        ("warning", "\x1b[33m"),
        ("error", "\x1b[31m"),
        ("critical", "\x1b[1;31m"),
    ],
)
def test_levels_are_coloured_only_when_asked(level: str, code: str) -> None:
    record = _line(trade_id=1)
    record = Record(
        ts=record.ts, level=level, event=record.event, actor=record.actor, fields=record.fields
    )
    coloured = format_record(record, tz=UTC, color=True)
    assert f"{code}{level.upper():<8}\x1b[0m" in coloured
    plain = format_record(record, tz=UTC)
    assert "\x1b" not in plain
    assert plain == "14:45:00.000 " + f"{level.upper():<8} t                t.e trade_id=1"


# ---- filtering -------------------------------------------------------------------------------


def _kept(wanted: LogFilter) -> list[Record]:
    return [r for r in _records() if matches(r, wanted)]


def test_no_filter_keeps_everything() -> None:
    assert len(_kept(LogFilter())) == 42


def test_trade_matches_the_trade_id_field_as_text() -> None:
    kept = _kept(LogFilter(trades=("1",)))
    assert [r.event for r in kept] == [
        "portfolio_mirror.watching",
        "watcher_pool.watching",
        "position_watcher.exit_decided",
        "portfolio_mirror.watching",
        "watcher_pool.watching",
    ]
    assert _kept(LogFilter(trades=("2",))) == []
    assert matches(_line(trade_ids=[3, 4]), LogFilter(trades=("4",)))
    assert not matches(_line(trade_id=True), LogFilter(trades=("True",)))
    assert matches(_line(trade_id="5"), LogFilter(trades=("9", "5")))


def test_symbol_matches_symbol_or_an_item_of_symbols_ignoring_case() -> None:
    kept = _kept(LogFilter(symbols=("spy251219p00650000",)))
    assert len(kept) == 2
    assert all(r.event == "quote_stream.subscribed" for r in kept)
    assert all("SPY251219P00650000" in r.fields["symbols"] for r in kept)
    assert matches(_line(symbol="IWM"), LogFilter(symbols=("iwm",)))
    assert not matches(_line(symbol="IWM"), LogFilter(symbols=("SPY",)))
    assert not matches(_line(underlying="SPY"), LogFilter(symbols=("SPY",)))


def test_event_is_a_glob() -> None:
    kept = _kept(LogFilter(events=("quote_stream.*",)))
    assert {r.event for r in kept} == {
        "quote_stream.subscribed",
        "quote_stream.connected",
        "quote_stream.disconnected",
        "quote_stream.reconnecting",
    }
    assert len(kept) == 12
    assert {r.event for r in _kept(LogFilter(events=("*.exit_*", "engine.starting")))} == {
        "position_watcher.exit_decided",
        "engine.starting",
    }
    assert _kept(LogFilter(events=("quote_stream",))) == []


def test_level_is_a_minimum() -> None:
    warnings = _kept(LogFilter(min_level="warning"))
    assert len(warnings) == 4 and {r.level for r in warnings} == {"warning"}
    assert _kept(LogFilter(min_level="error")) == []
    assert len(_kept(LogFilter(min_level="info"))) == 42
    assert matches(_line(), LogFilter(min_level="info"))
    assert not matches(_line(), LogFilter(min_level="warning"))


def test_since_absolute_and_relative() -> None:
    decided_at = datetime(2026, 11, 21, 1, 24, 59, 138000, tzinfo=UTC)
    kept = _kept(LogFilter(since=decided_at))
    assert kept[0].event == "position_watcher.exit_decided"
    assert len(kept) == 26  # exit_decided and the 25 lines after it

    relative = since_cutoff(
        parse_since("1m"), now=datetime(2026, 11, 21, 1, 26, tzinfo=UTC), tz=UTC
    )
    assert relative == datetime(2026, 11, 21, 1, 25, tzinfo=UTC)
    assert next(r.ts for r in _kept(LogFilter(since=relative))) == datetime(
        2026, 11, 21, 1, 25, 11, 816000, tzinfo=UTC
    )
    assert len(_kept(LogFilter(since=relative))) == 25


# ---- --since ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1.5d", timedelta(hours=36)),
        ("250ms", timedelta(milliseconds=250)),
        ("2025-12-09T19:30:00Z", datetime(2025, 12, 9, 19, 30, tzinfo=UTC)),
        ("2025-12-09 14:30", datetime(2025, 12, 9, 14, 30)),
        ("2025-12-09", datetime(2025, 12, 9)),
        ("14:30", time(14, 30)),
        ("9:05:30", time(9, 5, 30)),
    ],
)
def test_since_forms(text: str, expected: object) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "10x", "m10", "25:99", "2025-13-01"])
def test_bad_since_is_a_value_error_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_since(text)


def test_since_cutoff_reads_naive_times_in_the_display_zone() -> None:
    now = datetime(2025, 12, 9, 20, 0, tzinfo=UTC)  # 15:00 in New York
    naive = parse_since("2025-12-09T14:30")
    assert since_cutoff(naive, now=now, tz=NEW_YORK) == datetime(2025, 12, 9, 19, 30, tzinfo=UTC)
    assert since_cutoff(naive, now=now, tz=UTC) == datetime(2025, 12, 9, 14, 30, tzinfo=UTC)
    local = since_cutoff(naive, now=now, tz=None)
    assert local == datetime(2025, 12, 9, 14, 30).astimezone()
    # A time of day is today's, or yesterday's when today's is still to come.
    assert since_cutoff(time(14, 30), now=now, tz=NEW_YORK) == datetime(
        2025, 12, 9, 19, 30, tzinfo=UTC
    )
    assert since_cutoff(time(16, 0), now=now, tz=NEW_YORK) == datetime(
        2025, 12, 8, 21, 0, tzinfo=UTC
    )
    assert since_cutoff(timedelta(minutes=5), now=now, tz=None) == now - timedelta(minutes=5)


# ---- one line in, what comes out --------------------------------------------------------------


def test_json_passes_kept_lines_through_byte_for_byte() -> None:
    options = ViewOptions(json=True, filter=LogFilter(min_level="warning"))
    out = [render_line(line, options).output for line in SAMPLE_LINES]
    kept = [o for o in out if o is not None]
    assert kept == [line for line in SAMPLE_LINES if b'"level":"warning"' in line]
    odd = (
        b'{ "ts" : "2025-12-09T14:45:00.000+00:00", "level":"error","event":"a.b","actor":"a"}\r\n'
    )
    assert render_line(odd, options).output == odd


def test_rendered_line_is_the_formatted_record_with_a_newline() -> None:
    rendered = render_line(EXIT_DECIDED.rstrip(b"\n"), ViewOptions(tz=UTC))
    assert not rendered.malformed
    assert rendered.output is not None
    assert rendered.output.startswith(b"01:24:59.138 INFO     position_watcher ")
    assert rendered.output.endswith(b" dry_run=true\n") and rendered.output.count(b"\n") == 1
    filtered = render_line(EXIT_DECIDED, ViewOptions(filter=LogFilter(trades=("2",))))
    assert filtered.output is None and not filtered.malformed
