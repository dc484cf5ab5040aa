"""``spreadwatch demo``: the quick start's "run it" command.

Runs the engine against the simulator with a bundled scenario (a SPY bull put credit spread
during a sell-off, with a dropped market socket and a stale quote along the way), on a fresh
embedded PostgreSQL, and prints what happens in plain lines: the market as the engine sees it,
the feed, every exit decision with its rule, every closing order the simulator received (its
limit walked toward the natural price, its fills), and each trade's end with its realized P&L.
The engine's own JSON logs are kept to errors here (``--log-level info`` shows them all).

The engine trades the simulator's paper account for real (orders are sent); with ``--dry-run``
it decides and records, and sends nothing.
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import sys
from decimal import Decimal
from typing import Any

import msgspec

from engine.clock import NEW_YORK
from engine.config import Config

__all__ = ["DEMO_SCENARIO", "DEMO_SPEED", "register"]

DEMO_SCENARIO = "credit_spread_stop.toml"
DEMO_SPEED = 40.0  # market seconds per real second: the scenario's 30 minutes in 45 s


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the engine against the simulator with a bundled scenario",
        description="Start the simulator with a bundled scenario and the engine against it on "
        "a fresh embedded database; show the spread being watched, the exit decided, the "
        "closing order placed, re-priced and filled, and the trade closed with its P&L.",
    )
    demo.add_argument("--scenario", default=None, metavar="FILE", help="another scenario file")
    demo.add_argument("--speed", type=float, default=DEMO_SPEED, help="market seconds per second")
    # The engine's JSON logs stay quiet unless asked for: the demo prints its own lines.
    demo.set_defaults(handler=_demo, config_defaults={"log.level": "error"})


async def _demo(args: argparse.Namespace, config: Config) -> int:
    from engine.scenario_run import run_with_engine
    from sim.scenario import load_scenario

    if args.scenario is not None:
        scenario = load_scenario(args.scenario)
    else:
        bundled = importlib.resources.files("sim") / "examples" / DEMO_SCENARIO
        with importlib.resources.as_file(bundled) as path:
            scenario = load_scenario(pathlib.Path(path))
    scenario = msgspec.structs.replace(scenario, speed=args.speed)
    dry_run = config.engine.dry_run
    mode = "engine in dry run (no order sent)" if dry_run else "engine trading the paper account"
    _say(f"spreadwatch demo: scenario {scenario.name!r}: {scenario.description}")
    _say(
        f"  simulator on loopback, {mode}, fresh embedded PostgreSQL; "
        f"{scenario.duration} of market time at {args.speed:g}x"
    )
    report = await run_with_engine(scenario, config, dry_run=dry_run, progress=_progress)
    _summary(report, dry_run=dry_run)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _progress(sim: Any, engine: Any) -> None:
    """One line: market time, the underlying and each watched leg as the engine sees them."""
    fanout = engine.fanout
    stats = fanout.statistics()
    parts = [f"{sim.clock.now().astimezone(NEW_YORK):%H:%M:%S} ET"]
    for symbol in sorted(fanout.symbols, key=len):
        quote = fanout.latest_quote(symbol)
        if quote is not None and quote.bid is not None and quote.ask is not None:
            parts.append(f"{symbol} {quote.bid}x{quote.ask}")
    parts.append(f"feed {stats.feed_state} ({sum(stats.events_by_kind.values())} events)")
    audit = engine.audit.statistics()
    parts.append(f"audit {audit.written} written")
    _say("  " + " | ".join(parts))


def _summary(report: dict[str, Any], *, dry_run: bool) -> None:
    decisions = report.get("decision_list", [])
    _say(f"exit decisions: {report['decisions']}")
    for d in decisions:
        _say(
            f"  trade {d['trade_id']}: {d['kind']} by {d['rule']} at {d['at']}"
            f" (rules fired: {', '.join(d['rules_fired'])}; quantity {d['exit_quantity']};"
            f" {'dry run' if d['dry_run'] else 'sent to the router'})"
        )
    orders = report["orders"]
    _say(f"orders sent: {len(orders)}" + (" (dry run: none expected)" if dry_run else ""))
    for order in orders:
        legs = ", ".join(
            f"{leg['side']} {leg['quantity']} {leg['option_symbol']}" for leg in order["legs"]
        )
        walk = [str(m["price"]) for m in order["modifications"]]
        repriced = f"re-priced {' -> '.join(walk)}" if walk else f"limit {order['price']}"
        fills = "; ".join(f"{f['quantity']} at {f['price']}" for f in order["fills"]) or "none"
        _say(
            f"  order {order['id']} {order['class']} {order['type']} ({legs}), tag {order['tag']}:"
            f" {repriced}; filled {fills}; {order['status']}"
        )
    for trade in report["trades"]:
        pnl = trade["realized_pnl"]
        reason = f" by {trade['close_reason']}" if trade["close_reason"] else ""
        _say(
            f"trade {trade['id']}: {trade['strategy']} x{trade['quantity']} {trade['status']}"
            + reason
            + (f", realized P&L {Decimal(pnl):.2f} dollars" if pnl is not None else "")
        )
    sys.stdout.flush()
