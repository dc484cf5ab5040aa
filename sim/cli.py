"""``spreadwatch sim`` and ``spreadwatch scenario run``.

- ``spreadwatch sim --scenario FILE [--host 127.0.0.1] [--port N] [--speed X]`` serves the
  simulator until Ctrl-C; with ``--port 0`` a free port is picked. Once listening it prints one
  line: ``sim: base_url=http://127.0.0.1:PORT token=TOKEN account_id=ID``.
- ``spreadwatch scenario run FILE --report OUT.json [--speed X]`` runs the scenario for its
  duration (the simulator alone until the engine exists) and writes the report.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register", "register_standalone_scenario"]


def register(subparsers: Any) -> None:
    """``spreadwatch sim``. (``spreadwatch scenario run`` is the engine's: engine.cli_scenario
    runs the simulator *with* the engine; ``python -m sim scenario run`` runs it alone.)"""
    sim = subparsers.add_parser("sim", help="serve the Tradier-compatible simulator")
    sim.add_argument("--scenario", required=True, metavar="FILE", help="scenario TOML file")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    sim.add_argument("--speed", type=float, default=None,
                     help="override the scenario's speed (market seconds per real second)")
    sim.set_defaults(handler=_serve)


def register_standalone_scenario(subparsers: Any) -> None:
    """``python -m sim scenario run``: the simulator alone for the scenario's duration."""
    scenario = subparsers.add_parser("scenario", help="run scenarios (simulator alone)")
    actions = scenario.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run a scenario for its duration and write a report")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--report", required=True, metavar="OUT.json")
    run.add_argument("--speed", type=float, default=None,
                     help="override the scenario's speed (market seconds per real second)")
    run.set_defaults(handler=_run)


def _load(path: str, speed: float | None) -> Any:
    import msgspec

    from engine.errors import ScenarioError
    from sim.scenario import load_scenario

    scenario = load_scenario(path)
    if speed is not None:
        if speed <= 0:
            raise ScenarioError(f"--speed: must be > 0, got {speed}")
        scenario = msgspec.structs.replace(scenario, speed=speed)
    return scenario


async def _serve(args: argparse.Namespace, config: object = None) -> int:
    import trio

    from sim.server import serve_simulator

    scenario = _load(args.scenario, args.speed)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            lambda task_status: serve_simulator(scenario, host=args.host, port=args.port,
                                                task_status=task_status))
        print(f"sim: base_url={handle.base_url} token={handle.token} "
              f"account_id={handle.account_id}", flush=True)
    return 0


async def _run(args: argparse.Namespace, config: object = None) -> int:
    from sim.runner import run_scenario, write_report

    scenario = _load(args.file, args.speed)
    report = await run_scenario(scenario)
    write_report(report, args.report)
    print(f"scenario {scenario.name}: {len(report['orders'])} orders, "
          f"{len(report['positions_end'])} positions at the end; report in {args.report}",
          file=sys.stderr, flush=True)
    return 0
