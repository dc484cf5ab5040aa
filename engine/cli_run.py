"""``spreadwatch run --dry-run``: the engine against the configured broker, until stopped.

The broker's REST and stream URLs, token and account come from the configuration (file,
``SPREADWATCH_BROKER__*``, ``TRADIER_TOKEN``, ``TRADIER_ACCOUNT_ID``). The order side is not
wired yet, so ``run`` insists on ``--dry-run``: it mirrors the account, watches every managed
spread, and records every exit decision without sending an order. SIGINT or SIGTERM stops it
cleanly (exit status 0); a supervisor escalation exits 1 with one line saying why.
"""

from __future__ import annotations

import argparse
import signal

import trio

from engine.cli_db import open_configured_database
from engine.config import Config
from engine.errors import ConfigError
from engine.log import get_logger

__all__ = ["register"]

_log = get_logger("engine")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the engine against the configured broker (dry run for now)",
        description="Mirror the broker account, watch every managed spread and record exit "
        "decisions on every quote tick. Needs --dry-run until order routing lands.",
    )
    run.set_defaults(handler=_run)


async def _run(args: argparse.Namespace, config: Config) -> int:
    from engine.app import run_engine
    from engine.supervisor import SupervisorEscalation
    from storage import apply_migrations

    if not config.engine.dry_run:
        raise ConfigError(
            "engine.dry_run: order routing is not available yet; run with --dry-run "
            "(or SPREADWATCH_ENGINE__DRY_RUN=true)"
        )
    async with open_configured_database(config) as db:
        await apply_migrations(db)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: run_engine(config, db=db, task_status=task_status)
                )
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        _log.info("engine.stopping", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        break
        except* SupervisorEscalation as group:
            reasons = "; ".join(str(exc) for exc in group.exceptions)
            raise SystemExit(f"spreadwatch: error: the engine gave up: {reasons}") from None
    _log.info("engine.stopped")
    return 0
