"""System tests of the engine's HTTP endpoint (issue 7, "Must show"): ``/healthz``, ``/readyz``
and ``/metrics`` of a running engine trading against the simulator, over real sockets on the
real clock; readiness flips when the simulator cuts the market feed and recovers when it
returns, and when the halt switch is thrown.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

import httpx
import msgspec
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from engine.app import run_engine
from engine.errors import ConfigError
from sim.scenario import DropMarketSocket, HttpErrors
from storage.control import set_halted
from tests.system.live import Live, live_engine, load, wait_for

pytestmark = pytest.mark.system

BUDGET = 120.0  # real seconds per test, start-up included: generous, the machine is shared


def _client(live: Live) -> httpx.AsyncClient:
    assert live.engine.http_port, "the live harness serves the endpoint on a free port"
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{live.engine.http_port}", timeout=5.0)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _readiness(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    answer = await client.get("/readyz")
    return answer.status_code, answer.json()


async def test_health_readiness_and_metrics_while_a_stop_is_traded() -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_stop.toml")) as live, _client(live) as client:
            (trade_id,) = live.trade_ids

            async def ready() -> bool:
                return (await _readiness(client))[0] == 200

            await wait_for(ready, timeout=30, what="/readyz to answer 200")
            status, body = await _readiness(client)
            health = await client.get("/healthz")

            async def closed() -> bool:
                return (await live.trade(trade_id))["status"] == "CLOSED"

            await wait_for(closed, timeout=60, what="the stop's exit to fill")
            scraped = await client.get("/metrics")
            missing = await client.get("/nothing")

    assert status == 200 and body["ready"] is True and body["failing"] == []
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "database",
        "feed",
        "positions",
        "halted",
    }
    assert body["checks"]["feed"]["detail"].startswith("connected, newest quote")
    assert health.status_code == 200 and health.json()["alive"] is True
    assert set(health.json()["children"]) >= {"quote_stream", "tracking", "order_router", "http"}
    assert set(health.json()["children"].values()) == {"running"}
    assert missing.status_code == 404

    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(scraped.text)}
    assert families >= {
        "spreadwatch_quote_events",
        "spreadwatch_quotes_conflated",
        "spreadwatch_watchers",
        "spreadwatch_decisions",
        "spreadwatch_orders",
        "spreadwatch_tick_to_decision_seconds",
        "spreadwatch_decision_to_order_seconds",
        "spreadwatch_feed_reconnects",
        "spreadwatch_actor_restarts",
        "spreadwatch_audit_queue_depth",
        "spreadwatch_audit_journal_bytes",
    }
    samples = _samples(scraped.text)
    assert samples[("spreadwatch_quote_events_total", (("kind", "quote"),))] > 0
    exits = samples[("spreadwatch_decisions_total", (("decision", "exit"), ("rule", "stop_loss")))]
    assert exits >= 1
    # Every exit decision timed from its tick; the one order timed from its decision to the send.
    assert samples[("spreadwatch_tick_to_decision_seconds_count", ())] == exits
    assert samples[("spreadwatch_decision_to_order_seconds_count", ())] == 1
    assert samples[("spreadwatch_orders", (("status", "FILLED"),))] == 1
    # The filled trade's watcher has stopped: none left running.
    assert samples[("spreadwatch_watchers", ())] == 0
    assert samples[("spreadwatch_watchers_started_total", ())] == 1


async def test_readiness_follows_the_feed_and_the_halt_switch() -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_http.toml")) as live, _client(live) as client:

            async def readiness_is(status: int, failing: list[str]) -> bool:
                code, body = await _readiness(client)
                return code == status and body["failing"] == failing

            await wait_for(lambda: readiness_is(200, []), timeout=30, what="/readyz to answer 200")
            # Cut the feed: drop the market socket and refuse the next few stream sessions, so
            # the engine's reconnects fail for a few seconds (its backoff doubles each time).
            live.sim.faults.inject(
                HttpErrors(path="/v1/markets/events/session", status=500, count=4)
            )
            live.sim.faults.inject(DropMarketSocket())
            await wait_for(
                lambda: readiness_is(503, ["feed"]), timeout=10, what="/readyz 503 for the feed"
            )
            _, cut = await _readiness(client)
            await wait_for(
                lambda: readiness_is(200, []), timeout=45, what="/readyz 200 once the feed is back"
            )
            reconnected = _samples((await client.get("/metrics")).text)

            account = live.config.broker.account_id
            assert account is not None
            await set_halted(live.db, account, True, "test: halt", changed_by="test")
            await wait_for(
                lambda: readiness_is(503, ["halted"]), timeout=5, what="/readyz 503 when halted"
            )
            _, halted = await _readiness(client)
            await set_halted(live.db, account, False, "test: resume", changed_by="test")
            await wait_for(lambda: readiness_is(200, []), timeout=5, what="/readyz 200 resumed")
            health = await client.get("/healthz")

    assert cut["ready"] is False
    assert not cut["checks"]["feed"]["ok"]
    assert cut["checks"]["feed"]["detail"].startswith("disconnected")
    assert all(cut["checks"][name]["ok"] for name in ("database", "positions", "halted"))
    assert reconnected[("spreadwatch_feed_reconnects_total", ())] >= 4
    assert reconnected[("spreadwatch_feed_state", (("state", "connected"),))] == 1
    assert halted["checks"]["halted"] == {"ok": False, "detail": "halted: test: halt"}
    # A cut feed is not a dead process: liveness never flipped.
    assert health.status_code == 200


async def test_a_second_engine_on_a_taken_port_fails_with_one_line() -> None:
    with trio.fail_after(BUDGET):
        async with live_engine(load("live_http.toml")) as live:
            port = live.engine.http_port
            assert port is not None
            with tempfile.TemporaryDirectory(prefix="spreadwatch-port-") as tmp:
                config = msgspec.structs.replace(
                    live.config,
                    http=msgspec.structs.replace(live.config.http, host="127.0.0.1", port=port),
                    database=msgspec.structs.replace(
                        live.config.database, data_dir=pathlib.Path(tmp) / "pgdata"
                    ),
                )
                with pytest.raises(ConfigError) as caught:
                    await run_engine(config, db=live.db)
            # The first engine still answers.
            async with _client(live) as client:
                alive = await client.get("/healthz")

    assert str(caught.value).startswith(f"http: port {port} on 127.0.0.1 is in use: set ")
    assert "SPREADWATCH_HTTP__PORT" in str(caught.value)
    assert alive.status_code == 200
