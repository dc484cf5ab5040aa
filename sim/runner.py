"""The scenario runner: the simulator (and, once it exists, the engine) for a scenario's duration.

Until the engine exists the runner starts the simulator alone, lets the scenario play out (its
scheduled faults included), and writes the report (see :mod:`sim.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from sim.asgi import ENCODER
from sim.report import build_report
from sim.scenario import Scenario
from sim.server import SimHandle, serve_simulator

__all__ = ["run_scenario", "write_report"]


async def run_scenario(
    scenario: Scenario,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[SimHandle] = trio.TASK_STATUS_IGNORED,
) -> dict[str, Any]:
    """Serve ``scenario`` until its duration has passed in market time; return the report."""
    async with trio.open_nursery() as nursery:
        handle: SimHandle = await nursery.start(
            lambda task_status: serve_simulator(scenario, host=host, port=port,
                                                task_status=task_status))
        task_status.started(handle)
        await handle.clock.sleep_until_offset(scenario.duration_seconds)
        handle.simulator.tick()  # the market and the broker as of the end, not the last tick
        report = build_report(handle.simulator)
        nursery.cancel_scope.cancel()
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ENCODER.encode(report) + b"\n")
