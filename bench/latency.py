"""Tick -> order latency under a background quote load (issue 6, item 1).

Not a test: a measurement, live over loopback with :mod:`bench.rig` (the simulator in its own
process, the engine in this one on a warm embedded PostgreSQL, real WebSocket and HTTP). For
each background rate a fresh rig watches 1,000 spreads (managed, default exit plan, held at the
simulator's paper account). While the simulator sends ``rate`` quotes a second over the
background spreads' legs and underlyings, sample spreads (on an underlying of their own) are
stopped one by one, a new one every ``spacing`` seconds:

1. at ``t0`` both legs are quoted with the short leg up by the stop's distance plus five cents
   (the loss passes 100 % of the credit: the default credit stop);
2. at ``t0 + 0.1 s`` the same again (the debounce's second tick);
3. at ``t0 + 2.2 s`` the short leg once more, **marked**: the debounce (3 ticks over 2 s) is
   complete on this tick, so this is the tick the stop fires on.

Latency = the simulator's receipt of the closing order for that spread minus the send of the
frame carrying the marked tick, both ``time.perf_counter_ns()`` in the simulator's process (one
clock, independent of the engine's scheduling). A sample whose order came before its marked
tick (something else re-evaluated it past the debounce) is counted as ``early`` and not
measured; one with no order is ``missing``.

    .venv/bin/python -m bench.latency [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/latency.json`` (the engine's log goes to
``bench/results/latency.log``).
"""

from __future__ import annotations

import math
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import trio

from actors.watcher_pool import owner_key
from bench import standalone
from bench.rig import RATE_LIMIT, BookSpread, Rig, Tick, open_rig, warm_database
from bench.standalone import milliseconds

__all__ = [
    "FRESH_WAIT",
    "SIZES",
    "main",
    "measure_tick_to_order",
    "percentiles",
    "run",
    "sample_ticks",
]


@dataclass(frozen=True)
class _Size:
    spreads: int
    samples: int  # per background rate
    spacing: float  # seconds between two samples' first ticks
    rates: tuple[int, ...]


SIZES: Final = {
    # A second apart: each stop's order, fill and position refresh are over before the next
    # (stops a quarter-second apart measured the engine's backlog of exits, not a tick).
    "full": _Size(spreads=1000, samples=100, spacing=1.0, rates=(1000, 10_000)),
    "tiny": _Size(spreads=40, samples=6, spacing=0.3, rates=(1000, 10_000)),
}
TARGETS: Final = {"p50_ms_at_1000": 1.0, "p99_ms_at_10000": 2.0}

_LEAD: Final = 2.0  # s of load before the first sample (the model's first re-emission passes)
_SECOND_TICK: Final = 0.1
_MARKED_TICK: Final = 2.2  # the default stop's debounce is 3 ticks over 2 s
_STOP_MARGIN: Final = 5  # cents past the stop
_ORDER_WAIT: Final = 3.0  # s after the load for the last orders to arrive
FRESH_WAIT: Final = 5.0  # s for the final quotes to reach every watcher


def sample_ticks(spread: BookSpread, t0: float) -> list[Tick]:
    """The three ticks that drive ``spread``'s stop (see the module docstring); the last is
    marked with the spread's short leg."""
    # The default credit stop: a loss of 100 % of the credit, capped at max loss (the width).
    limit = min(spread.entry_cents, 100 - spread.entry_cents)
    up = limit + _STOP_MARGIN
    short_bid, short_ask = spread.short_quote[0] + up, spread.short_quote[1] + up
    long_bid, long_ask = spread.long_quote
    return [
        Tick(t0, spread.short, short_bid, short_ask, 31),
        Tick(t0, spread.long, long_bid, long_ask, 31),
        Tick(t0 + _SECOND_TICK, spread.short, short_bid, short_ask, 32),
        Tick(t0 + _SECOND_TICK, spread.long, long_bid, long_ask, 32),
        Tick(t0 + _MARKED_TICK, spread.short, short_bid, short_ask, 33, mark=spread.short),
    ]


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max by nearest rank, in the values' unit (None when empty)."""
    ordered = sorted(values)

    def rank(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": rank(1.0)}


async def measure_tick_to_order(
    rig: Rig,
    *,
    rate: float,
    samples: int,
    spacing: float,
    final_size: int | None = None,
) -> dict[str, Any]:
    """Stop ``samples`` fresh sample spreads of ``rig``'s book under ``rate`` background
    quotes a second; the latencies (ms) and what the simulator and the engine did meanwhile.

    ``final_size``: end the load with one final quote per background symbol (bid size
    ``final_size``) and report whether, and how soon after, every background watcher has it
    (``newest_quote_seconds``: None if not within ``FRESH_WAIT`` seconds)."""
    chosen = rig.book.take_samples(samples)
    ticks = [
        tick
        for index, spread in enumerate(chosen)
        for tick in sample_ticks(spread, _LEAD + index * spacing)
    ]
    seconds = _LEAD + (samples - 1) * spacing + _MARKED_TICK + 0.5
    fanout = rig.engine.fanout
    quotes_before = fanout.statistics().events_by_kind["quote"]
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    drive = await rig.sim.drive(
        rate=rate,
        seconds=seconds,
        background=rig.book.background_symbols(),
        ticks=ticks,
        final_size=final_size,
    )
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    delivered = fanout.statistics().events_by_kind["quote"] - quotes_before
    fresh: dict[str, Any] = {}
    if final_size is not None:
        fresh["newest_quote_seconds"] = await _newest_quote_delay(rig, drive.final_quotes)
    latencies, early, missing = await _collect(rig, chosen, drive.started_ns)
    figures = percentiles(latencies)
    return {
        "rate": rate,
        "samples": samples,
        "measured": len(latencies),
        "early": early,
        "missing": missing,
        "latency_ms": figures,
        "offered_per_second": round(drive.offered / drive.seconds),
        "delivered_per_second": round(delivered / wall),
        "sim_cpu": round(drive.cpu_seconds / drive.seconds, 2),
        "engine_cpu": round(cpu / wall, 2),
        "sim_longest_gap_ms": round(drive.longest_gap_ms, 1),
        **fresh,
    }


async def _newest_quote_delay(
    rig: Rig, final: dict[str, tuple[int, int, int]]
) -> float | None:
    """Seconds until the fan-out's latest quote of every symbol in ``final`` is that final
    quote and every background watcher's mailbox is drained (so each has taken it); None if
    that does not happen within ``FRESH_WAIT`` seconds."""
    started = trio.current_time()
    fanout = rig.engine.fanout
    expected = {
        symbol: (Decimal(bid) / 100, Decimal(ask) / 100, size)
        for symbol, (bid, ask, size) in final.items()
    }
    owners = [owner_key(spread.trade_id) for spread in rig.book.background]

    def reached() -> bool:
        for symbol, want in expected.items():
            quote = fanout.latest_quote(symbol)
            if quote is None or (quote.bid, quote.ask, quote.bid_size) != want:
                return False
        return all(fanout.mailbox(owner).statistics().pending == 0 for owner in owners)

    with trio.move_on_after(FRESH_WAIT):
        # Polled: no event says "every mailbox drained"; 1 ms is finer than what is measured.
        while not reached():  # noqa: ASYNC110
            await trio.sleep(0.001)
        return round(trio.current_time() - started, 4)
    return None


async def _collect(
    rig: Rig, chosen: Sequence[BookSpread], since_ns: int
) -> tuple[list[float], int, int]:
    """Latencies (ms) of the samples whose order came after their marked tick; how many came
    before it (early) and how many never came (missing, after waiting ``_ORDER_WAIT``)."""
    wanted = {spread.short for spread in chosen}
    with trio.move_on_after(_ORDER_WAIT):
        while True:
            timings = await rig.sim.timings(since_ns)
            ordered = {s for _, _, symbols in timings.receipts for s in symbols} & wanted
            if ordered == wanted:
                break
            await trio.sleep(0.1)
    first_order: dict[str, int] = {}
    for received_ns, _tag, symbols in sorted(timings.receipts):
        for symbol in symbols:
            if symbol in wanted:
                first_order.setdefault(symbol, received_ns)
    latencies, early, missing = [], 0, 0
    for symbol in sorted(wanted):
        emitted, received = timings.emitted_ns.get(symbol), first_order.get(symbol)
        if received is None or emitted is None:
            missing += 1
        elif received < emitted:
            early += 1
        else:
            latencies.append((received - emitted) / 1e6)
    return latencies, early, missing


async def _run(size: _Size, seed: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="spreadwatch-latency-") as tmp:
        run_dir = pathlib.Path(tmp)
        async with warm_database(run_dir) as db:
            for rate in size.rates:
                async with open_rig(
                    db, spreads=size.spreads, samples=size.samples, seed=seed, run_dir=run_dir
                ) as rig:
                    with trio.fail_after(120):
                        live = await rig.wait_all_live()
                    row = await measure_tick_to_order(
                        rig, rate=rate, samples=size.samples, spacing=size.spacing
                    )
                    row.update(spreads=size.spreads, all_live_seconds=round(live, 2))
                    rows.append(row)
    return rows


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Measure at every background rate of ``size`` (JSON-able)."""
    chosen = SIZES[size]
    started = time.perf_counter()
    rows = trio.run(_run, chosen, seed)
    return {
        "benchmark": "latency",
        "size": size,
        "seed": seed,
        "clock": "simulator process, time.perf_counter_ns (simulator in its own process)",
        "from": "the simulator hands the frame with the marked tick to its WebSocket",
        "to": "the simulator's order endpoint begins handling the closing order request",
        "engine_config_changes": {
            "broker.trading_rate_limit": RATE_LIMIT,
            "broker.read_rate_limit": RATE_LIMIT,
        },
        "targets": TARGETS,
        "rates": rows,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"{'rate/s':>8} {'delivered/s':>11} {'n':>4} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'early':>5} {'miss':>4} {'sim cpu':>7} {'eng cpu':>7}"
    ]
    for row in result["rates"]:
        ms = row["latency_ms"]
        cells = [
            f"{row['rate']:>8,}",
            f"{row['delivered_per_second']:>11,}",
            f"{row['measured']:>4}",
            *(f"{milliseconds(ms[p]):>7}" for p in ("p50", "p90", "p99", "max")),
            f"{row['early']:>5}",
            f"{row['missing']:>4}",
            f"{row['sim_cpu']:>7}",
            f"{row['engine_cpu']:>7}",
        ]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _report(result: dict[str, Any]) -> list[str]:
    spreads = result["rates"][0]["spreads"]
    return [f"latency: tick -> order, {spreads} spreads, {result['seconds']} s", _table(result)]


def main() -> None:
    standalone.main("latency", __doc__, run, _report)


if __name__ == "__main__":
    main()
