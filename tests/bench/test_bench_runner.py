"""The benchmark runner and the scale and audit-load benchmarks at their tiny size: they run,
write what they promise, and their figures make sense. No timing assertions: figures are the
benchmarks' output, not pass/fail criteria."""

from __future__ import annotations

import json
import pathlib

import pytest

from bench import audit_load, registry, runner, scale
from bench.registry import Benchmark, Figure

# ---- the registry ---------------------------------------------------------------------------


def test_paths_reach_into_mappings_and_lists() -> None:
    result = {
        "headline": {"ratio": 4.5},
        "rates": [{"rate": 1000, "p99": 1.5}, {"rate": 10000, "p99": 2.5}],
        "scaling": [{"cost": 1}, {"cost": 3}],
    }
    assert registry.pick(result, "headline.ratio") == 4.5
    assert registry.pick(result, "rates.rate=10000.p99") == 2.5
    assert registry.pick(result, "scaling.-1.cost") == 3
    assert registry.pick(result, "rates.rate=5000.p99") is None
    assert registry.pick(result, "scaling.7.cost") is None
    assert registry.pick(result, "headline.ratio.deeper") is None


def test_a_figure_is_judged_against_its_target_in_its_direction() -> None:
    ceiling = Figure("p99", "p99", "ms", 2.0, "max")
    floor = Figure("rate", "rate", "events/s", 50_000, "min")
    assert ceiling.met(1.9) is True and ceiling.met(2.1) is False
    assert floor.met(50_000) is True and floor.met(49_999) is False
    assert Figure("info", "x").met(3.0) is None
    assert ceiling.met(None) is None
    assert floor.value({"rate": True}) is None  # a flag is not a figure


def test_every_benchmark_is_named_once_and_found_by_name() -> None:
    names = [b.name for b in registry.BENCHMARKS]
    assert len(names) == len(set(names))
    assert {"latency", "throughput", "core_cost", "scale", "audit_load"} <= set(names)
    assert registry.by_name("scale").module == "bench.scale"
    with pytest.raises(KeyError, match="known: latency"):
        registry.by_name("nope")


# ---- the runner -----------------------------------------------------------------------------


def test_runner_at_tiny_size_writes_latest_json_with_the_machine_and_figures(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = runner.main(
        ["--size", "tiny", "--only", "reactive_vs_polled", "--results-dir", str(tmp_path)]
    )
    assert status == 0
    document = json.loads((tmp_path / "latest.json").read_text())
    machine = document["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu_model"]
    assert machine["python"].count(".") == 2
    assert machine["date"]
    for package in ("trio", "msgspec", "asyncpg", "httpx"):
        assert machine["packages"][package]
    assert machine["postgresql"] and machine["postgresql"][0].isdigit()
    assert document["size"] == "tiny"
    assert list(document["benchmarks"]) == ["reactive_vs_polled"]
    entry = document["benchmarks"]["reactive_vs_polled"]
    assert entry["status"] == "ok"
    declared = registry.by_name("reactive_vs_polled").figures
    assert [f["figure"] for f in entry["figures"]] == [f.label for f in declared]
    assert all(isinstance(f["value"], float) for f in entry["figures"])
    assert entry["result"]["benchmark"] == "reactive_vs_polled"
    assert json.loads((tmp_path / "reactive_vs_polled.json").read_text()) == entry["result"]
    table = capsys.readouterr().out
    assert "figure" in table and "measured" in table and "met?" in table
    assert "reactive_vs_polled: poll every 300 s: decision delay, median" in table


def test_a_benchmark_not_there_yet_is_skipped_with_a_note(tmp_path: pathlib.Path) -> None:
    missing = Benchmark("later", "bench.not_written_yet", "comes later", (Figure("x", "x"),))
    document = runner.run_all([missing], size="tiny", seed=1, results_dir=tmp_path)
    entry = document["benchmarks"]["later"]
    assert entry["status"] == "skipped"
    assert "bench.not_written_yet" in entry["note"]
    assert "later: skipped" in runner.table(document)
    assert json.loads((tmp_path / "latest.json").read_text())["benchmarks"]["later"] == entry


def test_a_failure_is_reported_in_one_line_from_inside_exception_groups() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("bad\nsecond line")])])
    assert runner.one_line(nested) == "ValueError: bad"


# ---- scale and audit load -------------------------------------------------------------------


@pytest.mark.system
def test_scale_measures_every_point_at_tiny_size() -> None:
    result = scale.run(size="tiny", seed=1)
    points = result["points"]
    assert [p["spreads"] for p in points] == list(scale.SIZES["tiny"].points)
    for point in points:
        # every spread's two legs and the underlyings are subscribed
        assert point["symbols"] > 2 * point["spreads"]
        assert point["all_live_seconds"] > 0
        assert point["rss_live_bytes"] > point["rss_before_bytes"] > 0
        assert point["rss_bytes_per_spread_upper"] >= point["rss_bytes_per_spread"]
    assert result["headline"] == points[-1]
    assert result["failed_points"] == {}
    json.dumps(result)


@pytest.mark.system
@pytest.mark.storage
def test_audit_load_commits_every_record_and_measures_the_engine_beside_it() -> None:
    result = audit_load.run(size="tiny", seed=1)
    size = audit_load.SIZES["tiny"]
    assert result["rows_stored"] == size.records * size.rounds
    (only,) = result["rounds"]
    assert only["records"] == size.records
    assert only["errors"] == only["duplicates"] == only["spills"] == 0
    assert result["records_per_second_median"] > 0
    assert result["server_cpu_us_per_record"] > 0  # the embedded server is on this machine
    assert result["record_json_bytes_mean"] > 1000  # the engine's records, replay inputs and all
    load = result["under_load"]
    assert load["p99_ms_without"] > 0 and load["p99_ms_with"] > 0
    assert isinstance(load["p99_change_percent"], float)
    for leg in ("without", "with"):
        (figures,) = load["legs"][leg]
        assert figures["measured"] == size.load.samples
    # the load went through the engine's own writer, beyond what the engine records itself
    written = {leg: load["legs"][leg][0]["audit_records_written"] for leg in ("without", "with")}
    assert written["with"] > written["without"] + load["audit_rate"]
    json.dumps(result)
