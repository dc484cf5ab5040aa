"""Scale and memory: RSS per watched spread and time to every watcher live (issue 6, item 4).

Not a test: a measurement with :mod:`bench.rig` (the simulator in its own process holding a
generated book of N credit spreads, the embedded PostgreSQL started and migrated, the engine in
this process in its normal configuration). At each number of spreads:

- **time to every watcher live**: seconds from the engine's start until every watcher has its
  symbols registered, a quote for each, and has evaluated its book
  (:meth:`bench.rig.Rig.wait_all_live`), on a database already started and migrated;
- **RSS per watched spread**: the engine process's resident set once every watcher is live,
  minus the same process's when the engine has started (its actors running, the mirror not yet
  synced, so no watcher yet), over N: what the watchers, their subscriptions and their trades'
  state cost. ``rss_bytes_per_spread_upper`` takes the RSS before the rig started instead, so it
  also counts the engine's fixed start-up cost and this benchmark's own copy of the book
  (``rss_fixed_bytes``): an upper bound that tightens as N grows.

Each point runs in a fresh process of its own (``spawn``): Python keeps freed memory for reuse,
so a second point measured in the same process would look cheaper than it is.

How the cost of one market event grows with the number of spreads is measured by
``bench/core_cost.py`` (its ``scaling``); the runner reports both.

    .venv/bin/python -m bench.scale [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import gc
import multiprocessing
import pathlib
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Final

import trio

from bench import standalone
from bench.rig import open_rig, process_rss_bytes, warm_database
from bench.runner import one_line
from engine.log import configure_logging

__all__ = ["SIZES", "TARGETS", "main", "measure_point", "run"]


@dataclass(frozen=True)
class _Size:
    points: tuple[int, ...]  # numbers of spreads
    live_deadline: float  # seconds allowed for every watcher to go live


SIZES: Final = {
    "full": _Size(points=(100, 1000, 10_000), live_deadline=300.0),
    "tiny": _Size(points=(20, 60), live_deadline=60.0),
}
TARGETS: Final = {"rss_bytes_per_spread": 10 * 1024, "all_live_seconds_at_1000": 3.0}


async def measure_point(spreads: int, *, seed: int, live_deadline: float) -> dict[str, Any]:
    """Start the rig with ``spreads`` spreads; RSS and time until every watcher is live."""
    with tempfile.TemporaryDirectory(prefix="spreadwatch-scale-") as tmp:
        run_dir = pathlib.Path(tmp)
        async with warm_database(run_dir) as db:
            gc.collect()
            rss_before = process_rss_bytes()
            async with open_rig(db, spreads=spreads, seed=seed, run_dir=run_dir) as rig:
                rss_started = process_rss_bytes()
                with trio.fail_after(live_deadline):
                    live_seconds = await rig.wait_all_live()
                gc.collect()
                rss_live = process_rss_bytes()
                symbols = rig.engine.fanout.statistics().subscribed_symbols
    return {
        "spreads": spreads,
        "symbols": symbols,
        "all_live_seconds": round(live_seconds, 3),
        "rss_before_bytes": rss_before,
        "rss_started_bytes": rss_started,
        "rss_live_bytes": rss_live,
        "rss_fixed_bytes": rss_started - rss_before,
        "rss_bytes_per_spread": round((rss_live - rss_started) / spreads),
        "rss_bytes_per_spread_upper": round((rss_live - rss_before) / spreads),
    }


def _point_process(spreads: int, seed: int, live_deadline: float, conn: Any) -> None:
    # Warnings and errors only: what is measured is memory and start-up, not the log.
    configure_logging(level="warning")
    try:
        figures = trio.run(lambda: measure_point(spreads, seed=seed, live_deadline=live_deadline))
    except BaseException as exc:
        conn.send(("failed", one_line(exc)))
        raise
    conn.send(("ok", figures))


def _in_own_process(spreads: int, seed: int, live_deadline: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_point_process, args=(spreads, seed, live_deadline, send), daemon=False
    )
    process.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "failed", None
    process.join()
    if status != "ok":
        reason = payload or f"the process ended with status {process.exitcode}"
        raise RuntimeError(f"scale at {spreads:,} spreads: {reason}")
    result: dict[str, Any] = payload
    return result


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Every point of ``size``, each in a process of its own (JSON-able)."""
    chosen = SIZES[size]
    started = time.perf_counter()
    points, failed = [], {}
    for spreads in chosen.points:
        try:
            points.append(_in_own_process(spreads, seed, chosen.live_deadline))
        except RuntimeError as exc:  # one point the rig cannot build must not hide the others
            failed[str(spreads)] = str(exc)
    if not points:
        raise RuntimeError("; ".join(failed.values()))
    return {
        "benchmark": "scale",
        "size": size,
        "seed": seed,
        "targets": TARGETS,
        "points": points,
        "headline": points[-1],  # the most spreads measured: the fixed cost weighs least
        "failed_points": failed,
        "per_event_cost": "see core_cost.scaling",
        "seconds": round(time.perf_counter() - started, 2),
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        f"{'spreads':>8}{'symbols':>9}{'live s':>8}{'RSS/spread':>12}{'upper':>12}{'fixed MB':>10}"
    ]
    for p in result["points"]:
        rows.append(
            f"{p['spreads']:>8,}{p['symbols']:>9,}{p['all_live_seconds']:>8.2f}"
            f"{p['rss_bytes_per_spread']:>12,}{p['rss_bytes_per_spread_upper']:>12,}"
            f"{p['rss_fixed_bytes'] / 2**20:>10.1f}"
        )
    return "\n".join(rows)


def _report(result: dict[str, Any]) -> list[str]:
    return [f"scale: {result['seconds']} s", _table(result)]


def main() -> None:
    standalone.main("scale", __doc__, run, _report)


if __name__ == "__main__":
    main()
