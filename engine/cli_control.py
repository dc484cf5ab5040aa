"""``spreadwatch halt``, ``spreadwatch resume`` and ``spreadwatch close TRADE_ID``: the
operator's safety switches.

Each opens the configured database (``database.url``, else the embedded server in
``database.data_dir``, which it joins if the engine is running on it), applies any pending
migration, writes the switch for the configured account (``broker.account_id``) and prints one
line saying what it did. A running engine acts on it within a second (its control listener is
notified by the database); an engine that is down acts on it when it starts, since the switch
is stored, not sent.

Exit status 0 when the switch is in the asked state (including "already halted"), 1 for a close
the engine cannot do (an unknown, closed, unmanaged or other account's trade), 2 for a missing
account id.
"""

from __future__ import annotations

import argparse
import getpass
import socket
from typing import TYPE_CHECKING

from engine.cli_db import open_configured_database
from engine.config import Config
from engine.errors import ConfigError

if TYPE_CHECKING:
    from storage.control import HaltState

__all__ = ["register"]

# stdout is the one line saying what was done: the JSON logs stay at warnings unless asked for.
_QUIET = {"log.level": "warning"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    halt = subparsers.add_parser(
        "halt",
        help="stop the engine sending new orders (working orders and watching go on)",
        description="Halt the configured account: the running engine sends no new order until "
        "`spreadwatch resume`. Survives an engine restart.",
    )
    halt.add_argument("--reason", default="manual halt", help="why (kept with the switch)")
    halt.set_defaults(handler=_halt, config_defaults=_QUIET)

    resume = subparsers.add_parser(
        "resume",
        help="lift a halt: the engine may send orders again",
        description="Resume the configured account after `spreadwatch halt`.",
    )
    resume.add_argument("--reason", default="manual resume", help="why (kept with the switch)")
    resume.set_defaults(handler=_resume, config_defaults=_QUIET)

    close = subparsers.add_parser(
        "close",
        help="exit one trade now through the engine's normal exit path",
        description="Ask the engine to close one trade now (a closing order for every leg, "
        "priced and followed like any exit). Served once, even if the engine is down now.",
    )
    close.add_argument("trade_id", type=int, metavar="TRADE_ID", help="the trade's id")
    close.add_argument("--reason", default="manual close", help="why (kept with the request)")
    close.set_defaults(handler=_close, config_defaults=_QUIET)


def _account(config: Config) -> str:
    account_id = config.broker.account_id
    if not account_id:
        raise ConfigError(
            "broker account id is not set: set TRADIER_ACCOUNT_ID (or the config file's "
            "broker section)"
        )
    return account_id


def _operator() -> str:
    """Who is at the keyboard, for the record: ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def _halt(args: argparse.Namespace, config: Config) -> int:
    return await _switch(config, halted=True, reason=args.reason)


async def _resume(args: argparse.Namespace, config: Config) -> int:
    return await _switch(config, halted=False, reason=args.reason)


async def _switch(config: Config, *, halted: bool, reason: str) -> int:
    from storage import apply_migrations
    from storage.control import set_halted

    account_id = _account(config)
    async with open_configured_database(config) as db:
        await apply_migrations(db)
        state, changed = await set_halted(db, account_id, halted, reason, changed_by=_operator())
    if changed and halted:
        print(f"halted {account_id}: no new orders will be sent (reason: {reason})")
    elif changed:
        print(f"resumed {account_id}: new orders may be sent again (reason: {reason})")
    elif halted:
        print(f"already halted {account_id} {_since(state)}: nothing changed")
    else:
        print(f"{account_id} is not halted: nothing to resume")
    return 0


def _since(state: HaltState) -> str:
    when = "" if state.changed_at is None else state.changed_at.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"since {when} by {state.changed_by} (reason: {state.reason})"


async def _close(args: argparse.Namespace, config: Config) -> int:
    from storage import apply_migrations
    from storage.control import get_halted, request_close

    account_id = _account(config)
    trade_id: int = args.trade_id
    async with open_configured_database(config) as db:
        await apply_migrations(db)
        request, created = await request_close(
            db, account_id, trade_id, args.reason, requested_by=_operator()
        )
        halted = (await get_halted(db, account_id)).halted
    when = request.requested_at.strftime("%Y-%m-%d %H:%M:%S %Z")
    if created:
        line = (
            f"close requested for trade {trade_id}: the engine will exit it "
            f"(request {request.request_id}, reason: {request.reason})"
        )
    else:
        line = (
            f"a close of trade {trade_id} is already pending since {when} "
            f"(request {request.request_id}): nothing changed"
        )
    if halted:
        line += "; the engine is halted, so the exit waits for `spreadwatch resume`"
    print(line)
    return 0
