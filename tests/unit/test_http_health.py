"""The HTTP endpoint's pieces without an engine: readiness (a pure function), liveness, the port
binding and its one-line error, the ASGI routes, and the metrics rendering (real QuoteFanout fed
by QuoteStream from a socket at the process boundary, a real AuditSink, parsed back as
Prometheus text)."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from actors import quote_stream
from actors.audit_writer import AuditSink
from actors.quote_stream import QuoteFanout
from engine.clock import TrioMarketClock
from engine.config import HttpConfig
from engine.errors import ConfigError
from engine.http import (
    DatabaseProbe,
    ReadinessLimits,
    assess,
    bind_listener,
    listening,
    liveness,
)
from engine.messages import EngineEventRecord, FeedState, FeedStatusChanged, WantSymbols
from engine.metrics import EngineMetrics
from engine.supervisor import ChildState, ChildStatistics, SupervisorStatistics

AT = dt.datetime(2025, 12, 9, 15, 0, tzinfo=dt.UTC)
LIMITS = ReadinessLimits(positions_max_age=90.0, feed_max_age=60.0)
OK_DB = DatabaseProbe(seconds=0.002)


def _feed(state: FeedState, reason: str = "market stream connected") -> FeedStatusChanged:
    return FeedStatusChanged(state=state, reason=reason, at=AT)


def _ready(**changes: Any) -> Any:
    inputs: dict[str, Any] = {
        "database": OK_DB,
        "feed": _feed(FeedState.CONNECTED),
        "subscribed": 3,
        "quote_age": 0.2,
        "positions_age": 5.0,
        "limits": LIMITS,
    }
    inputs.update(changes)
    return assess(**inputs)


# --------------------------------------------------------------------------- readiness


def test_everything_fine_is_ready_with_a_verdict_per_check() -> None:
    readiness = _ready()
    assert readiness.ready and readiness.failing == []
    assert set(readiness.checks) == {"database", "feed", "positions", "halted"}
    assert all(check.ok for check in readiness.checks.values())


@pytest.mark.parametrize(
    ("changes", "failing", "detail"),
    [
        ({"feed": _feed(FeedState.DISCONNECTED, "socket closed")}, ["feed"], "disconnected"),
        ({"feed": _feed(FeedState.STALE, "no frame for 60 s")}, ["feed"], "stale"),
        ({"quote_age": 61.0}, ["feed"], "61.0 s old"),
        ({"quote_age": None}, ["feed"], "no quote yet"),
        ({"positions_age": None}, ["positions"], "not been read"),
        ({"positions_age": 91.0}, ["positions"], "limit 90 s"),
        ({"database": DatabaseProbe(halted=True, halt_reason="ops")}, ["halted"], "ops"),
        (
            {"database": DatabaseProbe(error="no answer within 2 s")},
            ["database", "halted"],
            "unreachable",
        ),
    ],
)
def test_each_failing_check_is_named(
    changes: dict[str, Any], failing: list[str], detail: str
) -> None:
    readiness = _ready(**changes)
    assert not readiness.ready
    assert readiness.failing == failing
    assert detail in readiness.checks[failing[0]].detail


def test_a_connected_feed_with_nothing_subscribed_is_ready_without_quotes() -> None:
    assert _ready(subscribed=0, quote_age=None).ready
    # Polling (Tradier's sandbox) is a flowing feed too.
    assert _ready(feed=_feed(FeedState.POLLING, "polling")).ready


def test_outside_the_session_a_quiet_feed_is_ready_but_a_dropped_one_is_not() -> None:
    closed = _ready(quote_age=3600.0, market_open=False)
    assert closed.ready and "market closed" in closed.checks["feed"].detail
    assert _ready(quote_age=None, market_open=False).ready
    dropped = _ready(feed=_feed(FeedState.DISCONNECTED, "socket closed"), market_open=False)
    assert dropped.failing == ["feed"]
    assert _ready(quote_age=3600.0).failing == ["feed"]  # in session, an hour is stale


def test_liveness_needs_every_root_child_alive() -> None:
    def stats(*states: ChildState) -> SupervisorStatistics:
        children = tuple(ChildStatistics(f"c{i}", s, 0, None) for i, s in enumerate(states))
        return SupervisorStatistics(children=children, total_restarts=2)

    alive, body = liveness(stats(ChildState.RUNNING, ChildState.BACKING_OFF))
    assert alive and body == {
        "alive": True,
        "children": {"c0": "running", "c1": "backing_off"},
        "restarts": 2,
    }
    assert not liveness(stats(ChildState.RUNNING, ChildState.EXITED))[0]
    assert not liveness(stats(ChildState.STOPPED))[0]


# --------------------------------------------------------------------------- the port


def test_a_taken_port_is_one_line_naming_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            bind_listener(HttpConfig(host="127.0.0.1", port=port))
    message = str(caught.value)
    assert message.startswith(f"http: port {port} on 127.0.0.1 is in use: ")
    assert "SPREADWATCH_HTTP__PORT" in message and "\n" not in message


def test_port_zero_listens_on_a_free_port_and_disabled_binds_nothing() -> None:
    with listening(HttpConfig(port=0)) as listener:
        assert listener is not None
        port = listener.getsockname()[1]
        assert port > 0
        # Something listens: a connection is accepted by the kernel's backlog.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with listening(HttpConfig(enabled=False)) as nothing:
        assert nothing is None


# --------------------------------------------------------------------------- metrics


class _Socket:
    """The broker's end of a market socket: frames the test puts, subscriptions it records."""

    def __init__(self) -> None:
        self.send, self._frames = trio.open_memory_channel[str](16)
        self.subscribed: list[frozenset[str]] = []

    async def subscribe(self, symbols: Any) -> None:
        self.subscribed.append(frozenset(symbols))

    async def receive(self) -> str:
        return await self._frames.receive()


def _families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    samples = [s for family in families.values() for s in family.samples]
    matches = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, [s for s in samples if s.name == name])
    return float(matches[0])


async def test_metrics_render_what_the_engine_counted_and_read_at_scrape(
    autojump_clock: trio.testing.MockClock, tmp_path: pathlib.Path
) -> None:
    metrics = EngineMetrics()
    fanout = QuoteFanout()
    market = _Socket()

    @asynccontextmanager
    async def connect() -> AsyncIterator[_Socket]:
        yield market

    with AuditSink(journal_path=tmp_path / "journal.jsonl") as sink:
        metrics.observe(feed=fanout, audit=sink)
        send, inbox = trio.open_memory_channel[Any](0)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: quote_stream.run(
                    inbox=inbox,
                    fanout=fanout,
                    clock=TrioMarketClock(AT),
                    connect=connect,
                    task_status=task_status,
                )
            )
            await send.send(WantSymbols(owner="w1", symbols=frozenset({"SPY"})))
            mailbox = fanout.mailbox("w1")
            quotes = [
                {"type": "quote", "symbol": "SPY", "bid": 680 + i, "ask": 681 + i} for i in range(3)
            ]
            await market.send.send("\n".join(json.dumps(q) for q in quotes))
            await market.send.send(json.dumps({"type": "summary", "symbol": "SPY", "open": 1}))
            await trio.testing.wait_all_tasks_blocked()
            assert fanout.latest_quote("SPY") is not None
            await trio.sleep(2.5)  # the newest quote is now 2.5 s old
            sink.submit(EngineEventRecord(kind="test.event", actor="test", at=AT))
            metrics.exit_decided("stop_loss", 0.0004)
            metrics.exit_decided("manual", None)
            metrics.guard_recorded("stop_loss")
            metrics.order_sent(0.003)
            metrics.supervisor_event(
                "supervisor.child_restarting", {"supervisor": "engine", "child": "quote_stream"}
            )
            metrics.supervisor_event("supervisor.child_started", {"supervisor": "engine"})
            metrics.positions_read(trio.current_time() - 4.0)
            families = _families(metrics.render())
            nursery.cancel_scope.cancel()
        del mailbox

    assert _value(families, "spreadwatch_quote_events_total", kind="quote") == 3
    assert _value(families, "spreadwatch_quote_events_total", kind="summary") == 1
    # Three quotes of one symbol reached the unread mailbox: two were replaced (newest wins).
    assert _value(families, "spreadwatch_quotes_conflated_total") == 2
    assert _value(families, "spreadwatch_feed_frames_total") == 2
    assert _value(families, "spreadwatch_feed_state", state="connected") == 1
    assert _value(families, "spreadwatch_feed_state", state="disconnected") == 0
    assert _value(families, "spreadwatch_subscribed_symbols") == 1
    assert _value(families, "spreadwatch_newest_quote_age_seconds") == pytest.approx(2.5)
    assert _value(families, "spreadwatch_decisions_total", decision="exit", rule="stop_loss") == 1
    assert _value(families, "spreadwatch_decisions_total", decision="exit", rule="manual") == 1
    assert (
        _value(families, "spreadwatch_decisions_total", decision="held_by_guard", rule="stop_loss")
        == 1
    )
    # The operator's close has no tick: one latency observed, in the sub-millisecond bucket.
    assert _value(families, "spreadwatch_tick_to_decision_seconds_count") == 1
    assert _value(families, "spreadwatch_tick_to_decision_seconds_bucket", le="0.0005") == 1
    assert _value(families, "spreadwatch_tick_to_decision_seconds_bucket", le="0.00025") == 0
    assert _value(families, "spreadwatch_decision_to_order_seconds_sum") == pytest.approx(0.003)
    assert (
        _value(
            families, "spreadwatch_actor_restarts_total", supervisor="engine", child="quote_stream"
        )
        == 1
    )
    assert _value(families, "spreadwatch_audit_queue_depth") == 1
    assert _value(families, "spreadwatch_audit_accepted_total") == 1
    assert _value(families, "spreadwatch_audit_journal_records") == 0
    assert _value(families, "spreadwatch_positions_read_age_seconds") == pytest.approx(4.0)
    # Not observed yet: no watcher pool, no orders sampled from a database.
    assert "spreadwatch_watchers" not in families and "spreadwatch_orders" not in families


async def test_engines_in_one_process_never_share_a_number() -> None:
    first, second = EngineMetrics(), EngineMetrics()
    first.exit_decided("profit_target", 0.001)
    rendered = _families(second.render())
    assert rendered["spreadwatch_decisions"].samples == []
    assert _value(_families(first.render()), "spreadwatch_tick_to_decision_seconds_count") == 1
