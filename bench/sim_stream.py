"""How many quote events per second the simulator's market stream delivers to one connection.

Not a test: a measurement. The simulator runs in a child process (so client and server each get
a core), the client subscribes to every option of a wide chain with ``linebreak: true`` and
``filter: ["quote"]``, decodes every event and counts quotes for a fixed real-time window.

    .venv/bin/python -m bench.sim_stream [--size full|tiny]   (10 s or 1 s)

Prints events/s and writes ``bench/results/sim_stream.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from typing import Any

import httpx
import msgspec
import trio
from trio_websocket import open_websocket_url

from bench import standalone

__all__ = ["BENCH_SCENARIO", "SIZES", "main", "measure", "run"]

# A volatile underlying moving every tick, 4 expirations x 301 strikes x 2 rights = 2408 options,
# 50 model ticks per second, no per-symbol rate cap.
BENCH_SCENARIO = """
name = "bench-sim-stream"
start = 2025-12-09T10:00:00
speed = 60.0
duration = "6h"
seed = 1

[market]
tick_interval_ms = 20
quote_interval_ms = 0

[broker]
rate_limits = "off"

[[underlyings]]
symbol = "SPY"
volatility = 0.6
expirations = [2025-12-12, 2025-12-19, 2025-12-26, 2026-01-16]
strikes = { low = 530, high = 830, step = 1 }
path = { kind = "random_walk", start = 680.0, step = "1s" }
"""



class _Quote(msgspec.Struct):
    type: str
    symbol: str
    bid: float
    ask: float
    biddate: str


def _serve(port_queue: Any) -> None:
    from sim.scenario import parse_scenario
    from sim.server import serve_simulator

    async def run() -> None:
        scenario = parse_scenario(BENCH_SCENARIO, source="bench")
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_simulator, scenario)
            port_queue.put((handle.base_url, handle.token))

    trio.run(run)


async def measure(base_url: str, token: str, seconds: float, warmup: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=f"{base_url}/v1", headers=headers) as client:
        chain: list[str] = []
        for expiration in ("2025-12-12", "2025-12-19", "2025-12-26", "2026-01-16"):
            answer = await client.get("/markets/options/chains",
                                      params={"symbol": "SPY", "expiration": expiration})
            chain += [o["symbol"] for o in answer.json()["options"]["option"]]
        session = (await client.post("/markets/events/session")).json()["stream"]["sessionid"]
    decoder = msgspec.json.Decoder(_Quote)
    ws_url = "ws" + base_url[4:] + "/v1/markets/events"
    quotes = frames = 0
    async with open_websocket_url(ws_url, max_message_size=1 << 24) as ws:
        await ws.send_message(json.dumps({"symbols": chain, "sessionid": session,
                                          "filter": ["quote"], "linebreak": True}))
        deadline = trio.current_time() + warmup
        while trio.current_time() < deadline:
            await ws.get_message()
        started = time.perf_counter()
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            message = await ws.get_message()
            frames += 1
            for line in message.splitlines():
                if decoder.decode(line).type == "quote":
                    quotes += 1
        elapsed = time.perf_counter() - started
    return {
        "benchmark": "sim_stream",
        "symbols_subscribed": len(chain),
        "seconds": round(elapsed, 3),
        "quote_events": quotes,
        "frames": frames,
        "events_per_second": round(quotes / elapsed),
        "events_per_frame": round(quotes / max(frames, 1), 1),
        "target_events_per_second": 50_000,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }


SIZES = {"full": (10.0, 2.0), "tiny": (1.0, 0.5)}  # (seconds measured, warm-up seconds)


def run(*, size: str = "full", seed: int = 1) -> dict[str, Any]:
    """Serve the bench scenario in a child process and measure ``size``'s window (``seed`` is
    the scenario's own; the runner's uniform signature)."""
    seconds, warmup = SIZES[size]
    queue: Any = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(queue,),
                                                          daemon=True)
    server.start()
    try:
        base_url, token = queue.get(timeout=30)
        result: dict[str, Any] = trio.run(measure, base_url, token, seconds, warmup)
    finally:
        server.terminate()
        server.join(5)
    return result


def _report(result: dict[str, Any]) -> list[str]:
    return [
        f"sim_stream: {result['events_per_second']} quote events/s to one connection "
        f"({result['quote_events']} in {result['seconds']} s, "
        f"{result['events_per_frame']} per frame, {result['symbols_subscribed']} symbols)"
    ]


def main() -> None:
    standalone.main("sim_stream", __doc__, run, _report)


if __name__ == "__main__":
    main()
