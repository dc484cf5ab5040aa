"""The scenario runner, its report, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from sim.runner import run_scenario, write_report
from sim.scenario import load_scenario
from tests.sim.helpers import scenario_text

ROOT = Path(__file__).parents[2]
ORDER_KEYS = {"id", "received_at", "class", "type", "price", "duration", "tag", "legs",
              "status", "modifications", "fills"}
TRADE_KEYS = {"id", "status", "strategy", "quantity", "close_reason", "realized_pnl", "origin",
              "managed"}


async def test_runner_plays_the_scenario_and_reports(autojump_clock: object,
                                                     tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "sim" / "examples" / "iron_condor_faults.toml")
    with trio.fail_after(scenario.duration_seconds / scenario.speed + 60):
        report = await run_scenario(scenario)
    assert trio.current_time() >= scenario.duration_seconds / scenario.speed
    write_report(report, tmp_path / "out.json")
    report = json.loads((tmp_path / "out.json").read_text())
    assert set(report) == {"scenario", "orders", "positions_end", "trades", "decisions"}
    assert report["scenario"] == "iron-condor-faults"
    assert report["decisions"] == 0
    for order in report["orders"]:
        assert set(order) == ORDER_KEYS
        for leg in order["legs"]:
            assert set(leg) == {"option_symbol", "side", "quantity"}
    # The resting take-profit was cancelled by the broker at 35m (unless it filled before).
    resting = next(o for o in report["orders"] if o["tag"] == "condor-tp-1")
    assert resting["status"] in {"canceled", "filled"}
    assert resting["received_at"].startswith("2025-12-09T13:30:00")
    # The manual close at 40m took the call side off.
    manual = [o for o in report["orders"] if o["tag"] is None]
    assert manual and manual[-1]["status"] == "filled"
    assert all(fill["at"].endswith("-05:00") for fill in manual[-1]["fills"])
    held = {p["symbol"] for p in report["positions_end"]}
    assert "QQQ251219C00640000" not in held and "QQQ251219C00645000" not in held
    assert [set(t) for t in report["trades"]] == [TRADE_KEYS]
    assert report["trades"][0]["origin"] == "IMPORTED"


def test_command_line_runs_a_scenario_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "quick.toml"
    good.write_text(scenario_text().replace('duration = "30m"', 'duration = "3s"')
                    .replace("speed = 1.0", "speed = 10.0"))
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "sim", "scenario", "run", str(good),
                           "--report", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["scenario"] == "test"  # the name in the file
    bad = tmp_path / "bad.toml"
    bad.write_text(scenario_text().replace("volatility = 0.2", "volatility = -0.2"))
    refused = subprocess.run([sys.executable, "-m", "sim", "sim", "--scenario", str(bad)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "underlyings[0].volatility: must be > 0, got -0.2" in refused.stderr
