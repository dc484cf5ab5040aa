"""``spreadwatch db migrate`` and ``spreadwatch db status``.

Both open the database the configuration names (``database.url``, else the embedded server in
``database.data_dir``) through ``storage``; storage and its asyncpg imports are loaded only when
one of these commands runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from engine.config import Config

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from storage import Database, MigrationState

__all__ = ["describe_state", "open_configured_database", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="database migrations", description="Database tools.")
    commands = db.add_subparsers(dest="db_command", metavar="{migrate,status}", required=True)
    migrate = commands.add_parser(
        "migrate", help="apply every migration not applied yet (safe to run again)"
    )
    migrate.set_defaults(handler=_migrate)
    status = commands.add_parser(
        "status", help="list migrations; exit 1 if any is pending or changed"
    )
    status.set_defaults(handler=_status)


def open_configured_database(config: Config) -> AbstractAsyncContextManager[Database]:
    """``storage.open_database`` with the configured URL, data directory and timeout."""
    from storage import open_database

    return open_database(
        config.database.url,
        data_dir=config.database.data_dir.expanduser().absolute(),
        connect_timeout=config.database.connect_timeout,
    )


async def _migrate(args: argparse.Namespace, config: Config) -> int:
    from storage import apply_migrations

    async with open_configured_database(config) as db:
        applied = await apply_migrations(db)
        for name in applied:
            print(f"applied {name}")
        if applied:
            print(f"{db.target}: {len(applied)} migration(s) applied")
        else:
            print(f"{db.target}: up to date, nothing to apply")
    return 0


async def _status(args: argparse.Namespace, config: Config) -> int:
    from storage import migration_status

    async with open_configured_database(config) as db:
        states = await migration_status(db)
        print(_status_report(db, states))
    pending = sum(1 for s in states if s.applied_at is None)
    changed = sum(1 for s in states if s.applied_at is not None and not s.checksum_matches)
    return 1 if pending or changed else 0


def _status_report(db: Database, states: list[MigrationState]) -> str:
    width = max((len(s.name) for s in states), default=0)
    lines = [f"{s.name:<{width}}  {describe_state(s)}" for s in states]
    applied = sum(1 for s in states if s.applied_at is not None and s.checksum_matches)
    pending = sum(1 for s in states if s.applied_at is None)
    changed = len(states) - applied - pending
    lines.append(
        f"{db.target}: {applied} of {len(states)} migration(s) applied, "
        f"{pending} pending, {changed} changed"
    )
    return "\n".join(lines)


def describe_state(state: MigrationState) -> str:
    """One migration's state in words: applied (when), pending, changed, or file missing."""
    if state.applied_at is None:
        return "pending"
    when = state.applied_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if state.file_missing:
        return f"APPLIED {when} BUT ITS FILE IS MISSING from this version of spreadwatch"
    if not state.checksum_matches:
        return f"CHANGED: its file differs from what was applied {when}"
    return f"applied {when}"
