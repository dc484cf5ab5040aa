"""spreadwatch's exception tree.

Foreign exceptions (httpx, asyncpg, trio-websocket, OS errors) are translated into these at the
boundary where they are caught (``raise OurError(...) from exc``), so callers above the boundary
only ever see this tree::

    SpreadwatchError
    ├── FatalError                 never retried: the supervisor escalates at once
    │   ├── ConfigError            a bad config key, value or file
    │   ├── AuthFailed             the broker refused our credentials
    │   └── ScenarioError          a bad simulator scenario file
    ├── DatabaseError
    │   ├── DatabaseUnavailable    cannot connect / connection lost (retryable)
    │   └── MigrationError         a migration failed or was changed after it was applied (fatal)
    ├── BrokerError
    │   ├── BrokerUnavailable      timeout, 5xx, dropped connection: the outcome is unknown
    │   ├── RateLimited            the broker said slow down
    │   └── BrokerAnswerInvalid    the broker answered something we cannot decode
    ├── OrderRejected              the broker refused an order (a message where it is handled)
    │   └── OrderAlreadyFinal      a cancel/modify found the order already final (e.g. filled):
    │                              not an error, the order's outcome is to be read
    └── InvalidSymbol              not an OCC option symbol
"""

from __future__ import annotations

__all__ = [
    "AuthFailed",
    "BrokerAnswerInvalid",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailable",
    "FatalError",
    "InvalidSymbol",
    "MigrationError",
    "OrderAlreadyFinal",
    "OrderRejected",
    "RateLimited",
    "ScenarioError",
    "SpreadwatchError",
]


class SpreadwatchError(Exception):
    """Base of every error spreadwatch raises on purpose."""


class FatalError(SpreadwatchError):
    """Retrying cannot help; a supervisor must not restart the child that raised it."""


class ConfigError(FatalError):
    """A configuration key, value or file is wrong. The message names the key."""


class AuthFailed(FatalError):
    """The broker refused the token (401 or an auth fault)."""


class ScenarioError(FatalError):
    """A simulator scenario file is wrong. The message names the field and why."""


class DatabaseError(SpreadwatchError):
    """Something went wrong talking to PostgreSQL."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached (or the connection was lost)."""


class MigrationError(DatabaseError, FatalError):
    """A migration failed, or an applied migration's file was changed afterwards."""


class BrokerError(SpreadwatchError):
    """Something went wrong talking to the broker."""


class BrokerUnavailable(BrokerError):
    """Timeout, 5xx or dropped connection: whether the request took effect is unknown."""


class RateLimited(BrokerError):
    """The broker refused the request for its rate limit."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerAnswerInvalid(BrokerError):
    """The broker's answer could not be decoded into what we expected."""


class OrderRejected(SpreadwatchError):
    """The broker refused an order; ``reasons`` holds the broker's words."""

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class OrderAlreadyFinal(OrderRejected):
    """A cancel or modify reached an order that had already reached a final ``state``
    (``filled``, ``canceled``, ``expired``, ``rejected``): nothing was changed, and the
    order's outcome (a fill above all) must be read from the broker, not treated as an error.
    Catch it before :class:`OrderRejected`."""

    def __init__(self, message: str, *, state: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message, reasons=reasons)
        self.state = state


class InvalidSymbol(SpreadwatchError, ValueError):
    """A string that is not an OCC option symbol in Tradier's form."""
