"""Checks ``spreadwatch run`` makes before it starts anything, each failing with one line that
says what to do (issue 7: errors a person can act on).

They run before the database is opened or a socket is listened on, so a wrong token or account
costs a second, not an embedded PostgreSQL start, and nothing is half-started when they fail.
Failures raise :class:`~engine.errors.ConfigError` (the setting is wrong: exit status 2) or
:class:`~engine.errors.SpreadwatchError` (something outside is down: exit status 1); the CLI
prints either as ``spreadwatch: error: <message>``.
"""

from __future__ import annotations

import trio

from engine.brokers.tradier.rest import TradierRest
from engine.config import Config
from engine.errors import (
    AuthFailed,
    BrokerAnswerInvalid,
    BrokerError,
    ConfigError,
    DatabaseUnavailable,
    SpreadwatchError,
)

__all__ = ["BROKER_CHECK_SECONDS", "check_broker", "database_hint", "require_credentials"]

BROKER_CHECK_SECONDS = 10.0


def require_credentials(config: Config) -> tuple[str, str]:
    """The broker token and account id, or a ConfigError naming the variable to set."""
    broker = config.broker
    token = broker.token.reveal() if broker.token else None
    if not token:
        raise ConfigError(
            "no broker token: set TRADIER_TOKEN (or broker.token in the config file) to your "
            "Tradier access token"
        )
    if not broker.account_id:
        raise ConfigError(
            "no broker account: set TRADIER_ACCOUNT_ID (or broker.account_id in the config "
            "file) to the account number to manage"
        )
    return token, broker.account_id


async def check_broker(config: Config) -> None:
    """The broker answers, accepts the token, and the token may trade the configured account."""
    token, account_id = require_credentials(config)
    url = config.broker.rest_url
    try:
        with trio.fail_after(BROKER_CHECK_SECONDS):
            async with TradierRest(base_url=url, token=token, account_id=account_id) as rest:
                accounts = await rest.get_profile_accounts()
    except AuthFailed as exc:
        raise ConfigError(
            f"the broker at {url} refused the token ({exc}): check TRADIER_TOKEN; a sandbox "
            "token works only with broker.rest_url = https://sandbox.tradier.com/v1"
        ) from exc
    except trio.TooSlowError as exc:
        raise SpreadwatchError(
            f"the broker at {url} did not answer within {BROKER_CHECK_SECONDS:g} s: check "
            "broker.rest_url (SPREADWATCH_BROKER__REST_URL) and the network"
        ) from exc
    except BrokerAnswerInvalid as exc:
        raise SpreadwatchError(
            f"the broker at {url} gave an answer that is not Tradier's ({exc}): check "
            "broker.rest_url (SPREADWATCH_BROKER__REST_URL)"
        ) from exc
    except BrokerError as exc:
        raise SpreadwatchError(
            f"cannot reach the broker at {url} ({exc}): check broker.rest_url "
            "(SPREADWATCH_BROKER__REST_URL) and the network, then start again"
        ) from exc
    if account_id not in accounts:
        raise ConfigError(
            f"account {account_id} is not one of this token's accounts ({', '.join(accounts)}): "
            "set TRADIER_ACCOUNT_ID to one of them"
        )


def database_hint(config: Config, exc: DatabaseUnavailable) -> DatabaseUnavailable:
    """``exc`` (the database could not be opened) with what to do about it."""
    if config.database.url:
        hint = (
            "check DATABASE_URL (or --database-url / database.url) and that the server runs; "
            "unset it to use the embedded database"
        )
    else:
        hint = (
            f"check that {config.database.data_dir} is writable and not used by another "
            "PostgreSQL, or set DATABASE_URL to use a server"
        )
    return DatabaseUnavailable(f"{exc}: {hint}")
