"""``spreadwatch demo``: the quick start's "run it" command.

For now it starts the embedded database (kept in ``.spreadwatch/pgdata`` under the current
directory unless configured otherwise, so the quick start leaves nothing elsewhere), applies the
migrations and prints one status line. A later issue makes it run the whole engine against the
simulator.
"""

from __future__ import annotations

import argparse
import pathlib

from engine.cli_db import open_configured_database
from engine.config import Config

__all__ = ["DEMO_DATA_DIR", "register"]

#: Relative to the current directory when the command runs.
DEMO_DATA_DIR = pathlib.Path(".spreadwatch") / "pgdata"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="start the embedded database, migrate it and show the status",
        description="Start the embedded database (in ./.spreadwatch/pgdata unless configured), "
        "apply the migrations and print one status line.",
    )
    # The defaults layer only: --data-dir, SPREADWATCH_DATABASE__DATA_DIR, the config file
    # and DATABASE_URL all still win.
    demo.set_defaults(
        handler=_demo, config_defaults={"database.data_dir": pathlib.Path.cwd() / DEMO_DATA_DIR}
    )


async def _demo(args: argparse.Namespace, config: Config) -> int:
    from storage import apply_migrations, migration_status

    async with open_configured_database(config) as db:
        applied_now = await apply_migrations(db)
        states = await migration_status(db)
        version = await db.fetchval("SHOW server_version")
        where = (
            f"embedded PostgreSQL {version} in {_shown(config.database.data_dir)}"
            if db.embedded
            else f"PostgreSQL {version} at {db.target}"
        )
        applied = sum(1 for s in states if s.applied_at is not None)
        latest = states[-1].name if states else "none"
        print(
            f"spreadwatch demo: database ready: {where}; migrations applied: "
            f"{applied}/{len(states)} (latest {latest}, {len(applied_now)} applied now)",
            flush=True,
        )
    return 0


def _shown(path: pathlib.Path) -> str:
    # Shorter and friendlier when the data lives under the current directory.
    try:
        return str(path.absolute().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)
