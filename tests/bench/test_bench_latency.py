"""The live benchmarks (tick -> order latency, sustained throughput) at their tiny size: they
run against the real simulator, engine and database, and return the figures they promise with
sane values. No timing assertions: figures are the benchmarks' output, not pass/fail criteria."""

from __future__ import annotations

import json

import pytest

from bench import latency, throughput
from bench.rig import generate_book


@pytest.fixture(scope="module")
def tick_to_order() -> dict:
    return latency.run(size="tiny", seed=1)


@pytest.fixture(scope="module")
def sustained() -> dict:
    return throughput.run(size="tiny", seed=1)


@pytest.mark.system
def test_latency_measures_every_sample_at_every_rate(tick_to_order: dict) -> None:
    size = latency.SIZES["tiny"]
    assert tick_to_order["benchmark"] == "latency"
    assert [row["rate"] for row in tick_to_order["rates"]] == list(size.rates)
    for row in tick_to_order["rates"]:
        assert row["spreads"] == size.spreads
        assert row["all_live_seconds"] > 0
        # Every sample's stop became exactly one measured order, after its marked tick.
        assert row["measured"] == size.samples
        assert row["early"] == row["missing"] == 0
        ms = row["latency_ms"]
        assert 0 < ms["p50"] <= ms["p90"] <= ms["p99"] <= ms["max"]
        assert row["offered_per_second"] > 0.5 * row["rate"]
        assert 0 < row["delivered_per_second"] <= 1.1 * row["offered_per_second"]
        assert row["sim_cpu"] > 0
        assert row["engine_cpu"] > 0
    json.dumps(tick_to_order)


@pytest.mark.system
def test_throughput_steps_check_latency_and_newest_quotes(sustained: dict) -> None:
    size = throughput.SIZES["tiny"]
    assert sustained["benchmark"] == "throughput"
    assert [step["rate"] for step in sustained["steps"]] == list(size.rates)
    for step in sustained["steps"]:
        assert step["measured"] + step["early"] + step["missing"] == size.samples
        assert step["measured"] > 0
        # The final quotes reached every watcher (a few seconds is plenty at this size).
        assert step["newest_quote_seconds"] is not None
        assert step["newest_quotes_ok"]
        assert step["passed"] == (
            step["p99_ok"] and step["newest_quotes_ok"] and step["all_samples_ok"]
        )
    assert sustained["sustained_events_per_second"] in (0, *size.rates)
    assert isinstance(sustained["limited_by"], str)
    json.dumps(sustained)


def test_the_book_keeps_every_leg_to_one_spread_and_samples_apart() -> None:
    book = generate_book(300, 60, seed=3)
    legs = [symbol for spread in book.spreads for symbol in (spread.short, spread.long)]
    assert len(legs) == len(set(legs)) == 600
    samples = [spread for spread in book.spreads if spread.sample]
    assert len(samples) == 60
    # No background quote touches a sample's legs or underlying.
    background = set(book.background_symbols())
    assert not background & {s for spread in samples for s in (spread.short, spread.long,
                                                                spread.underlying)}
    assert book.take_samples(50) != book.take_samples(10)
    with pytest.raises(ValueError, match="samples left"):
        book.take_samples(1)


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert latency.percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert latency.percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}
