"""System tests: the simulator and the engine together in dry run (issue 4, "Must show").

Each scenario seeds one bull put credit spread (670/665, December, entry credit 1.30, trailing
off) and drives its short put either through the stop or through the profit target. The engine
runs against the simulator over real HTTP and WebSockets on a fresh embedded database, on the
real clock (never the autojump clock: real sockets and PostgreSQL). The price paths are
decisive (the spread ends far past its threshold) so that the machine's load does not matter.

Thresholds, from the scenario files' comments (mark = mid, default plan for credit spreads):
- stop: a loss of 100 % of the 1.30 credit, i.e. a close price of 2.60, first reached near SPY
  665.7; SPY is still above 667 (the spread at most ~2.47) for the first 120 market seconds.
- target: 50 % of max profit, i.e. a close price of 0.65, first reached near SPY 690; SPY is
  still at or below 684 (the spread at least ~1.00) for the first 90 market seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import sys
from typing import Any

import pytest
import trio

from engine.config import load_config
from engine.scenario_run import run_with_engine
from sim.scenario import load_scenario

__all__: list[str] = []

pytestmark = pytest.mark.system

SCENARIOS = pathlib.Path(__file__).parent / "scenarios"
REPO = pathlib.Path(__file__).resolve().parents[2]
STOP = SCENARIOS / "put_spread_stop.toml"
TARGET = SCENARIOS / "put_spread_target.toml"

# A scenario plays 12 real seconds; the rest is the embedded database and the engine starting
# and stopping. Generous: the machine is shared.
RUN_BUDGET = 90.0

POSITIONS = [
    {"symbol": "SPY251219P00665000", "quantity": 2},
    {"symbol": "SPY251219P00670000", "quantity": -2},
]
EXIT_KINDS = {"EXIT", "PARTIAL_EXIT"}
REPORT_KEYS = {"scenario", "orders", "positions_end", "trades", "decisions"}
TRADE_KEYS = {
    "id",
    "status",
    "strategy",
    "quantity",
    "close_reason",
    "realized_pnl",
    "origin",
    "managed",
}


def _check_dry_run_report(
    report: dict[str, Any], *, rule: str, not_before: float, start: dt.datetime
) -> None:
    """The report of a dry run in which ``rule`` decided the seeded trade's exit, never earlier
    than ``not_before`` market seconds after ``start``."""
    # Dry run sends nothing: the simulator received no order and the account is as it started.
    assert report["orders"] == []
    assert sorted(report["positions_end"], key=lambda p: p["symbol"]) == POSITIONS
    [trade] = report["trades"]
    assert trade["status"] == "OPEN"
    assert trade["close_reason"] is None and trade["realized_pnl"] is None
    assert (trade["strategy"], trade["quantity"]) == ("bull_put_credit", 2)

    decisions = report["decision_list"]
    exits = [d for d in decisions if d["kind"] in EXIT_KINDS]
    assert report["decisions"] == len(exits) >= 1, decisions
    assert all(d["trade_id"] == trade["id"] for d in decisions), decisions
    assert all(d["dry_run"] is True for d in decisions), decisions
    first = exits[0]
    assert first["kind"] == "EXIT"
    assert first["rule"] == rule
    assert first["rules_fired"][0] == rule
    assert (first["exit_action"], first["exit_quantity"]) == ("FULL", 2)
    # No other rule ever decided this trade (trailing is off; nothing else is near).
    assert {d["rule"] for d in exits} == {rule}, exits
    decided_at = dt.datetime.fromisoformat(first["at"])
    assert decided_at >= start + dt.timedelta(seconds=not_before), (first["at"], start)


@pytest.mark.parametrize(
    ("path", "rule", "not_before"),
    [(STOP, "stop_loss", 120.0), (TARGET, "profit_target", 90.0)],
    ids=["stop", "target"],
)
async def test_dry_run_scenario_decides_with_the_right_rule(
    path: pathlib.Path, rule: str, not_before: float
) -> None:
    scenario = load_scenario(path)
    config = load_config(environ={})
    with trio.fail_after(RUN_BUDGET):
        report = await run_with_engine(scenario, config, dry_run=True)
    assert report["scenario"] == scenario.name
    _check_dry_run_report(report, rule=rule, not_before=not_before, start=scenario.start_time)


async def test_scenario_run_command_writes_the_contract_report(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "report.json"
    # Only the defaults: no config file or database named by the caller's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPREADWATCH_")}
    command = [sys.executable, "-m", "engine.cli", "--dry-run", "scenario", "run", str(STOP)]
    with trio.fail_after(RUN_BUDGET):
        done = await trio.run_process(
            [*command, "--report", str(out)],
            cwd=REPO,
            env=env,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]

    report = json.loads(out.read_text())
    assert report.keys() >= REPORT_KEYS
    assert report["scenario"] == "put-spread-stop"
    assert report["trades"]
    for trade in report["trades"]:
        assert trade.keys() >= TRADE_KEYS
    assert report["decisions"] >= 1
    _check_dry_run_report(
        report, rule="stop_loss", not_before=120.0, start=load_scenario(STOP).start_time
    )
