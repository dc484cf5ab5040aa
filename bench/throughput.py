"""Sustained quote throughput (issue 6, item 2): the highest background quote rate at which
tick -> order p99 stays within 10 ms and the newest quote of every symbol still reaches its
watchers.

Not a test: a measurement, live over loopback with :mod:`bench.rig` (simulator in its own
process; engine in this one, real database, WebSocket and HTTP). One rig watches 1,000 spreads;
the background rate steps up, and at each step :func:`bench.latency.measure_tick_to_order` stops
a batch of fresh sample spreads (the same marked-tick method as ``bench.latency``) and ends the
load with one final quote per background symbol, a bid size unique to the step. The step keeps
the newest quotes when, within a few seconds of that final burst, the engine's fan-out holds
exactly those final quotes for every symbol and every background watcher's mailbox is drained
(so each watcher has taken them): the check reads the engine's real ``QuoteFanout``.

A step *passes* when p99 <= 10 ms, no sample is missing, and the newest quotes arrive. Each step
also says who was busy: the simulator's and this process's CPU (1.0 = one core), how many
quotes the simulator offered and how many the engine received (the simulator keeps only the
newest quote per symbol for a socket that is behind, so "received < offered" means the socket,
not a loss). When the simulator's CPU is near one core or it could not offer the asked rate, the
simulator is the limit, and the result says so (``bench.sim_stream`` measures the simulator
alone).

    .venv/bin/python -m bench.throughput [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/throughput.json`` (engine log:
``bench/results/throughput.log``).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from bench import standalone
from bench.latency import measure_tick_to_order
from bench.rig import RATE_LIMIT, open_rig, warm_database
from bench.standalone import milliseconds

__all__ = ["SIZES", "main", "run"]


@dataclass(frozen=True)
class _Size:
    spreads: int
    rates: tuple[int, ...]
    samples: int  # per step
    spacing: float


SIZES: Final = {
    "full": _Size(
        spreads=1000,
        rates=(5_000, 10_000, 20_000, 40_000, 50_000, 60_000, 80_000),
        samples=20,
        spacing=0.5,
    ),
    "tiny": _Size(spreads=40, rates=(2_000, 5_000), samples=4, spacing=0.3),
}
P99_LIMIT_MS: Final = 10.0
TARGET_EVENTS_PER_SECOND: Final = 50_000
SIM_BUSY: Final = 0.9  # of one core: the simulator is the limit
SIM_STREAM_RESULTS: Final = Path(__file__).parent / "results" / "sim_stream.json"


def _verdict(step: dict[str, Any]) -> dict[str, Any]:
    p99 = step["latency_ms"]["p99"]
    sim_limited = step["sim_cpu"] >= SIM_BUSY or step["offered_per_second"] < 0.95 * step["rate"]
    return {
        "p99_ok": p99 is not None and p99 <= P99_LIMIT_MS,
        "newest_quotes_ok": step["newest_quote_seconds"] is not None,
        "all_samples_ok": step["missing"] == 0 and step["measured"] > 0,
        "sim_limited": sim_limited,
    }


async def _run(size: _Size, seed: int) -> tuple[float, list[dict[str, Any]]]:
    steps = []
    with tempfile.TemporaryDirectory(prefix="spreadwatch-throughput-") as tmp:
        run_dir = pathlib.Path(tmp)
        async with warm_database(run_dir) as db:
            async with open_rig(
                db,
                spreads=size.spreads,
                samples=size.samples * len(size.rates),
                seed=seed,
                run_dir=run_dir,
            ) as rig:
                with trio.fail_after(120):
                    live = await rig.wait_all_live()
                for index, rate in enumerate(size.rates):
                    step = await measure_tick_to_order(
                        rig,
                        rate=rate,
                        samples=size.samples,
                        spacing=size.spacing,
                        final_size=9000 + index,
                    )
                    step.update(_verdict(step))
                    step["passed"] = step["p99_ok"] and step["newest_quotes_ok"] and step[
                        "all_samples_ok"]
                    steps.append(step)
    return live, steps


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Step the background rate up through ``size``'s rates (JSON-able)."""
    chosen = SIZES[size]
    started = time.perf_counter()
    live, steps = trio.run(_run, chosen, seed)
    passed = [s["rate"] for s in steps if s["passed"]]
    # Sustained: the highest rate reached with every rate below it passing too.
    sustained = 0
    for step in steps:
        if not step["passed"]:
            break
        sustained = step["rate"]
    first_failure = next((s for s in steps if not s["passed"]), None)
    return {
        "benchmark": "throughput",
        "size": size,
        "seed": seed,
        "spreads": chosen.spreads,
        "all_live_seconds": round(live, 2),
        "p99_limit_ms": P99_LIMIT_MS,
        "target_events_per_second": TARGET_EVENTS_PER_SECOND,
        "sustained_events_per_second": sustained,
        "passed_rates": passed,
        "limited_by": _limit(first_failure),
        "sim_alone_events_per_second": _sim_alone(),
        "engine_config_changes": {
            "broker.trading_rate_limit": RATE_LIMIT,
            "broker.read_rate_limit": RATE_LIMIT,
        },
        "steps": steps,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _limit(failure: dict[str, Any] | None) -> str:
    if failure is None:
        return "no step failed: the highest rate tried"
    if failure["sim_limited"]:
        return f"the simulator at {failure['rate']:,}/s (it could not offer the rate)"
    reasons = [
        text
        for ok, text in (
            (failure["p99_ok"], f"p99 above {P99_LIMIT_MS:g} ms"),
            (failure["newest_quotes_ok"], "newest quotes late"),
            (failure["all_samples_ok"], "samples missing"),
        )
        if not ok
    ]
    return f"the engine at {failure['rate']:,}/s: " + ", ".join(reasons)


def _sim_alone() -> int | None:
    """The simulator's own stream rate from ``bench.sim_stream``'s last result, if any."""
    try:
        figure = json.loads(SIM_STREAM_RESULTS.read_text())["events_per_second"]
    except (OSError, ValueError, KeyError):
        return None
    return int(figure)


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"{'rate/s':>8} {'offered/s':>9} {'received/s':>10} {'n':>3} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'newest s':>8} {'sim cpu':>7} {'eng cpu':>7} {'pass':>4}"
    ]
    for step in result["steps"]:
        ms = step["latency_ms"]
        newest = step["newest_quote_seconds"]
        lines.append(
            f"{step['rate']:>8,} {step['offered_per_second']:>9,} "
            f"{step['delivered_per_second']:>10,} {step['measured']:>3} "
            f"{milliseconds(ms['p50']):>7} {milliseconds(ms['p99']):>7} "
            f"{'late' if newest is None else f'{newest:.3f}':>8} "
            f"{step['sim_cpu']:>7} {step['engine_cpu']:>7} {'yes' if step['passed'] else 'no':>4}"
        )
    return "\n".join(lines)


def _report(result: dict[str, Any]) -> list[str]:
    return [
        f"throughput: {result['spreads']} spreads, {result['seconds']} s; sustained "
        f"{result['sustained_events_per_second']:,} events/s "
        f"(target {TARGET_EVENTS_PER_SECOND:,}); limited by {result['limited_by']}",
        _table(result),
    ]


def main() -> None:
    standalone.main("throughput", __doc__, run, _report)


if __name__ == "__main__":
    main()
