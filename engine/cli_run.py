"""``spreadwatch run``: the engine against the configured broker, until stopped.

The broker's REST and stream URLs, token and account come from the configuration (file,
``SPREADWATCH_BROKER__*``, ``TRADIER_TOKEN``, ``TRADIER_ACCOUNT_ID``). It mirrors the account,
watches every managed spread, and routes closing orders when an exit is decided; with
``--dry-run`` (or ``SPREADWATCH_ENGINE__DRY_RUN=true``) it decides and records, and sends
nothing. A supervisor escalation exits 1 with one line saying why.

Before anything starts, the broker is asked which accounts the token may trade
(:mod:`engine.preflight`): a missing or refused token, a wrong account or an unreachable broker
ends the command with one line saying what to set.

**Stopping** (SIGTERM, as a container runtime sends, or SIGINT): every actor is cancelled at
once, so no new order is started; an order request already sent waits for its answer and
records it; the audit writer flushes what is pending (the rest stays in its journal); the
embedded database stops; the exit status is 0. ``engine.shutdown_timeout_seconds`` (default
20) bounds it all: past it the process exits with status 1, leaving the rest to the next start.

With ``broker.kind = "sim"`` (a ``spreadwatch sim`` on the other end) market time follows the
simulator's clock (read once from its ``/sim/clock``), so the time and DTE rules see the
scenario's day, not today.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
import time

import httpx
import trio

from engine.cli_db import open_configured_database
from engine.clock import MarketClock, TrioMarketClock
from engine.config import Config
from engine.errors import ConfigError, DatabaseUnavailable
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
    from engine.preflight import check_broker, database_hint
    from engine.supervisor import SupervisorEscalation
    from storage import apply_migrations

    await check_broker(config)  # before anything starts: a wrong token costs a second
    market_clock = await _simulator_clock(config) if config.broker.kind == "sim" else None
    stopping: _Shutdown | None = None
    async with contextlib.AsyncExitStack() as stack:
        try:
            db = await stack.enter_async_context(open_configured_database(config))
        except DatabaseUnavailable as exc:
            raise database_hint(config, exc) from exc
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
                        stopping = _Shutdown(signal.Signals(signum).name, config)
                        # Cancelling stops every actor at once, so no new order starts; an
                        # order request already on the wire finishes and its answer is
                        # recorded (shielded in the order follower, within its submit
                        # timeout), and the audit writer flushes (shielded, within its own).
                        nursery.cancel_scope.cancel()
                        break
        except* SupervisorEscalation as group:
            reasons = "; ".join(str(exc) for exc in group.exceptions)
            if stopping is None:
                raise SystemExit(f"spreadwatch: error: the engine gave up: {reasons}") from None
            # An actor that fails while being stopped (a database call cut short under load)
            # loses nothing: what it was doing is in the database or the audit journal for the
            # next start. The stop asked for still completes.
            _log.error("engine.stop_error", error=reasons)
    # The embedded database has stopped (the exit stack above).
    if stopping is not None:
        stopping.done()
    else:
        _log.info("engine.stopped")
    return 0


class _Shutdown:
    """A stop asked for by a signal: logs it, bounds it, and says how long it took.

    The bound is a watchdog thread, not a trio deadline: the parts that must finish (an order
    request on the wire, the audit flush, stopping the embedded database) are shielded or run in
    threads, so only something outside trio can cut them short. If the stop overruns
    ``engine.shutdown_timeout_seconds`` the process exits at once with status 1 and one line;
    whatever was left is recorded for the next start's reconciliation (SUBMITTED orders are
    looked up by their tag, the audit journal is replayed).
    """

    def __init__(self, signal_name: str, config: Config) -> None:
        self.timeout = config.engine.shutdown_timeout_seconds
        self.started = time.monotonic()
        _log.info("engine.stopping", signal=signal_name, timeout_seconds=self.timeout)
        self._finished = threading.Event()
        threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True).start()

    def _watch(self) -> None:
        if self._finished.wait(self.timeout):
            return
        _log.error(
            "engine.shutdown_overdue",
            timeout_seconds=self.timeout,
            action="exiting now; the next start reconciles orders and replays the audit journal",
        )
        sys.stderr.write(
            f"spreadwatch: error: the engine did not stop within {self.timeout:g} s "
            "(engine.shutdown_timeout_seconds); exiting now, the next start reconciles\n"
        )
        sys.stderr.flush()
        os._exit(1)

    def done(self) -> None:
        self._finished.set()
        _log.info("engine.stopped", seconds=round(time.monotonic() - self.started, 3))


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
