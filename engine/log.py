"""Structured logging: one JSON object per line, for people who tail the engine.

Every record is a single line of JSON with, in this order::

    {"ts": "2025-01-02T15:04:05.123Z", "level": "info", "event": "order_router.submitted",
     "actor": "order_router", <bound fields>, <call fields>}

Usage::

    log = get_logger(actor="order_router")
    log.info("order_router.submitted", client_order_id=coid, trade_id=trade_id)
    trade_log = log.bind(trade_id=trade_id)      # context carried into every later record

Rules this module enforces (STYLE.md, "Logging"):

- ``event`` is a stable, dotted, lower_snake name (``actor.what_happened``); anything else is
  logged as ``log.invalid_event`` with the offending name as a field, so a typo shows up in the
  logs instead of crashing the caller.
- Only the five standard levels exist. The threshold comes from config (``log.level``).
- Secrets never reach the output: a field whose name contains token / secret / password /
  authorization / api_key is written as ``"***"`` (also inside nested mappings), a
  :class:`Secret` is always written as ``"***"``, and inside string values bearer tokens,
  passwords in URLs (``user:password@host``) and secret-looking query parameters are masked.
- Logging never raises into the caller: a value msgspec cannot encode is written as its
  ``repr``; a stream that fails to write drops the record.
- A filtered-out call costs one dict lookup and one comparison.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, Literal, get_args

import msgspec

__all__ = [
    "LEVELS",
    "Level",
    "LogSink",
    "Logger",
    "Secret",
    "configure_logging",
    "default_sink",
    "get_logger",
    "redact_text",
]

Level = Literal["debug", "info", "warning", "error", "critical"]
LEVELS: Final[tuple[str, ...]] = get_args(Level)
_SEVERITY: Final[dict[str, int]] = {name: 10 * (i + 1) for i, name in enumerate(LEVELS)}

_EVENT_RE: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_RESERVED: Final = frozenset({"ts", "level", "event", "actor"})
_SECRET_NAME_PARTS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "api_key",
    "apikey",
    "sessionid",
    "session_id",
)
_MASK: Final = "***"

# Inside free text: "Bearer abc", "scheme://user:pw@host", "?access_token=abc&...".
_BEARER_RE: Final = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_URL_PASSWORD_RE: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(@)")
_QUERY_SECRET_RE: Final = re.compile(
    r"(?i)([?&;](?:[a-z0-9_]*?)(?:token|secret|password|api_?key|sessionid)[a-z0-9_]*=)[^&\s\"']+"
)


class Secret:
    """A string that must never be printed: ``repr``, ``str`` and the logger all show ``***``.

    Call :meth:`reveal` at the one place the real value is needed (an Authorization header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


def redact_text(text: str) -> str:
    """Mask bearer tokens, URL passwords and secret query parameters inside ``text``."""
    # Cheap pre-checks: most log strings contain none of these and skip the regexes.
    lowered = text.lower()
    if "bearer" in lowered:
        text = _BEARER_RE.sub(r"\1" + _MASK, text)
    if "@" in text:
        text = _URL_PASSWORD_RE.sub(r"\1" + _MASK + r"\2", text)
    if "=" in text and ("?" in text or "&" in text or ";" in text):
        text = _QUERY_SECRET_RE.sub(r"\1" + _MASK, text)
    return text


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_NAME_PARTS)


def _redact(value: object, depth: int = 0) -> object:
    """Return ``value`` with secrets masked; containers are copied only when they hold any."""
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:  # deeper than any sane log field; leave it to the encoder's repr fallback
        return value
    if isinstance(value, Mapping):
        return {
            key: (_MASK if isinstance(key, str) and _is_secret_name(key) else _redact(v, depth + 1))
            for key, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, msgspec.Struct):
        # Walked like a mapping so a URL or a secret-named field inside a config section or a
        # message is masked too; the tag is kept so the record still says what it was.
        struct_config = value.__struct_config__
        fields: dict[str, object] = {}
        if struct_config.tag_field is not None:
            fields[struct_config.tag_field] = struct_config.tag
        fields.update(msgspec.structs.asdict(value))
        return _redact(fields, depth)
    return value


def _enc_hook(obj: object) -> object:
    # Called by msgspec only for types it cannot encode natively.
    if isinstance(obj, Secret):
        return _MASK
    fspath = getattr(obj, "__fspath__", None)
    if fspath is not None:
        return redact_text(str(fspath()))
    return redact_text(repr(obj))


def _utc_timestamp() -> str:
    now = time.time()
    seconds = int(now)
    millis = int((now - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class LogSink:
    """Where records go and which levels pass. One per process is usual (:func:`default_sink`).

    ``stream`` is a binary stream; ``None`` means the process's stdout, looked up at write time
    so a redirected ``sys.stdout`` is honoured. ``now`` returns the ``ts`` string (tests pin it).
    """

    def __init__(
        self,
        *,
        stream: IO[bytes] | None = None,
        level: Level = "info",
        now: Callable[[], str] = _utc_timestamp,
    ) -> None:
        self.stream = stream
        self.threshold = _SEVERITY[level]
        self.now = now
        # One encoder reused for every record (msgspec's advice); Decimal goes out as a string.
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="string")

    def set_level(self, level: Level) -> None:
        if level not in _SEVERITY:
            raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
        self.threshold = _SEVERITY[level]

    def enabled(self, level: str) -> bool:
        return _SEVERITY.get(level, 0) >= self.threshold

    def emit(self, level: str, event: str, actor: str, fields: Mapping[str, object]) -> None:
        """Encode and write one record. Never raises (except BaseExceptions like Cancelled)."""
        line: bytes | None
        try:
            line = self._encode(level, event, actor, fields)
        except Exception as exc:  # the record itself is broken: say so rather than vanish
            line = self._broken_record(event, actor, exc)
        if line is None:
            return
        try:
            self._write(line)
        except Exception:
            pass  # a log line lost is better than a crashed caller

    def _broken_record(self, event: str, actor: str, exc: Exception) -> bytes | None:
        record = {
            "ts": self.now(),
            "level": "error",
            "event": "log.unencodable_record",
            "actor": repr(actor),
            "original_event": repr(event),
            "error": repr(exc),
        }
        try:
            return self._encoder.encode(record) + b"\n"
        except Exception:
            return None

    def _encode(self, level: str, event: str, actor: str, fields: Mapping[str, object]) -> bytes:
        record: dict[str, object] = {
            "ts": self.now(),
            "level": level,
            "event": event,
            "actor": actor,
        }
        for name, value in fields.items():
            key = f"{name}_" if name in _RESERVED else name
            record[key] = _MASK if _is_secret_name(name) else _redact(value)
        try:
            return self._encoder.encode(record) + b"\n"
        except Exception:
            # Something msgspec refuses even with enc_hook (a cycle, say): find the guilty
            # fields and write their repr instead, so the record still carries its context.
            for (key, value), original in zip(
                list(record.items())[4:], fields.values(), strict=False
            ):
                if not self._encodes(value):
                    record[key] = redact_text(repr(original))
            return self._encoder.encode(record) + b"\n"

    def _encodes(self, value: object) -> bool:
        try:
            self._encoder.encode(value)
        except Exception:
            return False
        return True

    def _write(self, line: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.write(line)
            stream.flush()
            return
        out = sys.stdout
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            out.flush()  # keep ordering with anything printed through the text layer
            buffer.write(line)
            buffer.flush()
        else:
            out.write(line.decode("utf-8"))
            out.flush()


_default_sink = LogSink()


def default_sink() -> LogSink:
    """The process-wide sink that loggers without an explicit sink write to."""
    return _default_sink


def configure_logging(*, level: Level = "info", stream: IO[bytes] | None = None) -> LogSink:
    """Set the process-wide threshold and stream (called once, by the composition root)."""
    _default_sink.set_level(level)
    _default_sink.stream = stream
    return _default_sink


class Logger:
    """A named source of records (``actor``) with bound context fields. Cheap to copy."""

    __slots__ = ("_actor", "_fields", "_sink")

    def __init__(
        self, actor: str, *, sink: LogSink | None = None, fields: Mapping[str, object] | None = None
    ) -> None:
        self._actor = actor
        self._sink = sink
        self._fields: dict[str, Any] = dict(fields) if fields else {}

    @property
    def actor(self) -> str:
        return self._actor

    def bind(self, **fields: object) -> Logger:
        """A logger that adds ``fields`` to every record (later call fields win on clashes)."""
        return Logger(self._actor, sink=self._sink, fields={**self._fields, **fields})

    def is_enabled_for(self, level: Level) -> bool:
        """True when a record at ``level`` would be written (to skip costly field building)."""
        sink = self._sink if self._sink is not None else _default_sink
        return sink.enabled(level)

    def debug(self, event: str, /, **fields: object) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, /, **fields: object) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, /, **fields: object) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, /, **fields: object) -> None:
        self.log("error", event, **fields)

    def critical(self, event: str, /, **fields: object) -> None:
        self.log("critical", event, **fields)

    def log(self, level: Level, event: str, /, **fields: object) -> None:
        sink = self._sink if self._sink is not None else _default_sink
        severity = _SEVERITY.get(level)
        if severity is None:
            # A made-up level is a bug in the caller; keep the record, at a level people see.
            fields = {"invalid_level": repr(level), **fields}
            level, severity = "error", _SEVERITY["error"]
        if severity < sink.threshold:
            return
        if not _valid_event(event):
            fields = {"invalid_event": repr(event), **fields}
            event = "log.invalid_event"
        merged = {**self._fields, **fields} if self._fields else fields
        sink.emit(level, event, self._actor, merged)


_valid_events: set[str] = set()


def _valid_event(event: object) -> bool:
    # Event names are a small fixed set of literals, so remembering the good ones makes the
    # check a set lookup after the first call.
    if event in _valid_events:
        return True
    if isinstance(event, str) and len(event) <= 128 and _EVENT_RE.fullmatch(event):
        _valid_events.add(event)
        return True
    return False


def get_logger(actor: str, *, sink: LogSink | None = None) -> Logger:
    """The logger for one actor (or module). ``sink=None`` follows :func:`configure_logging`."""
    return Logger(actor, sink=sink)
