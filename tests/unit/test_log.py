"""engine.log: what is written is one JSON object per line, redacted, filtered by level."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.log import LogSink, Secret, configure_logging, default_sink, get_logger, redact_text

FIXED_TS = "2025-01-02T15:04:05.123Z"


def _sink(level: Any = "debug") -> tuple[LogSink, io.BytesIO]:
    buffer = io.BytesIO()
    return LogSink(stream=buffer, level=level, now=lambda: FIXED_TS), buffer


def _records(buffer: io.BytesIO) -> list[dict[str, Any]]:
    raw = buffer.getvalue()
    assert raw.endswith(b"\n") or raw == b""
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_record_shape_and_field_order() -> None:
    sink, buffer = _sink()
    log = get_logger(actor="order_router", sink=sink)
    log.info("order_router.submitted", client_order_id="c-1", trade_id=42)

    (record,) = _records(buffer)
    assert list(record) == ["ts", "level", "event", "actor", "client_order_id", "trade_id"]
    assert record == {
        "ts": FIXED_TS,
        "level": "info",
        "event": "order_router.submitted",
        "actor": "order_router",
        "client_order_id": "c-1",
        "trade_id": 42,
    }


def test_real_timestamp_is_iso_utc_with_milliseconds() -> None:
    buffer = io.BytesIO()
    log = get_logger("audit_writer", sink=LogSink(stream=buffer))
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    log.info("audit_writer.flushed")
    (record,) = _records(buffer)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    logged = dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    assert before <= logged <= dt.datetime.now(dt.UTC)


def test_one_line_per_call_even_with_newlines_in_values() -> None:
    sink, buffer = _sink()
    log = get_logger("quote_stream", sink=sink)
    log.warning("quote_stream.reconnecting", reason="line one\nline two\r\n", attempt=1)
    log.error("quote_stream.failed", detail="x")
    lines = buffer.getvalue().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    first, second = _records(buffer)
    assert first["reason"] == "line one\nline two\r\n"
    assert second["event"] == "quote_stream.failed"


def test_decimal_datetime_path_and_structs_are_encoded() -> None:
    class Quote(msgspec.Struct, frozen=True):
        symbol: str
        bid: Decimal

    sink, buffer = _sink()
    at = dt.datetime(2025, 1, 2, 15, 4, 5, tzinfo=dt.UTC)
    get_logger("position_watcher", sink=sink).info(
        "position_watcher.evaluated",
        mark=Decimal("1.10"),
        at=at,
        data_dir=Path("/srv/pg"),
        quote=Quote("SPY", Decimal("0.05")),
        legs=("SPY250117P00450000", "SPY250117P00445000"),
    )
    (record,) = _records(buffer)
    assert record["mark"] == "1.10"  # a string, so no float rounding on the way out
    assert record["at"] == "2025-01-02T15:04:05Z"
    assert record["data_dir"] == "/srv/pg"
    assert record["quote"] == {"symbol": "SPY", "bid": "0.05"}
    assert record["legs"] == ["SPY250117P00450000", "SPY250117P00445000"]


def test_unencodable_values_are_rendered_with_repr_and_never_raise() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque 7>"

    sink, buffer = _sink()
    log = get_logger("portfolio_mirror", sink=sink)
    log.info("portfolio_mirror.odd", thing=Opaque(), trade_id=3)
    cyclic: list[object] = ["legs"]
    cyclic.append(cyclic)  # msgspec refuses this outright: the record falls back to repr
    log.info("portfolio_mirror.cyclic", legs=cyclic, trade_id=4)
    first, second = _records(buffer)
    assert first["thing"] == "<Opaque 7>" and first["trade_id"] == 3
    assert second["event"] == "portfolio_mirror.cyclic"
    assert second["legs"] == "['legs', [...]]" and second["trade_id"] == 4


def test_a_failing_stream_never_raises_into_the_caller() -> None:
    class Broken(io.BytesIO):
        def write(self, _data: Any) -> int:
            raise OSError("disk full")

    log = get_logger("audit_writer", sink=LogSink(stream=Broken()))
    log.critical("audit_writer.stuck", batch=3)  # must simply return


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "api_key",
        "TRADIER_TOKEN",
        "client_secret",
        "db_password",
        "Authorization",
        "access_token",
        "sessionid",
    ],
)
def test_fields_with_secret_names_are_redacted(name: str) -> None:
    sink, buffer = _sink()
    get_logger("broker", sink=sink).info("broker.connected", **{name: "s3cr3t-value"})
    (record,) = _records(buffer)
    assert record[name] == "***"
    assert b"s3cr3t-value" not in buffer.getvalue()


def test_secrets_inside_values_and_nested_mappings_are_redacted() -> None:
    sink, buffer = _sink()
    get_logger("broker", sink=sink).info(
        "broker.request",
        headers={"Authorization": "Bearer abc123", "Accept": "application/json"},
        url="postgresql://app:hunter2@db.internal:5432/spreadwatch",
        note="sent Bearer xyz789 to the API",
        stream="wss://ws.tradier.com/v1/markets/events?sessionid=sess42&symbols=SPY",
        token_obj=Secret("tok-1"),
        wrapped=Secret("tok-2"),
        items=[{"api_key": "k-9"}],
    )
    raw = buffer.getvalue()
    for secret in (b"abc123", b"hunter2", b"xyz789", b"sess42", b"tok-1", b"tok-2", b"k-9"):
        assert secret not in raw
    (record,) = _records(buffer)
    assert record["headers"] == {"Authorization": "***", "Accept": "application/json"}
    assert record["url"] == "postgresql://app:***@db.internal:5432/spreadwatch"
    assert record["note"] == "sent Bearer *** to the API"
    assert record["stream"].endswith("?sessionid=***&symbols=SPY")
    assert record["wrapped"] == "***"
    assert record["items"] == [{"api_key": "***"}]


def test_secret_type_never_shows_its_value() -> None:
    secret = Secret("tok-abc")
    assert "tok-abc" not in repr(secret) and "tok-abc" not in str(secret)
    assert secret.reveal() == "tok-abc"


def test_redact_text_leaves_ordinary_text_alone() -> None:
    text = "order 123 filled at 1.05 for trader@example.com; a=b"
    assert redact_text(text) == text


def test_level_threshold_filters_and_is_adjustable() -> None:
    sink, buffer = _sink(level="warning")
    log = get_logger("watcher_pool", sink=sink)
    log.debug("watcher_pool.tick")
    log.info("watcher_pool.started")
    log.warning("watcher_pool.slow")
    log.error("watcher_pool.crashed")
    assert [r["level"] for r in _records(buffer)] == ["warning", "error"]
    assert not log.is_enabled_for("info") and log.is_enabled_for("error")

    sink.set_level("debug")
    log.debug("watcher_pool.tick")
    assert _records(buffer)[-1]["level"] == "debug"
    with pytest.raises(ValueError):
        sink.set_level("verbose")  # type: ignore[arg-type]


def test_filtered_call_does_not_touch_its_values() -> None:
    class Explodes:
        def __repr__(self) -> str:
            raise AssertionError("encoded although filtered out")

    sink, buffer = _sink(level="info")
    get_logger("quote_stream", sink=sink).debug("quote_stream.tick", quote=Explodes())
    assert buffer.getvalue() == b""


def test_bind_carries_context_and_call_fields_win() -> None:
    sink, buffer = _sink()
    base = get_logger("position_watcher", sink=sink)
    bound = base.bind(trade_id=7, symbol="SPY")
    bound.info("position_watcher.started")
    bound.info("position_watcher.moved", symbol="QQQ")
    base.info("position_watcher.other")
    first, second, third = _records(buffer)
    assert (first["trade_id"], first["symbol"]) == (7, "SPY")
    assert (second["trade_id"], second["symbol"]) == (7, "QQQ")
    assert "trade_id" not in third


@pytest.mark.parametrize("bad", ["Submitted", "order router.x", "order_router", "a..b", "A.b", ""])
def test_invalid_event_names_are_flagged_not_raised(bad: str) -> None:
    sink, buffer = _sink()
    get_logger("order_router", sink=sink).info(bad, trade_id=1)
    (record,) = _records(buffer)
    assert record["event"] == "log.invalid_event"
    assert record["invalid_event"] == repr(bad)
    assert record["trade_id"] == 1


def test_unknown_level_is_recorded_as_error() -> None:
    sink, buffer = _sink()
    get_logger("x", sink=sink).log("verbose", "x.happened")  # type: ignore[arg-type]
    (record,) = _records(buffer)
    assert record["level"] == "error" and record["invalid_level"] == "'verbose'"


def test_reserved_names_in_fields_do_not_overwrite_the_envelope() -> None:
    sink, buffer = _sink()
    get_logger("x", sink=sink).info("x.happened", actor="someone", ts="yesterday", level=3)
    (record,) = _records(buffer)
    assert record["actor"] == "x" and record["actor_"] == "someone"
    assert record["ts"] == FIXED_TS and record["ts_"] == "yesterday"
    assert record["level"] == "info" and record["level_"] == 3


def test_default_sink_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    previous = default_sink().threshold
    try:
        configure_logging(level="info")
        get_logger("engine").info("engine.started", version="0.1.0")
        get_logger("engine").debug("engine.noise")
    finally:
        default_sink().threshold = previous
    out = capsys.readouterr().out
    (line,) = out.splitlines()
    record = json.loads(line)
    assert record["event"] == "engine.started" and record["version"] == "0.1.0"


def test_structs_are_walked_for_secrets_and_keep_their_tag() -> None:
    class Connected(msgspec.Struct, frozen=True, tag="connected"):
        url: str
        api_key: str

    sink, buffer = _sink()
    get_logger("broker", sink=sink).info(
        "broker.connected", message=Connected("https://u:pw123@h/x", "k-77")
    )
    raw = buffer.getvalue()
    assert b"pw123" not in raw and b"k-77" not in raw
    (record,) = _records(buffer)
    assert record["message"] == {"type": "connected", "url": "https://u:***@h/x", "api_key": "***"}
