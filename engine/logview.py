"""Reading spreadwatch's JSON log lines back for people: parse, filter, format.

Pure functions behind ``spreadwatch tail`` (:mod:`engine.cli_tail` does the reading and
writing). A line the engine wrote (see :mod:`engine.log`) looks like::

    {"ts":"2025-12-09T14:45:59.138Z","level":"info","event":"position_watcher.exit_decided",
     "actor":"position_watcher","trade_id":1,"rule":"stop_loss","quantity":2,"pnl":"-0.64"}

and is shown as one line::

    09:45:59.138 INFO     position_watcher position_watcher.exit_decided trade_id=1
        rule=stop_loss quantity=2 pnl=-0.64

Anything else - not JSON, JSON that is not an object, an object without a string ``ts``,
``level``, ``event`` and ``actor``, an unknown level, a timestamp that does not parse - is a
:class:`Malformed` line. It is never an exception: the caller shows it as it is, because a
traceback or a stray ``print`` in the log is exactly what a person tailing it wants to see.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final

import msgspec

from engine.log import LEVELS, redact_text

__all__ = [
    "LEVEL_SEVERITY",
    "LogFilter",
    "Malformed",
    "Parsed",
    "Record",
    "Rendered",
    "Since",
    "ViewOptions",
    "format_record",
    "matches",
    "parse_line",
    "parse_since",
    "render_line",
    "since_cutoff",
]

LEVEL_SEVERITY: Final[Mapping[str, int]] = {name: i for i, name in enumerate(LEVELS)}

# float_hook=Decimal keeps a number's digits exactly as written ("0.448", not 0.44799999...).
_decoder: Final = msgspec.json.Decoder(float_hook=Decimal)
_compact: Final = msgspec.json.Encoder(decimal_format="number")
_HEADER: Final = ("ts", "level", "event", "actor")


class Record(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One well-formed log line. ``ts`` is timezone-aware; ``fields`` keep the line's order."""

    ts: datetime
    level: str  # one of engine.log.LEVELS
    event: str
    actor: str
    fields: dict[str, Any]


class Malformed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A line that is not a spreadwatch log record; ``reason`` says why (for tests, debugging)."""

    reason: str


Parsed = Record | Malformed


def parse_line(line: bytes | str) -> Parsed:
    """Decode one line (with or without its newline). Never raises."""
    try:
        value = _decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
        return Malformed(reason="not JSON")
    if not isinstance(value, dict):
        return Malformed(reason="not a JSON object")
    ts_text, level, event, actor = (value.get(key) for key in _HEADER)
    if not (
        isinstance(ts_text, str)
        and isinstance(level, str)
        and isinstance(event, str)
        and isinstance(actor, str)
    ):
        missing = [key for key in _HEADER if not isinstance(value.get(key), str)]
        return Malformed(reason=f"missing or not a string: {', '.join(missing)}")
    if level not in LEVEL_SEVERITY:
        return Malformed(reason=f"unknown level {level!r}")
    try:
        ts = datetime.fromisoformat(ts_text)
    except ValueError:
        return Malformed(reason=f"bad timestamp {ts_text!r}")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # the engine writes UTC; a zone-less time is taken as such
    fields = {key: v for key, v in value.items() if key not in _HEADER}
    return Record(ts=ts, level=level, event=event, actor=actor, fields=fields)


# ---------------------------------------------------------------------------------------------
# Filtering
# ---------------------------------------------------------------------------------------------


class LogFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What to keep. Within one criterion any value may match; all criteria must hold.

    ``trades`` match the ``trade_id`` field (or an item of a ``trade_ids`` list), compared as
    text so ``"7"`` matches ``7``; ``symbols`` match ``symbol`` or an item of ``symbols``,
    ignoring case; ``events`` are shell globs (``order_router.*``); ``since`` is aware.
    """

    trades: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    min_level: str = "debug"
    since: datetime | None = None


def matches(record: Record, wanted: LogFilter) -> bool:
    if LEVEL_SEVERITY[record.level] < LEVEL_SEVERITY[wanted.min_level]:
        return False
    if wanted.since is not None and record.ts < wanted.since:
        return False
    if wanted.events and not any(fnmatch.fnmatchcase(record.event, g) for g in wanted.events):
        return False
    if wanted.trades:
        ids = _values(record.fields, "trade_id", "trade_ids")
        if not ids.intersection(wanted.trades):
            return False
    if wanted.symbols:
        symbols = {s.upper() for s in _values(record.fields, "symbol", "symbols")}
        if not symbols.intersection(s.upper() for s in wanted.symbols):
            return False
    return True


def _values(fields: Mapping[str, Any], single: str, many: str) -> set[str]:
    """The scalar values of field ``single`` and of the list field ``many``, as text."""
    found = [fields.get(single)]
    listed = fields.get(many)
    if isinstance(listed, list):
        found.extend(listed)
    # bool is an int: a stray true must not match trade 1.
    return {str(v) for v in found if isinstance(v, str | int) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# --since
# ---------------------------------------------------------------------------------------------

Since = timedelta | datetime | time
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> Since:
    """``10m`` / ``1h30m`` (a duration back from now), an ISO date or timestamp, or ``HH:MM[:SS]``.

    Raises ValueError with a message fit for the command line.
    """
    text = text.strip()
    if text and _DURATION_PART.sub("", text) == "":
        seconds = sum(float(n) * _UNIT[unit] for n, unit in _DURATION_PART.findall(text))
        return timedelta(seconds=seconds)
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?", text):
            return time.fromisoformat(text if text.index(":") == 2 else "0" + text)
        return datetime.fromisoformat(text)
    except ValueError:
        pass  # out of range (25:99, month 13) or not a timestamp at all: one message for both
    raise ValueError(
        f"not a time: {text!r} (expected a duration like 10m or 2h, an ISO timestamp like "
        "2025-12-09T14:30 or 2025-12-09T19:30:00Z, or a time of day like 14:30)"
    )


def since_cutoff(since: Since, *, now: datetime, tz: tzinfo | None) -> datetime:
    """The aware instant ``since`` names. ``now`` is aware; a naive date or time is read in
    ``tz`` (``None``: the local zone), and a time of day means its latest occurrence."""
    if isinstance(since, timedelta):
        return now - since
    if isinstance(since, datetime):
        if since.tzinfo is not None:
            return since
        return since.astimezone() if tz is None else since.replace(tzinfo=tz)
    local_now = now.astimezone(tz)
    cutoff = since_cutoff(datetime.combine(local_now.date(), since), now=now, tz=tz)
    # "Since 23:50" just after midnight means yesterday's 23:50, not a time still to come.
    return cutoff - timedelta(days=1) if cutoff > now else cutoff


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------

# Shown first, in this order, because they say which trade and order a line is about.
_KEY_FIELDS: Final = (
    "trade_id",
    "trade_ids",
    "symbol",
    "symbols",
    "client_order_id",
    "broker_order_id",
    "rule",
    "status",
    "action",
)
_PRICE_NAMES: Final = frozenset({"price", "mark", "bid", "ask", "last", "credit", "debit"})
_LEVEL_WIDTH: Final = max(len(name) for name in LEVELS)
_ACTOR_WIDTH: Final = 16

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_LEVEL_COLOR: Final[Mapping[str, str]] = {
    "debug": _DIM,
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}


def _field_rank(index_and_name: tuple[int, str]) -> tuple[int, int]:
    index, name = index_and_name
    if name in _KEY_FIELDS:
        return (0, _KEY_FIELDS.index(name))
    if "quantity" in name:
        return (1, index)
    if "price" in name or name in _PRICE_NAMES:
        return (2, index)
    if "pnl" in name:
        return (3, index)
    return (4, index)  # everything else keeps the line's order


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # Quoted when it would be ambiguous or could drive the terminal (escape sequences).
        if value and value.isprintable() and not any(c in value for c in ' ="'):
            return value
        return _compact.encode(value).decode()
    if isinstance(value, int | Decimal):
        return str(value)
    return _compact.encode(value).decode()


def _value_text(value: object, limit: int) -> str:
    if isinstance(value, list) and all(
        isinstance(v, str | int | Decimal) and "," not in _scalar(v) for v in value
    ):
        text = "[" + ",".join(_scalar(v) for v in value) + "]"
    else:
        text = _scalar(value)
    # The engine redacts before writing; masking again costs little and covers foreign lines.
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and code else text


def format_record(
    record: Record, *, color: bool = False, tz: tzinfo | None = None, max_value: int = 80
) -> str:
    """``HH:MM:SS.mmm LEVEL actor event key=value ...``, without a newline.

    Time in ``tz`` (``None``: the local zone); the fields that identify a trade or an order come
    first, then quantities, prices and P&L, then the rest; values longer than ``max_value``
    characters are cut with an ellipsis.
    """
    local = record.ts.astimezone(tz)
    clock = f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}"
    level = f"{record.level.upper():<{_LEVEL_WIDTH}}"
    actor = f"{_scalar(record.actor):<{_ACTOR_WIDTH}}"
    parts = [
        _paint(clock, _DIM, color),
        _paint(level, _LEVEL_COLOR[record.level], color),
        actor,
        _paint(_scalar(record.event), _BOLD, color),
    ]
    for _, name in sorted(enumerate(record.fields), key=_field_rank):
        key = _paint(f"{_scalar(name)}=", _DIM, color)
        parts.append(key + _value_text(record.fields[name], max_value))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# One line in, what to print out
# ---------------------------------------------------------------------------------------------


class ViewOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How ``spreadwatch tail`` shows lines. ``json``: print kept lines byte for byte."""

    filter: LogFilter = LogFilter()
    json: bool = False
    color: bool = False
    tz: tzinfo | None = None
    max_value: int = 80


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    """What to print for one input line (``None``: filtered out)."""

    output: bytes | None
    malformed: bool


def render_line(line: bytes, options: ViewOptions) -> Rendered:
    """The output for one input line (its newline included or not; output always ends in one).

    Malformed lines are always printed as they are: no filter can tell what they are about.
    """
    parsed = parse_line(line)
    newline_ended = line if line.endswith(b"\n") else line + b"\n"
    if isinstance(parsed, Malformed):
        return Rendered(output=newline_ended, malformed=True)
    if not matches(parsed, options.filter):
        return Rendered(output=None, malformed=False)
    if options.json:
        return Rendered(output=newline_ended, malformed=False)
    text = format_record(parsed, color=options.color, tz=options.tz, max_value=options.max_value)
    return Rendered(output=text.encode() + b"\n", malformed=False)
