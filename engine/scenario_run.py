"""A scenario run: the simulator and the engine together, on a fresh database.

``spreadwatch scenario run FILE --report OUT.json`` and ``spreadwatch demo`` both come here. The
simulator serves the scenario on loopback; the engine runs against it over real HTTP and
WebSocket connections exactly as it would against Tradier (only the URLs, token and account
differ), on a fresh embedded PostgreSQL in a temporary directory (or the server ``database.url``
names). The scenario's ``[[trades]]`` are seeded into the database before the engine starts, as
the trades the engine itself had opened. When the scenario's duration has passed in market time,
the report is built from the simulator's record (orders, positions) and the engine's database
(trades, decisions).

The engine's market clock follows the simulator's: both are driven by trio's clock from the same
start, so DTE and time-of-day rules see the scenario's market time.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import tempfile
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import trio

from engine.app import EngineHandle, run_engine
from engine.clock import TrioMarketClock
from engine.config import Config, Secret
from engine.domain.exit_plan import default_plan, plan_with_overrides
from engine.domain.spread import Leg, Side, Spread
from engine.errors import ConfigError, ScenarioError
from engine.messages import TradeOrigin
from sim.report import build_report
from sim.scenario import Scenario
from sim.server import SimHandle, serve_simulator
from storage import Database, apply_migrations, open_database
from storage.trades import PgTradeStore

__all__ = ["ScenarioProgress", "run_with_engine", "seed_trades"]

ScenarioProgress = Callable[[SimHandle, EngineHandle], Any]


def engine_config_for(config: Config, handle: SimHandle, *, dry_run: bool) -> Config:
    """``config`` pointed at the simulator."""
    broker = msgspec.structs.replace(
        config.broker,
        kind="sim",
        rest_url=handle.rest_url,
        market_stream_url=handle.market_ws_url,
        account_stream_url=handle.account_ws_url,
        token=Secret(handle.token),
        account_id=handle.account_id,
    )
    engine = msgspec.structs.replace(config.engine, dry_run=dry_run or config.engine.dry_run)
    # A run beside its simulator takes any free port (logged as http.listening): runs and tests
    # side by side, or a real engine on 8787, never collide.
    http = msgspec.structs.replace(config.http, port=0)
    return msgspec.structs.replace(config, broker=broker, engine=engine, http=http)


async def seed_trades(db: Database, scenario: Scenario, *, opened_at: dt.datetime) -> list[int]:
    """Insert the scenario's pre-seeded trades; their ids in scenario order."""
    store = PgTradeStore(db)
    ids = []
    for index, trade in enumerate(scenario.trades):
        legs = [
            Leg.from_position(
                leg.option_symbol,
                leg.ratio * trade.quantity * (1 if leg.side == Side.LONG else -1),
            )
            for leg in trade.legs
        ]
        spread = Spread.from_legs(legs)
        try:
            plan_with_overrides(default_plan(spread.strategy), trade.exit_plan)
        except ConfigError as exc:
            raise ScenarioError(f"trades[{index}].exit_plan: {exc}") from exc
        snapshot = await store.insert_trade(
            account_id=scenario.account_id,
            spread=spread,
            entry_price=Decimal(str(trade.entry_price)),
            origin=TradeOrigin(trade.origin),
            managed=trade.managed,
            opened_at=opened_at,
            exit_plan=dict(trade.exit_plan),
        )
        ids.append(snapshot.trade_id)
    return ids


async def _trades_report(
    db: Database, account_id: str, names: dict[int, str]
) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT trade_id, status, strategy, quantity, close_reason, realized_pnl, origin, managed"
        " FROM trades WHERE account = $1 ORDER BY trade_id",
        account_id,
    )
    return [
        {
            "id": names.get(row["trade_id"], str(row["trade_id"])),
            "status": row["status"],
            "strategy": row["strategy"],
            "quantity": row["quantity"],
            "close_reason": row["close_reason"],
            "realized_pnl": row["realized_pnl"],
            "origin": row["origin"],
            "managed": row["managed"],
        }
        for row in rows
    ]


async def _decisions_report(db: Database, names: dict[int, str]) -> list[dict[str, Any]]:
    """Every exit decision (and every guard that held one back), oldest first."""
    rows = await db.fetch(
        "SELECT trade_id, decided_at, kind, rule, rules_fired, exit_action, exit_quantity,"
        " dry_run FROM decisions WHERE kind <> 'SNAPSHOT' ORDER BY decided_at, recorded_at"
    )
    return [
        {
            "trade_id": names.get(row["trade_id"], str(row["trade_id"])),
            "at": row["decided_at"].isoformat(),
            "kind": row["kind"],
            "rule": row["rule"],
            "rules_fired": list(row["rules_fired"]),
            "exit_action": row["exit_action"],
            "exit_quantity": row["exit_quantity"],
            "dry_run": row["dry_run"],
        }
        for row in rows
    ]


async def run_with_engine(
    scenario: Scenario,
    config: Config,
    *,
    dry_run: bool,
    progress: ScenarioProgress | None = None,
    progress_interval: float = 2.0,
) -> dict[str, Any]:
    """Run ``scenario`` with the engine for its duration; return the report (see sim.report)."""
    with tempfile.TemporaryDirectory(prefix="spreadwatch-scenario-") as tmp:
        data_dir = pathlib.Path(tmp) / "pgdata"
        database = msgspec.structs.replace(config.database, data_dir=data_dir)
        config = msgspec.structs.replace(config, database=database)
        async with open_database(
            config.database.url,
            data_dir=config.database.data_dir,
            connect_timeout=config.database.connect_timeout,
        ) as db:
            await apply_migrations(db)
            return await _run(scenario, config, db, dry_run, progress, progress_interval)


async def _run(
    scenario: Scenario,
    config: Config,
    db: Database,
    dry_run: bool,
    progress: ScenarioProgress | None,
    progress_interval: float,
) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        sim: SimHandle = await nursery.start(
            lambda task_status: serve_simulator(scenario, task_status=task_status)
        )
        seeded = await seed_trades(db, scenario, opened_at=sim.clock.now())
        # Seeded trades are reported under the scenario's own ids (T1...), others by database id.
        names = {
            trade_id: trade.id or f"T{index + 1}"
            for index, (trade_id, trade) in enumerate(zip(seeded, scenario.trades, strict=True))
        }
        market_clock = TrioMarketClock(sim.clock.now(), speed=scenario.speed)
        engine_config = engine_config_for(config, sim, dry_run=dry_run)
        # The engine runs in its own nursery so that it stops before the simulator does (an
        # engine that outlives its broker only logs a reconnect).
        async with trio.open_nursery() as engine_nursery:
            engine: EngineHandle = await engine_nursery.start(
                lambda task_status: run_engine(
                    engine_config, db=db, market_clock=market_clock, task_status=task_status
                )
            )
            if progress is not None:
                engine_nursery.start_soon(
                    _report_progress, progress, sim, engine, progress_interval
                )
            await sim.clock.sleep_until_offset(scenario.duration_seconds)
            sim.simulator.tick()
            # Whatever the watchers decided in the last instant must be in the report.
            await _drain_audit(engine)
            decisions = await _decisions_report(db, names)
            report = build_report(
                sim.simulator,
                decisions=sum(1 for d in decisions if d["kind"] != "GUARDED"),
                trades=await _trades_report(db, scenario.account_id, names),
            )
            report["decision_list"] = decisions
            engine_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return report


async def _drain_audit(engine: EngineHandle, *, within: float = 5.0) -> None:
    with trio.move_on_after(within):
        while True:
            stats = engine.audit.statistics()
            if stats.queued == 0 and stats.journaled == 0:
                return
            await trio.sleep(0.05)


async def _report_progress(
    progress: ScenarioProgress, sim: SimHandle, engine: EngineHandle, interval: float
) -> None:
    while True:
        progress(sim, engine)
        await trio.sleep(interval)
