"""The engine's metrics, rendered in Prometheus' text format for ``/metrics`` (:mod:`engine.http`).

Two kinds of numbers, chosen so that the tick path pays nothing for them:

* **Read at scrape time** by a collector, from statistics the actors keep anyway: the quote
  fan-out's (market events by kind, conflated quotes, frames, reconnects, stale feeds, the feed
  state, subscribed symbols and the age of the newest quote), the watcher pool's, the audit
  sink's (queue depth, journal records) and the journal's size on disk; orders by status come
  from one ``GROUP BY`` that the ``/metrics`` handler runs just before rendering
  (:meth:`EngineMetrics.sample_orders`).
* **Counted where they happen**, never per tick: decisions by rule (when a watcher records an
  exit or a guard decision), the tick -> decision latency (from the arrival of the newest quote
  a watcher holds to its exit decision), the decision -> order latency (from the decision to the
  order request leaving the router), actor restarts (the supervisors' ``on_event`` hook), and
  the trio time of the mirror's last successful positions read (for ``/readyz`` too).

Every engine has its own :class:`~prometheus_client.CollectorRegistry`, never the global one:
engines (and tests) in one process never share a number.

This module knows the actors' statistics only by shape (the protocols below): ``engine`` does
not import ``actors``; the composition root hands the live objects over with :meth:`observe`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.errors import DatabaseError
from engine.log import get_logger
from engine.messages import FeedState, FeedStatusChanged, Quote
from storage.database import Executor

__all__ = [
    "LATENCY_BUCKETS",
    "AuditSource",
    "EngineMetrics",
    "FeedSource",
    "PoolSource",
    "newest_quote_age",
]

_log = get_logger("http")

# Seconds: the point of the engine is a tick becoming an order within milliseconds, so the
# buckets are fine below 10 ms and coarse above a second (a re-price ladder, a rate limit).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_ORDERS_BY_STATUS = "SELECT status, count(*) AS orders FROM orders WHERE account = $1 GROUP BY 1"


class FeedStatistics(Protocol):
    """What is read of ``QuoteFanout.statistics()``."""

    @property
    def events_by_kind(self) -> Mapping[str, int]: ...
    @property
    def frames(self) -> int: ...
    @property
    def bad_frames(self) -> int: ...
    @property
    def sessions(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def stale_detections(self) -> int: ...
    @property
    def subscribed_symbols(self) -> int: ...
    @property
    def conflated(self) -> int: ...
    @property
    def polls(self) -> int: ...
    @property
    def poll_failures(self) -> int: ...


class FeedSource(Protocol):
    """The quote fan-out (``actors.quote_stream.QuoteFanout``)."""

    @property
    def feed_state(self) -> FeedState: ...
    @property
    def feed_status(self) -> FeedStatusChanged: ...
    @property
    def symbols(self) -> frozenset[str]: ...
    def latest_quote(self, symbol: str) -> Quote | None: ...
    def statistics(self) -> FeedStatistics: ...


class AuditStatistics(Protocol):
    """What is read of ``AuditSink.statistics()``."""

    @property
    def accepted(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def journaled(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def rejected(self) -> int: ...


class AuditSource(Protocol):
    """The audit sink (``actors.audit_writer.AuditSink``)."""

    @property
    def journal_path(self) -> pathlib.Path: ...
    def statistics(self) -> AuditStatistics: ...


class PoolStatistics(Protocol):
    """What is read of ``actors.watcher_pool.PoolStatistics``."""

    @property
    def watchers(self) -> int: ...
    @property
    def started(self) -> int: ...
    @property
    def crashes(self) -> int: ...


PoolSource = Callable[[], PoolStatistics]


def newest_quote_age(feed: FeedSource, now: float) -> float | None:
    """Seconds since the newest quote of any subscribed symbol arrived (None: none yet).

    Read at scrape time from the fan-out's latest quote per symbol: nothing on the hot path.
    """
    newest = max(
        (quote.received_at for s in feed.symbols if (quote := feed.latest_quote(s)) is not None),
        default=None,
    )
    return None if newest is None else max(0.0, now - newest)


class EngineMetrics:
    """One engine's registry: the counters its actors feed, and the collector of the rest.

    The ``exit_decided`` / ``guard_recorded`` / ``order_sent`` / ``positions_read`` methods are
    the hooks the actors call (each a dict lookup and an add); everything else is read when
    ``/metrics`` is scraped.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._decisions = Counter(
            "spreadwatch_decisions",
            "Exit decisions recorded by the watchers (exit, held_by_guard), by rule",
            ["decision", "rule"],
            registry=self.registry,
        )
        self._tick_to_decision = Histogram(
            "spreadwatch_tick_to_decision_seconds",
            "From the arrival of the newest quote a watcher holds to its exit decision",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._decision_to_order = Histogram(
            "spreadwatch_decision_to_order_seconds",
            "From an exit decision to its order request leaving the router",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._restarts = Counter(
            "spreadwatch_actor_restarts",
            "Actor restarts by the supervisors (one_for_one), by supervisor and child",
            ["supervisor", "child"],
            registry=self.registry,
        )
        self._feed: FeedSource | None = None
        self._audit: AuditSource | None = None
        self._pool: PoolSource | None = None
        self._orders: dict[str, int] | None = None
        # trio time of the mirror's last successful positions read: None until the first.
        self.positions_read_at: float | None = None
        self.registry.register(_Collector(self))

    # -- wiring (the composition root) --------------------------------------------------------

    def observe(self, *, feed: FeedSource, audit: AuditSource) -> None:
        self._feed = feed
        self._audit = audit

    def observe_pool(self, statistics: PoolSource) -> None:
        """The watcher pool's ``on_statistics`` hook: each incarnation hands its own."""
        self._pool = statistics

    # -- hooks the actors call ----------------------------------------------------------------

    def exit_decided(self, rule: str, tick_age: float | None) -> None:
        """A watcher decided an exit by ``rule``; ``tick_age`` is how long ago the newest quote
        it holds arrived (None for an operator's close, which no tick decided)."""
        self._decisions.labels("exit", rule).inc()
        if tick_age is not None:
            self._tick_to_decision.observe(tick_age)

    def guard_recorded(self, rule: str | None) -> None:
        """A watcher recorded a guard holding back the exit ``rule`` would have decided."""
        self._decisions.labels("held_by_guard", rule or "none").inc()

    def order_sent(self, decision_age: float) -> None:
        """The router sent an exit order's request ``decision_age`` seconds after the decision."""
        self._decision_to_order.observe(max(0.0, decision_age))

    def positions_read(self, at: float) -> None:
        """The portfolio mirror read the broker's positions successfully at trio time ``at``."""
        self.positions_read_at = at

    def supervisor_event(self, event: str, fields: Mapping[str, object]) -> None:
        if event == "supervisor.child_restarting":
            self._restarts.labels(str(fields["supervisor"]), str(fields["child"])).inc()

    # -- scraping -----------------------------------------------------------------------------

    async def sample_orders(self, db: Executor, account_id: str, *, within: float) -> None:
        """Count the account's orders by status for the next render. A database that does not
        answer within ``within`` seconds leaves the family out of that scrape (``/readyz``
        says why)."""
        rows = None
        with trio.move_on_after(within):
            try:
                rows = await db.fetch(_ORDERS_BY_STATUS, account_id)
            except DatabaseError as exc:
                _log.warning("http.orders_unavailable", error=str(exc) or type(exc).__name__)
        self._orders = None if rows is None else {r["status"]: int(r["orders"]) for r in rows}

    def render(self) -> bytes:
        """The registry in Prometheus' text format (version 0.0.4)."""
        return generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        now = trio.current_time()
        if self._feed is not None:
            yield from _feed_families(self._feed, now)
        if self._pool is not None:
            yield from _pool_families(self._pool())
        if self._audit is not None:
            yield from _audit_families(self._audit)
        if self._orders is not None:
            orders = GaugeMetricFamily(
                "spreadwatch_orders", "Orders in the database by status", labels=["status"]
            )
            for status, count in sorted(self._orders.items()):
                orders.add_metric([status], count)
            yield orders
        if self.positions_read_at is not None:
            yield GaugeMetricFamily(
                "spreadwatch_positions_read_age_seconds",
                "Seconds since the portfolio mirror last read the broker's positions",
                value=max(0.0, now - self.positions_read_at),
            )


class _Collector:
    """The registry's view of :meth:`EngineMetrics.collect` (a custom collector)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; nothing to check for clashes at registration

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _feed_families(feed: FeedSource, now: float) -> Iterable[Metric]:
    stats = feed.statistics()
    events = CounterMetricFamily(
        "spreadwatch_quote_events", "Market-data events received, by kind", labels=["kind"]
    )
    for kind, count in sorted(stats.events_by_kind.items()):
        events.add_metric([kind], count)
    yield events
    yield _counter(
        "spreadwatch_quotes_conflated",
        "Quotes replaced in a watcher's mailbox before it read them (newest wins)",
        stats.conflated,
    )
    yield _counter("spreadwatch_feed_frames", "Market-data frames received", stats.frames)
    yield _counter(
        "spreadwatch_feed_bad_frames", "Market-data frames that did not decode", stats.bad_frames
    )
    yield _counter("spreadwatch_feed_sessions", "Market-data connections opened", stats.sessions)
    yield _counter(
        "spreadwatch_feed_reconnects",
        "Times the market-data connection was lost or failed and retried",
        stats.reconnects,
    )
    yield _counter(
        "spreadwatch_feed_stale",
        "Times the feed went silent past the limit",
        stats.stale_detections,
    )
    yield _counter("spreadwatch_feed_polls", "REST quote polls answered", stats.polls)
    yield _counter("spreadwatch_feed_poll_failures", "REST quote polls failed", stats.poll_failures)
    state = GaugeMetricFamily(
        "spreadwatch_feed_state",
        "The market feed's state (1 for the current one)",
        labels=["state"],
    )
    current = feed.feed_state
    for value in FeedState:
        state.add_metric([value.value], 1.0 if value is current else 0.0)
    yield state
    yield GaugeMetricFamily(
        "spreadwatch_subscribed_symbols",
        "Symbols subscribed on the market feed",
        value=stats.subscribed_symbols,
    )
    age = newest_quote_age(feed, now)
    if age is not None:
        yield GaugeMetricFamily(
            "spreadwatch_newest_quote_age_seconds",
            "Seconds since the newest quote of any subscribed symbol arrived",
            value=age,
        )


def _pool_families(stats: PoolStatistics) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "spreadwatch_watchers",
        "Position watchers running (one per managed open spread)",
        value=stats.watchers,
    )
    yield _counter("spreadwatch_watchers_started", "Position watchers started", stats.started)
    yield _counter(
        "spreadwatch_watcher_crashes",
        "Position watcher crashes (each restarted by the pool)",
        stats.crashes,
    )


def _audit_families(audit: AuditSource) -> Iterable[Metric]:
    stats = audit.statistics()
    yield GaugeMetricFamily(
        "spreadwatch_audit_queue_depth",
        "Audit records in memory waiting to be written",
        value=stats.queued,
    )
    yield GaugeMetricFamily(
        "spreadwatch_audit_journal_records",
        "Audit records in the local journal waiting to be written",
        value=stats.journaled,
    )
    try:
        size = audit.journal_path.stat().st_size
    except FileNotFoundError:
        size = 0
    yield GaugeMetricFamily(
        "spreadwatch_audit_journal_bytes", "Size of the audit journal file", value=size
    )
    yield _counter("spreadwatch_audit_accepted", "Audit records submitted", stats.accepted)
    yield _counter("spreadwatch_audit_written", "Audit records committed", stats.written)
    yield _counter("spreadwatch_audit_write_errors", "Failed audit batch writes", stats.errors)
    yield _counter(
        "spreadwatch_audit_rejected", "Audit records the database refused for good", stats.rejected
    )
