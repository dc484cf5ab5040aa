"""The simulator's parts wired together, and the tick loop that drives them."""

from __future__ import annotations

import datetime as dt
from collections import deque

import msgspec
import trio

from sim.broker import Broker, Order, OrderLeg
from sim.clock import SimClock
from sim.faults import Faults
from sim.market import Market
from sim.scenario import Scenario
from sim.streams import AccountHub, MarketHub, SessionStore
from sim.wire import account_event, encode_text

__all__ = ["OrderReceipt", "Simulator"]

HEARTBEAT_INTERVAL = 60.0  # real seconds, as Tradier's account stream
_RECEIPTS_KEPT = 10_000


class OrderReceipt(msgspec.Struct, frozen=True):
    """An order request as it reached the simulator: ``received_ns`` is
    ``time.perf_counter_ns()`` in this process when the handler began (benchmarks compare it
    with ``MarketHub.emitted_ns``, the same clock)."""

    received_ns: int
    tag: str | None
    symbols: tuple[str, ...]


class Simulator:
    """Owns one of each part. Everything mutable is changed from the one trio thread, either
    by the tick loop or by a request handler between two awaits."""

    def __init__(self, scenario: Scenario, *, heartbeat_interval: float = HEARTBEAT_INTERVAL):
        self.scenario = scenario
        self.clock = SimClock(scenario.start_time, scenario.speed)
        self.market = Market(scenario, self.clock)
        self.sessions = SessionStore()
        self.market_hub = MarketHub(self.market, self.sessions)
        self.market.feed = self.market_hub
        self.account_hub = AccountHub(self.sessions, scenario.account_id, heartbeat_interval,
                                      self.clock_iso)
        self.broker = Broker(scenario, self.market)
        self.broker.on_event = self._order_event
        self.faults = Faults(scenario, self.market, self.broker, self.market_hub,
                             self.account_hub)
        # Placement requests, newest last (bounded: a long session keeps the latest).
        self.order_receipts: deque[OrderReceipt] = deque(maxlen=_RECEIPTS_KEPT)

    def clock_iso(self) -> str:
        """Market time as ``2025-12-09T18:03:51.029067000Z`` (heartbeat style, nanoseconds)."""
        now = self.clock.now().astimezone(dt.UTC)
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"

    def _order_event(self, order: Order, leg: OrderLeg | None) -> None:
        event = account_event(order, leg, self.scenario.account_id)
        self.account_hub.publish(encode_text(event), self.market.offset)

    def tick(self) -> None:
        self.market.advance()
        self.faults.on_tick()
        self.broker.on_tick()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The model's heartbeat: one tick every ``tick_interval_ms`` of real time."""
        interval = self.scenario.market.tick_interval_ms / 1000
        self.tick()
        task_status.started()
        next_tick = trio.current_time()
        while True:
            next_tick += interval
            await trio.sleep_until(next_tick)
            self.tick()
            # After a stall, do not try to catch up tick by tick: the paths are functions of
            # time, so one tick now shows the market as it is now.
            next_tick = max(next_tick, trio.current_time() - interval)
