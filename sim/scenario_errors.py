"""msgspec validation messages rewritten for people: ``field.path: why, got value``."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["explain"]

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def explain(message: str, raw: Any) -> str:
    """Rewrite msgspec's message as ``field.path: why, got value``."""
    match = _AT.match(message)
    assert match is not None
    msg, path = match["msg"], (match["path"] or "").lstrip(".")
    if m := re.match(r"Object (missing required|contains unknown) field `(\w+)`", msg):
        field = _join(path, m[2])
        return (
            f"{field}: required field is missing"
            if "missing" in m[1]
            else f"{field}: unknown field"
        )
    value = _lookup(raw, path)
    if m := re.match(r"Expected `(\w+)` (.+)$", msg):
        bound = m[2].replace(".0", "") if m[2].endswith(".0") else m[2]
        if bound.startswith("of length"):
            return f"{path}: must have length {bound[10:]}, got {len(value) if value else 0}"
        return f"{path}: must be {bound}, got {value!r}"
    if m := re.match(r"Expected `([^`]+)`, got `(\w+)`", msg):
        return f"{path}: must be {m[1]}, got {m[2]} {value!r}"
    if msg.startswith("Invalid enum value") or msg.startswith("Invalid value"):
        what = "unknown kind" if path.endswith("kind") else "invalid value"
        return f"{path}: {what} {value!r}"
    # our __post_init__ messages start with the field name
    if m := re.match(r"([\w\[\]\.]+): (.*)$", msg, re.S):
        return f"{_join(path, m[1])}: {m[2]}"
    return f"{path or 'scenario'}: {msg}"


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _lookup(raw: Any, path: str) -> Any:
    node = raw
    for name, index in re.findall(r"(\w+)|\[(\d+)\]", path):
        try:
            node = node[name] if name else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return node
