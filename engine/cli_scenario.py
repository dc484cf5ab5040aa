"""``spreadwatch scenario run FILE --report OUT.json``: the simulator and the engine together.

Starts the simulator for the scenario, the engine against it on a fresh embedded database,
seeds the scenario's trades, runs until the scenario's duration has passed in market time and
writes the report (its shape is a contract: see ``sim/README.md``). The engine sends its exits
to the simulator as orders; with ``--dry-run`` it decides and records them and sends nothing.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from engine.config import Config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scenario = subparsers.add_parser("scenario", help="run scenarios against the engine")
    actions = scenario.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run a scenario with the engine for its duration and write a report",
        description="Start the simulator and the engine on a fresh embedded database, seed the "
        "scenario's trades, run for the scenario's duration, write the report.",
    )
    run.add_argument("file", metavar="FILE", help="scenario TOML file")
    run.add_argument("--report", required=True, metavar="OUT.json", help="where to write it")
    run.add_argument(
        "--speed",
        type=float,
        default=None,
        help="override the scenario's speed (market seconds per real second)",
    )
    run.set_defaults(handler=_run)


async def _run(args: argparse.Namespace, config: Config) -> int:
    from engine.scenario_run import run_with_engine
    from sim.runner import write_report
    from sim.scenario import load_scenario

    scenario = load_scenario(args.file)
    if args.speed is not None:
        scenario = msgspec.structs.replace(scenario, speed=args.speed)
    report = await run_with_engine(scenario, config, dry_run=config.engine.dry_run)
    write_report(report, args.report)
    print(
        f"scenario {scenario.name}: {len(report['orders'])} orders, "
        f"{report['decisions']} exit decisions; report in {args.report}",
        file=sys.stderr,
        flush=True,
    )
    return 0
