"""``spreadwatch run``: the engine against the configured broker, until stopped.

The broker's REST and stream URLs, token and account come from the configuration (file,
``SPREADWATCH_BROKER__*``, ``TRADIER_TOKEN``, ``TRADIER_ACCOUNT_ID``). It mirrors the account,
watches every managed spread, and routes closing orders when an exit is decided; with
``--dry-run`` (or ``SPREADWATCH_ENGINE__DRY_RUN=true``) it decides and records, and sends
nothing. SIGINT or SIGTERM stops it (exit status 0); a supervisor escalation exits 1 with one
line saying why.

With ``broker.kind = "sim"`` (a ``spreadwatch sim`` on the other end) market time follows the
simulator's clock (read once from its ``/sim/clock``), so the time and DTE rules see the
scenario's day, not today.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal

import httpx
import trio

from engine.cli_db import open_configured_database
from engine.clock import MarketClock, TrioMarketClock
from engine.config import Config
from engine.errors import ConfigError
from engine.log import get_logger

__all__ = ["register"]

_log = get_logger("engine")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the engine against the configured broker",
        description="Mirror the broker account, watch every managed spread, evaluate the exit "
        "rules on every quote tick and route closing orders (none with --dry-run).",
    )
    run.set_defaults(handler=_run)


async def _run(args: argparse.Namespace, config: Config) -> int:
    from engine.app import run_engine
    from engine.supervisor import SupervisorEscalation
    from storage import apply_migrations

    market_clock = await _simulator_clock(config) if config.broker.kind == "sim" else None
    async with open_configured_database(config) as db:
        await apply_migrations(db)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: run_engine(
                        config, db=db, market_clock=market_clock, task_status=task_status
                    )
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


async def _simulator_clock(config: Config) -> MarketClock:
    """Market time that follows a simulator's clock (its ``/sim/clock``)."""
    base = config.broker.rest_url.rstrip("/").removesuffix("/v1")
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = (await client.get(f"{base}/sim/clock")).raise_for_status().json()
        return TrioMarketClock(
            dt.datetime.fromisoformat(answer["market_time"]), speed=float(answer["speed"])
        )
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"broker.kind = sim: cannot read the simulator's clock at {base}/sim/clock ({exc})"
        ) from exc
