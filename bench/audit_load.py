"""Audit records per second into PostgreSQL with group commit (issue 6, item 5).

Not a test: a measurement through the real path a record takes in the engine: producers call
``AuditSink.submit`` (never waits), :func:`actors.audit_writer.run` takes batches of up to
``max_batch`` and writes each in ONE transaction through
:class:`storage.audit.DatabaseAuditStore` (real PostgreSQL: the embedded server, started and
migrated in a temporary directory by :func:`bench.rig.warm_database`). The figure is
*sustained*: records committed per second from the first submit until the last record is
committed, with the producer keeping the queue below the sink's memory limit (so the journal,
the overflow path, is not what is measured; ``spills`` says whether it was touched).

**Records** are what watchers write: decision records of the five auto-exited shapes (two or
four legs), made by evaluating the default exit plan (:func:`engine.domain.exit_rules.evaluate`)
on Black-Scholes quotes and carrying its thresholds and replay inputs as a PositionWatcher's
record does; mostly holds (SNAPSHOT), some guarded and exit decisions, and one engine event in
a hundred. They are built before the clock starts (making a record is the producer's cost, not
the writer's), each with its own uuid.

**Beside the engine** (``under_load``): with :mod:`bench.rig` (simulator in its own process,
1,000 spreads, the engine in this process), tick -> order latency is measured by
:func:`bench.latency.measure_tick_to_order` under background quotes, in alternating legs
without and with audit records submitted into the *engine's own* AuditSink at 90 % of the rate
the writer sustained above (records made beforehand, so what the engine pays is the writer's
work). The figure is the change of the median of the legs' p99: with / without - 1. The
background is 1,000 quotes/s: at 10,000/s on a busy two-core machine the engine alone is past
saturation (p99 in seconds, samples missing) and a ratio of two saturated legs says nothing.

    .venv/bin/python -m bench.audit_load [--size full|tiny] [--seed 1]

Prints a table and writes ``bench/results/audit_load.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import importlib.util
import pathlib
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import msgspec
import psutil
import trio

from actors import audit_writer
from actors.audit_writer import AuditSink, AuditWriterConfig
from bench import standalone
from bench.paths import SECONDS_PER_YEAR, SHAPES, build_spread, cents, quote_cents
from engine.clock import NEW_YORK
from engine.domain.exit_plan import default_plan
from engine.domain.exit_rules import evaluate
from engine.domain.exit_types import MarketSnapshot, PositionFacts, WatchState
from engine.domain.guards import TimedQuote
from engine.domain.pricing import mark_close_price
from engine.messages import (
    AuditRecord,
    Decision,
    DecisionRecord,
    EngineEventRecord,
    ExitAction,
    QuoteSnapshot,
    encode,
)
from storage import Database, queries
from storage.audit import DatabaseAuditStore

__all__ = [
    "SIZES",
    "TARGET_P99_CHANGE_PERCENT",
    "TARGET_RECORDS_PER_SECOND",
    "main",
    "make_records",
    "measure_throughput",
    "measure_under_load",
    "run",
]


@dataclass(frozen=True)
class _LoadSize:
    """The tick -> order legs beside the engine."""

    spreads: int
    quote_rate: int  # background quotes a second
    samples: int  # stopped spreads per leg
    spacing: float  # seconds between two samples
    alternations: int  # pairs of legs (without, with)


@dataclass(frozen=True)
class _Size:
    records: int  # per round
    rounds: int
    trades: int
    load: _LoadSize


SIZES: Final = {
    "full": _Size(records=200_000, rounds=3, trades=1000, load=_LoadSize(1000, 1000, 40, 0.25, 3)),
    "tiny": _Size(records=4_000, rounds=1, trades=20, load=_LoadSize(30, 1000, 4, 0.3, 1)),
}
TARGET_RECORDS_PER_SECOND: Final = 50_000
TARGET_P99_CHANGE_PERCENT: Final = 10.0

MARKET_TIME: Final = dt.datetime(2025, 12, 9, 11, 0, tzinfo=NEW_YORK)
_EVENT_SHARE = 0.01
_DECISION_MIX: Final = (
    (Decision.HOLD, 0.90),
    (Decision.HELD_BY_GUARD, 0.07),
    (Decision.EXIT, 0.03),
)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _template(index: int, trade_id: int, rng: random.Random) -> DecisionRecord:
    """A hold record of one spread, as a PositionWatcher writes it: the evaluation's
    thresholds, with everything ``evaluate`` saw under ``inputs``."""
    strategy = SHAPES[index % len(SHAPES)]
    spot = 680.0 + rng.uniform(-20, 20)
    expiration = dt.date(2025, 12, 12) + dt.timedelta(weeks=rng.randrange(8))
    years = (
        dt.datetime.combine(expiration, dt.time(16), tzinfo=NEW_YORK) - MARKET_TIME
    ).total_seconds() / SECONDS_PER_YEAR
    spread = build_spread(
        strategy, root="SPY", expiration=expiration, spot=spot, distance=0.03, width=5
    )
    quotes = [
        quote_cents(leg.symbol.right, spot, float(leg.symbol.strike), years, 0.3)
        for leg in spread.legs
    ]
    legs = tuple(TimedQuote(bid=cents(b), ask=cents(a), age_seconds=0.01) for b, a in quotes)
    entry = mark_close_price(spread, legs) or Decimal("1.00")
    position = PositionFacts(
        spread=spread,
        entry_price=abs(entry) or Decimal("1.00"),
        opening_quantity=1,
        opened_at=MARKET_TIME - dt.timedelta(days=1),
    )
    underlying = cents(round(spot * 100))
    snapshot = MarketSnapshot(
        legs=legs,
        underlying_price=underlying,
        underlying_age_seconds=0.02,
        market_time=MARKET_TIME,
        monotonic=100.0,
    )
    evaluation = evaluate(default_plan(strategy), position, WatchState(), snapshot)
    thresholds = dict(evaluation.thresholds)
    thresholds["inputs"] = evaluation.to_record()["inputs"]
    metrics = evaluation.metrics
    assert metrics is not None
    return DecisionRecord(
        trade_id=trade_id,
        decision=Decision.HOLD,
        rule=None,
        rules_fired=(),
        legs=tuple(
            QuoteSnapshot(
                symbol=leg.occ,
                bid=cents(b),
                ask=cents(a),
                bid_at=1_765_296_000_000,
                ask_at=1_765_296_000_000,
                age_ms=10,
            )
            for leg, (b, a) in zip(spread.legs, quotes, strict=True)
        ),
        underlying=QuoteSnapshot(symbol="SPY", bid=None, ask=None, last=underlying, age_ms=20),
        mark_close_price=metrics.mark_close_price,
        natural_close_price=metrics.natural_close_price,
        pnl=metrics.pnl,
        profit_fraction=metrics.profit_fraction,
        loss_fraction=metrics.loss_fraction,
        quantity=1,
        thresholds=thresholds,
        rule_version=evaluation.rule_version,
        dry_run=False,
        at=MARKET_TIME.astimezone(dt.UTC),
    )


def _vary(template: DecisionRecord, n: int, rng: random.Random) -> AuditRecord:
    at = template.at + dt.timedelta(microseconds=n * 50)
    if rng.random() < _EVENT_SHARE:
        return EngineEventRecord(
            kind="quote_stream.reconnected",
            actor="quote_stream",
            level="WARNING",
            trade_id=template.trade_id,
            symbol="SPY",
            message="market stream reconnected after a stale feed",
            action_taken="resubscribed",
            detail={"attempt": n % 7, "gap_ms": 1500},
            at=at,
        )
    decision = rng.choices([d for d, _ in _DECISION_MIX], [w for _, w in _DECISION_MIX])[0]
    changes: dict[str, Any] = {"decision_id": uuid.uuid4(), "at": at, "decision": decision}
    if decision is Decision.HELD_BY_GUARD:
        changes |= {"rule": "stop_loss", "rules_fired": ("stop_loss",), "guard": "wide:leg 1"}
    elif decision is Decision.EXIT:
        changes |= {
            "rule": "profit_target",
            "rules_fired": ("profit_target",),
            "exit_action": ExitAction.FULL,
            "exit_quantity": 1,
        }
    return msgspec.structs.replace(template, **changes)


def make_records(trade_ids: Sequence[int], count: int, seed: int) -> list[AuditRecord]:
    """``count`` distinct audit records over the trades (see the module docstring)."""
    rng = random.Random(seed)
    templates = [_template(i, trade_id, rng) for i, trade_id in enumerate(trade_ids)]
    return [_vary(templates[n % len(templates)], n, rng) for n in range(count)]


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


async def _insert_trades(db: Database, count: int) -> list[int]:
    """The trades the records point at (``decisions.trade_id`` is a foreign key)."""
    return [
        await queries.insert_trade(
            db,
            account="BENCH",
            underlying="SPY",
            strategy="bull_put_credit",
            legs=[{"symbol": "SPY251212P00660000", "quantity": 1}],
            quantity=1,
            entry_price=Decimal("1.00"),
            origin="IMPORTED",
        )
        for _ in range(count)
    ]


async def _produce(sink: AuditSink, records: Sequence[AuditRecord], chunk: int) -> None:
    """Submit every record, ``chunk`` at a time, keeping the queue under the memory limit (the
    writer runs whenever the producer checkpoints)."""
    ceiling = sink.config.memory_limit - 2 * chunk
    for start in range(0, len(records), chunk):
        # Polled: the sink has no "below this depth" event, and 1 ms is finer than a batch.
        while sink.statistics().queued > ceiling:  # noqa: ASYNC110
            await trio.sleep(0.001)
        for record in records[start : start + chunk]:
            sink.submit(record)
        await trio.lowlevel.checkpoint()


def _server_processes(data_directory: str) -> list[psutil.Process] | None:
    """The PostgreSQL server's processes (postmaster and children) when it runs on this
    machine and this user may see them; None otherwise."""
    try:
        pid = int(pathlib.Path(data_directory, "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _cpu_seconds(processes: Sequence[psutil.Process] | None) -> float | None:
    if processes is None:
        return None
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # a backend that ended meanwhile
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def _round(
    db: Database, records: Sequence[AuditRecord], config: AuditWriterConfig, journal: pathlib.Path
) -> dict[str, Any]:
    store = DatabaseAuditStore(db)
    total = len(records)
    batch_sizes: list[int] = []
    server = _server_processes(await db.fetchval("SHOW data_directory"))
    with AuditSink(journal_path=journal, config=config) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: audit_writer.run(
                    sink=sink, store=store, task_status=task_status
                )
            )
            gc.collect()
            started = time.perf_counter()
            cpu_started, server_started = time.process_time(), _cpu_seconds(server)
            nursery.start_soon(_produce, sink, records, 500)
            last_batches = 0
            # Polled: batches are counted as they commit; 2 ms is finer than one batch.
            while (stats := sink.statistics()).written < total:
                if stats.batches != last_batches:
                    batch_sizes.append(stats.last_batch_size)
                    last_batches = stats.batches
                await trio.sleep(0.002)
            elapsed = time.perf_counter() - started
            cpu, server_ended = time.process_time() - cpu_started, _cpu_seconds(server)
            sink.close()
    final = sink.statistics()
    server_cpu = (
        None
        if server_started is None or server_ended is None
        else round((server_ended - server_started) / total * 1e6, 1)
    )
    return {
        "records": total,
        "seconds": round(elapsed, 3),
        "records_per_second": round(total / elapsed),
        "engine_cpu_us_per_record": round(cpu / total * 1e6, 1),
        "server_cpu_us_per_record": server_cpu,
        "batches": final.batches,
        "median_batch": statistics.median(batch_sizes) if batch_sizes else final.last_batch_size,
        "spills": final.spills,
        "errors": final.errors,
        "duplicates": final.duplicates,
    }


async def measure_throughput(
    db: Database, *, size: str = "full", seed: int = 1, work_dir: pathlib.Path
) -> dict[str, Any]:
    """Rounds of sustained audit load into ``db`` (migrated, empty)."""
    chosen = SIZES[size]
    trade_ids = await _insert_trades(db, chosen.trades)
    config = AuditWriterConfig()
    rounds = []
    for index in range(chosen.rounds):
        records = make_records(trade_ids, chosen.records, seed + index)
        rounds.append(await _round(db, records, config, work_dir / f"journal-{index}.jsonl"))
        del records
    stored = await db.fetchval("SELECT count(*) FROM decisions") + await db.fetchval(
        "SELECT count(*) FROM events"
    )
    rates = [r["records_per_second"] for r in rounds]
    server = [r["server_cpu_us_per_record"] for r in rounds]
    sample = make_records(trade_ids, 200, seed)
    return {
        "records_per_second_median": round(statistics.median(rates)),
        "server_cpu_us_per_record": None if None in server else statistics.median(server),
        "engine_cpu_us_per_record": statistics.median(
            r["engine_cpu_us_per_record"] for r in rounds
        ),
        "record_json_bytes_mean": round(statistics.mean(len(encode(r)) for r in sample)),
        "rounds": rounds,
        "rows_stored": stored,
        "max_batch": config.max_batch,
        "flush_interval": config.flush_interval,
    }


# ---------------------------------------------------------------------------------------------
# Beside the engine: tick -> order with and without audit load
# ---------------------------------------------------------------------------------------------


async def _feed_engine(sink: AuditSink, records: Sequence[AuditRecord], rate: float) -> None:
    """Submit ``records`` into the engine's sink at ``rate`` a second (10 ms chunks) until
    they run out or this task is cancelled."""
    per_tick = max(1, round(rate / 100))
    next_at = trio.current_time()
    for start in range(0, len(records), per_tick):
        for record in records[start : start + per_tick]:
            sink.submit(record)
        next_at += per_tick / rate
        await trio.sleep_until(next_at)


async def _drained(sink: AuditSink) -> None:
    """Until the writer has written everything submitted (so a leg without load has none)."""
    # Polled: the sink has no "empty" event; 10 ms is fine beside legs of seconds.
    while (stats := sink.statistics()).queued or stats.journaled:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def measure_under_load(
    db: Database, *, size: str, seed: int, audit_rate: float, run_dir: pathlib.Path
) -> dict[str, Any]:
    """Alternating tick -> order legs without and with ``audit_rate`` records a second into
    the engine's AuditSink (see the module docstring)."""
    from bench.latency import measure_tick_to_order
    from bench.rig import open_rig

    load = SIZES[size].load
    leg_seconds = 2.0 + load.samples * load.spacing + 6.0  # the latency leg and its waits
    legs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    async with open_rig(
        db,
        spreads=load.spreads,
        samples=2 * load.alternations * load.samples,
        seed=seed,
        run_dir=run_dir,
    ) as rig:
        with trio.fail_after(300):
            await rig.wait_all_live()
        trade_ids = [spread.trade_id for spread in rig.book.spreads]
        for index in range(load.alternations):
            order = ("without", "with") if index % 2 == 0 else ("with", "without")
            for leg in order:
                await _drained(rig.engine.audit)
                written_before = rig.engine.audit.statistics().written
                async with trio.open_nursery() as nursery:
                    if leg == "with":
                        records = make_records(
                            trade_ids, round(audit_rate * leg_seconds), seed + index
                        )
                        nursery.start_soon(_feed_engine, rig.engine.audit, records, audit_rate)
                    figures = await measure_tick_to_order(
                        rig, rate=load.quote_rate, samples=load.samples, spacing=load.spacing
                    )
                    nursery.cancel_scope.cancel()
                await _drained(rig.engine.audit)
                figures["audit_records_written"] = (
                    rig.engine.audit.statistics().written - written_before
                )
                legs[leg].append(figures)
    p99 = {
        leg: statistics.median(
            f["latency_ms"]["p99"] for f in rows if f["latency_ms"]["p99"] is not None
        )
        if any(f["latency_ms"]["p99"] is not None for f in rows)
        else None
        for leg, rows in legs.items()
    }
    change = (
        None
        if p99["without"] is None or p99["with"] is None
        else round((p99["with"] / p99["without"] - 1) * 100, 1)
    )
    return {
        "spreads": load.spreads,
        "quote_rate": load.quote_rate,
        "audit_rate": round(audit_rate),
        "p99_ms_without": p99["without"],
        "p99_ms_with": p99["with"],
        "p99_change_percent": change,
        "legs": legs,
    }


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Sustained audit throughput, then tick -> order beside it (JSON-able)."""
    from bench.rig import warm_database

    started = time.perf_counter()

    async def _main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="spreadwatch-bench-audit-") as directory:
            work_dir = pathlib.Path(directory)
            async with warm_database(work_dir) as db:
                figures = await measure_throughput(db, size=size, seed=seed, work_dir=work_dir)
                if importlib.util.find_spec("bench.latency") is None:
                    figures["under_load"] = {"note": "bench/latency.py is not there yet"}
                else:
                    rate = 0.9 * figures["records_per_second_median"]
                    figures["under_load"] = await measure_under_load(
                        db, size=size, seed=seed, audit_rate=rate, run_dir=work_dir
                    )
                return figures

    figures = trio.run(_main)
    return {
        "benchmark": "audit_load",
        "size": size,
        "seed": seed,
        "target_records_per_second": TARGET_RECORDS_PER_SECOND,
        "target_p99_change_percent": TARGET_P99_CHANGE_PERCENT,
        **figures,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        f"{'round':>5}{'records':>10}{'seconds':>9}{'rec/s':>9}{'cpu us/rec':>11}{'batches':>8}"
        f"{'med batch':>10}{'spills':>7}"
    ]
    for i, r in enumerate(result["rounds"]):
        rows.append(
            f"{i:>5}{r['records']:>10,}{r['seconds']:>9}{r['records_per_second']:>9,}"
            f"{r['engine_cpu_us_per_record']:>11}{r['batches']:>8}{r['median_batch']:>10}"
            f"{r['spills']:>7}"
        )
    return "\n".join(rows)


def _report(result: dict[str, Any]) -> list[str]:
    lines = [
        f"audit_load: {result['records_per_second_median']:,} records/s (median of rounds), "
        f"target >= {TARGET_RECORDS_PER_SECOND:,}; {result['seconds']} s",
        _table(result),
    ]
    load = result["under_load"]
    if "note" in load:
        lines.append(f"under load: {load['note']}")
    else:
        lines.append(
            f"tick -> order p99 at {load['quote_rate']:,} quotes/s, {load['spreads']:,} spreads: "
            f"{load['p99_ms_without']} ms without, {load['p99_ms_with']} ms with "
            f"{load['audit_rate']:,} audit records/s ({load['p99_change_percent']:+} %)"
        )
    return lines


def main() -> None:
    standalone.main("audit_load", __doc__, run, _report)


if __name__ == "__main__":
    main()
