"""The harness for live system tests: the simulator and the whole engine (orders sent) together.

``live_engine(path)`` starts the simulator for a scenario file, a fresh embedded database (in a
directory outside pytest's tmp tree: the embedded server may run as another user), seeds the
scenario's trades, and runs the engine against the simulator over real HTTP and WebSockets on
the real clock. The body gets a :class:`Live`: the simulator's parts (its broker's record of
every order it received is what the tests assert on), the engine's handle, the database and the
seeded trade ids. Waiting is on conditions (``wait_for``), never on sleeps of a guessed length.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from engine.app import EngineHandle, run_engine
from engine.clock import TrioMarketClock
from engine.config import Config, load_config
from engine.scenario_run import engine_config_for, seed_trades
from sim.broker import Order
from sim.scenario import Scenario, load_scenario
from sim.server import SimHandle, serve_simulator
from storage import Database, apply_migrations, open_database

__all__ = ["Live", "live_engine", "sim_orders", "wait_for"]

SCENARIOS = pathlib.Path(__file__).parent / "scenarios"


@dataclass
class Live:
    sim: SimHandle
    engine: EngineHandle
    db: Database
    trade_ids: list[int]
    config: Config

    async def trade(self, trade_id: int) -> Any:
        return await self.db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)

    async def orders(self, trade_id: int | None = None) -> list[Any]:
        if trade_id is None:
            return await self.db.fetch("SELECT * FROM orders ORDER BY order_id")
        return await self.db.fetch(
            "SELECT * FROM orders WHERE trade_id = $1 ORDER BY order_id", trade_id
        )


def sim_orders(sim: SimHandle, *, origin: str = "api") -> list[Order]:
    """Every order the simulator received from the engine (placed or refused), oldest first."""
    orders = [*sim.broker.orders.values(), *sim.broker.rejected]
    return sorted((o for o in orders if o.origin == origin), key=lambda o: o.create_date)


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float,
    what: str,
    every: float = 0.05,
) -> None:
    """Wait until ``condition()`` holds; fail the test naming ``what`` after ``timeout`` s."""
    with trio.move_on_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def load(name: str, **changes: Any) -> Scenario:
    scenario = load_scenario(SCENARIOS / name)
    return msgspec.structs.replace(scenario, **changes) if changes else scenario


@asynccontextmanager
async def live_engine(
    scenario: Scenario,
    *,
    data_dir: pathlib.Path | None = None,
    broker_kind: str = "sim",
    broker: dict[str, Any] | None = None,
    **engine: Any,
) -> AsyncIterator[Live]:
    """Run ``scenario`` with the engine sending orders (see the module docstring).
    ``engine`` overrides ``[engine]`` config keys (e.g. ``exit_retry_seconds=5``);
    ``broker_kind="paper"`` trades a paper book fed by the simulator's quotes instead;
    ``broker`` overrides other ``[broker]`` keys (e.g. ``{"read_rate_limit": 60}``)."""
    with tempfile.TemporaryDirectory(prefix="spreadwatch-live-") as tmp:
        config = load_config(environ={})
        database = msgspec.structs.replace(
            config.database, data_dir=data_dir or pathlib.Path(tmp) / "pgdata"
        )
        config = msgspec.structs.replace(
            config,
            database=database,
            engine=msgspec.structs.replace(config.engine, **engine),
        )
        async with open_database(None, data_dir=database.data_dir) as db:
            await apply_migrations(db)
            async with trio.open_nursery() as nursery:
                sim: SimHandle = await nursery.start(
                    lambda task_status: serve_simulator(scenario, task_status=task_status)
                )
                trade_ids = await seed_trades(db, scenario, opened_at=sim.clock.now())
                clock = TrioMarketClock(sim.clock.now(), speed=scenario.speed)
                engine_config = engine_config_for(config, sim, dry_run=False)
                engine_config = msgspec.structs.replace(
                    engine_config,
                    broker=msgspec.structs.replace(
                        engine_config.broker, kind=broker_kind, **(broker or {})
                    ),
                )
                async with trio.open_nursery() as engine_nursery:
                    handle: EngineHandle = await engine_nursery.start(
                        lambda task_status: run_engine(
                            engine_config, db=db, market_clock=clock, task_status=task_status
                        )
                    )
                    yield Live(sim, handle, db, trade_ids, engine_config)
                    engine_nursery.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
