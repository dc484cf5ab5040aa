"""Errors raised by the storage layer, and the translation of asyncpg's errors into them.

Nothing above ``storage`` ever sees an asyncpg exception (it would have to import asyncpg to catch
one). Every asyncpg error is translated here, at the boundary:

- the connection is refused, lost or times out, or the server is shutting down
  -> ``engine.errors.DatabaseUnavailable`` (retryable; one-line message naming the server);
- the server refused a statement -> ``QueryError`` (a ``DatabaseError``), with ``IntegrityError``
  for constraint violations (SQLSTATE class 23) so callers can react to, say, a duplicate
  ``client_order_id`` by reading ``constraint_name`` instead of parsing messages;
- any other asyncpg error (misuse of the driver, a value it cannot encode) -> ``DatabaseError``.

Everything else (``trio.Cancelled``, ``TypeError`` from our own code…) passes through untouched.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from engine.errors import DatabaseError, DatabaseUnavailable

__all__ = [
    "IntegrityError",
    "QueryError",
    "describe_reason",
    "is_connection_error",
    "translate",
]


class QueryError(DatabaseError):
    """PostgreSQL refused a statement. ``sqlstate`` is the five-character SQLSTATE code."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None,
        constraint_name: str | None = None,
        table_name: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name
        self.table_name = table_name
        self.position = position  # 1-based character offset into the statement, if given


class IntegrityError(QueryError):
    """A constraint refused the row: unique, foreign key, check or not-null (SQLSTATE class 23)."""


# SQLSTATE classes and codes that mean "the server is not there for us": connection exceptions
# (08), and admin/crash shutdown or "cannot connect now" (57P01..57P03). 57014 (query_canceled)
# is deliberately absent: that is our own cancellation or a statement timeout, not an outage.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached or the connection is gone."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg reports an operation on a connection that was closed under it this way.
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    return False


def describe_reason(exc: BaseException) -> str:
    """One line saying what went wrong, without a traceback or the exception's class noise."""
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, TimeoutError):
        # asyncio's "Connect call failed ('127.0.0.1', 1)" repeats the address we already name.
        text = os.strerror(exc.errno).lower()
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def translate(exc: BaseException, *, target: str, session_lost: bool = False) -> BaseException:
    """The exception to raise instead of ``exc`` (``exc`` itself if it is not asyncpg's).

    ``session_lost``: the connection the operation ran on is known to be gone, whatever
    ``exc`` says (asyncpg reports a session ended by the server in several ways).
    """
    if session_lost or is_connection_error(exc):
        return DatabaseUnavailable(f"lost the connection to {target}: {describe_reason(exc)}")
    if isinstance(exc, asyncpg.PostgresError):
        return _query_error(exc)
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        return DatabaseError(f"database client error with {target}: {describe_reason(exc)}")
    return exc


def _query_error(exc: Any) -> QueryError:
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    constraint_name: str | None = getattr(exc, "constraint_name", None)
    table_name: str | None = getattr(exc, "table_name", None)
    message = describe_reason(exc)
    detail = getattr(exc, "detail", None)
    detail_line = " ".join(str(detail).split()) if detail else ""
    if detail_line and detail_line not in message:  # asyncpg's text may already include it
        message = f"{message} ({detail_line})"
    message = f"{message} [SQLSTATE {sqlstate}]"
    raw_position = getattr(exc, "position", None)
    position = int(raw_position) if raw_position and str(raw_position).isdigit() else None
    cls = IntegrityError if sqlstate is not None and sqlstate.startswith("23") else QueryError
    return cls(
        message,
        sqlstate=sqlstate,
        constraint_name=constraint_name,
        table_name=table_name,
        position=position,
    )
