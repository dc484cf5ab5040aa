"""Scenario files: the examples load, bad files are refused naming the field and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ScenarioError
from sim.scenario import load_scenario, parse_duration, parse_scenario
from tests.sim.helpers import scenario_text

EXAMPLES = sorted((Path(__file__).parents[2] / "sim" / "examples").glob("*.toml"))


def test_there_are_example_scenarios_and_they_load() -> None:
    assert len(EXAMPLES) >= 2
    for path in EXAMPLES:
        scenario = load_scenario(path)
        assert scenario.name
        assert scenario.duration_seconds > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("volatility = 0.2", "volatility = -0.2"),
         "test.toml: underlyings[0].volatility: must be > 0, got -0.2"),
        (("speed = 1.0", "speed = 0"), "test.toml: speed: must be > 0, got 0"),
        (("seed = 1", "seed = 1\nsped = 2"), "test.toml: sped: unknown field"),
        (("symbol = \"SPY251219P00645000\"", "symbol = \"SPY251219X00645000\""),
         "test.toml: positions[1].symbol: not an OCC option symbol"),
        (("symbol = \"SPY251219P00645000\"", "symbol = \"QQQ251219P00645000\""),
         "test.toml: positions[1].symbol: no underlying has root"),
        (("quantity = 2", "quantity = 0"), "test.toml: positions[1].quantity: must not be 0"),
        (("duration = \"30m\"", "duration = \"soon\""), "test.toml: duration: must be a duration"),
        (("kind = \"keyframes\"", "kind = \"zigzag\""),
         "test.toml: underlyings[0].path.kind: unknown kind 'zigzag'"),
        (("token = \"t0ken\"", "token = \"\""), "test.toml: token: must be non-empty"),
    ],
)
def test_bad_fields_are_named(change: tuple[str, str], message: str) -> None:
    text = scenario_text()
    assert change[0] in text
    with pytest.raises(ScenarioError) as refused:
        parse_scenario(text.replace(change[0], change[1], 1), source="test.toml")
    assert str(refused.value).startswith(message), str(refused.value)


def test_fault_fields_are_checked_and_times_of_day_work() -> None:
    bad = scenario_text(extra='[[faults]]\nat = "25:00"\nkind = "null_positions"')
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.at"):
        parse_scenario(bad, source="test.toml")
    missing = scenario_text(extra='[[faults]]\nkind = "stale_quotes"')
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.symbol: required"):
        parse_scenario(missing, source="test.toml")
    good = parse_scenario(scenario_text(extra='[[faults]]\nat = 10:15:00\nkind = "latency"'))
    assert good.offset_of(good.faults[0].at) == 30 * 60


def test_missing_file_and_bad_replay_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")
    text = scenario_text().replace(
        'path = { kind = "keyframes", points = [{ at = "0s", price = 680.0 }] }',
        'path = { kind = "replay", file = "ticks.jsonl" }')
    (tmp_path / "s.toml").write_text(text)
    (tmp_path / "ticks.jsonl").write_text('{"at": 0, "price": 680}\n{"at": 5, "price": -1}\n')
    with pytest.raises(ScenarioError, match=r"underlyings\[0\]\.path\.file: ticks.jsonl line 2"):
        load_scenario(tmp_path / "s.toml")


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(12) == 12.0
    with pytest.raises(ValueError):
        parse_duration("5 minutes")
