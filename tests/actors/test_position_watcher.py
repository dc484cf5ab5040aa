"""PositionWatcher driven through its mailbox under the autojump clock.

Real parts: the conflating mailbox, the exit rules, the AuditSink and its writer. At the
database boundary: the in-memory trade and audit stores (tests/fakes).
"""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import trio
import trio.testing

from actors import audit_writer, position_watcher
from actors.audit_writer import AuditSink, AuditWriterConfig
from actors.position_watcher import WatcherSettings
from engine.clock import TrioMarketClock
from engine.conflate import ConflatingMailbox
from engine.domain.spread import Leg, Spread
from engine.messages import (
    Decision,
    DecisionRecord,
    ExitAction,
    ExitIntent,
    OrderRejected,
    Quote,
    SpreadBackInSync,
    SpreadClosed,
    SpreadOutOfSync,
    SpreadQuantityChanged,
    TradeOrigin,
    TradeSnapshot,
)
from tests.fakes.audit_store import FakeAuditStore
from tests.fakes.trade_store import InMemoryTradeStore

# 10:00 New York on a Friday, far from expiration: no time rule interferes.
START = dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)
SHORT, LONG = "SPY261218P00480000", "SPY261218P00475000"


class _Harness:
    def __init__(
        self,
        *,
        trade: TradeSnapshot,
        sink: AuditSink,
        audit: FakeAuditStore,
        store: InMemoryTradeStore,
        intents: trio.MemoryReceiveChannel[ExitIntent] | None,
    ):
        self.trade = trade
        self.sink = sink
        self.audit = audit
        self.store = store
        self.intents = intents
        self.mailbox: ConflatingMailbox[str, Any] = ConflatingMailbox()
        self._seq = 0

    def quote(self, symbol: str, bid: str, ask: str) -> None:
        self.mailbox.put(
            symbol,
            Quote(
                symbol=symbol, bid=Decimal(bid), ask=Decimal(ask), received_at=trio.current_time()
            ),
        )

    def spread_at(self, short_mid: str, *, underlying: str = "490.00") -> None:
        """Quote the put spread so that its close price is short_mid - 0.20 (long at 0.20)."""
        mid = Decimal(short_mid)
        self.quote(SHORT, str(mid - Decimal("0.05")), str(mid + Decimal("0.05")))
        self.quote(LONG, "0.15", "0.25")
        u = Decimal(underlying)
        self.quote("SPY", str(u - Decimal("0.01")), str(u + Decimal("0.01")))

    def event(self, event: object) -> None:
        self._seq += 1
        self.mailbox.put(f"#{self._seq}", event)

    def decisions(self) -> list[DecisionRecord]:
        return [r for r in self.audit.rows.values() if isinstance(r, DecisionRecord)]


@asynccontextmanager
async def _watching(
    tmp_path: pathlib.Path, *, dry_run: bool = False, exit_plan: dict[str, Any] | None = None
) -> AsyncIterator[_Harness]:
    store = InMemoryTradeStore(now=START)
    spread = Spread.from_legs(
        [Leg.from_position(SHORT, -2), Leg.from_position(LONG, 2)], underlying="SPY"
    )
    trade = await store.insert_trade(
        account_id="VA1",
        spread=spread,
        entry_price=Decimal("1.00"),
        origin=TradeOrigin.ENGINE,
        managed=True,
        opened_at=START,
        exit_plan=exit_plan,
    )
    audit = FakeAuditStore()
    config = AuditWriterConfig(fsync_in_thread=False, flush_interval=0.01)
    send, receive = trio.open_memory_channel[ExitIntent](10)
    with AuditSink(journal_path=tmp_path / "journal", config=config) as sink:
        harness = _Harness(
            trade=trade, sink=sink, audit=audit, store=store, intents=None if dry_run else receive
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: audit_writer.run(
                    sink=sink, store=audit, task_status=task_status
                )
            )
            await nursery.start(
                lambda task_status: position_watcher.run(
                    trade=trade,
                    mailbox=harness.mailbox,
                    intents=None if dry_run else send,
                    audit=sink,
                    store=store,
                    market_clock=TrioMarketClock(START),
                    settings=WatcherSettings(dry_run=dry_run, snapshot_interval=60, retry_after=30),
                    task_status=task_status,
                )
            )
            yield harness
            await trio.sleep(1)  # let the writer's flush interval pass
            nursery.cancel_scope.cancel()


async def test_profit_target_exits_on_the_first_tick_that_reaches_it(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path) as h:
        h.spread_at("0.75")  # close price 0.55: profit 0.45 of max 1.00 - hold
        await trio.testing.wait_all_tasks_blocked()
        assert h.intents is not None
        assert h.intents.statistics().current_buffer_used == 0
        h.spread_at("0.69")  # close price 0.49: profit 0.51 - exit
        intent = await h.intents.receive()
    assert intent.rule == "profit_target" and intent.action is ExitAction.FULL
    assert intent.quantity == 2 and intent.mark_close_price == Decimal("0.49")
    (exit_record,) = [d for d in h.decisions() if d.decision is Decision.EXIT]
    assert exit_record.decision_id == intent.decision_id
    assert exit_record.rule == "profit_target" and "profit_target" in exit_record.rules_fired
    assert [leg.symbol for leg in exit_record.legs] == sorted([SHORT, LONG])
    assert "inputs" in exit_record.thresholds  # replayable


async def test_stop_is_debounced_and_one_intent_stays_in_flight(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path) as h:
        assert h.intents is not None
        # Close price 2.20: loss 1.20 >= 100 % of the 1.00 credit: stop territory.
        for _ in range(2):
            h.spread_at("2.40")
            await trio.sleep(1.5)
        assert h.intents.statistics().current_buffer_used == 0  # 2 ticks: not yet
        h.spread_at("2.41")
        intent = await h.intents.receive()
        assert intent.rule == "stop_loss"
        for _ in range(5):  # the stop keeps firing, but an exit is in flight
            h.spread_at("2.50")
            await trio.sleep(1)
        assert h.intents.statistics().current_buffer_used == 0
        # The broker rejects it: the watcher waits retry_after (30 s), then decides again.
        h.event(
            OrderRejected(
                client_order_id="c1",
                broker_order_id=None,
                trade_id=h.trade.trade_id,
                reason="no",
                at=START,
            )
        )
        for _ in range(3):
            h.spread_at("2.50")
            await trio.sleep(1)
        assert h.intents.statistics().current_buffer_used == 0
        await trio.sleep(30)
        for _ in range(3):
            h.spread_at("2.51")
            await trio.sleep(1)
        again = await h.intents.receive()
    assert again.rule == "stop_loss" and again.intent_id != intent.intent_id


async def test_out_of_sync_spread_proposes_no_exit_until_back_in_sync(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path) as h:
        assert h.intents is not None
        h.event(
            SpreadOutOfSync(trade_id=h.trade.trade_id, missing_symbols=frozenset({LONG}), at=START)
        )
        h.spread_at("0.50")  # deep in profit target
        await trio.sleep(5)
        assert h.intents.statistics().current_buffer_used == 0
        h.event(SpreadBackInSync(trade_id=h.trade.trade_id, at=START))
        h.spread_at("0.50")
        intent = await h.intents.receive()
    assert intent.rule == "profit_target"


async def test_tier_fires_once_and_never_again_after_a_restart(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    plan = {"scale_out_tiers": [["0.30", "0.5"]], "profit_target": "0.90", "trailing_arm": None}
    async with _watching(tmp_path, exit_plan=plan) as h:
        assert h.intents is not None
        h.spread_at("0.85")  # profit 0.35 >= tier 0.30: close half the opening quantity
        intent = await h.intents.receive()
        assert intent.action is ExitAction.PARTIAL and intent.quantity == 1
        stored = await h.store.get_trade(h.trade.trade_id)
    assert stored is not None and 0 in stored.fired_tiers
    # A restarted watcher starts from the persisted state: the tier does not fire again.
    restarted = (await h.store.load_open_trades("VA1"))[0].snapshot
    assert restarted.fired_tiers == (0,)
    send, receive = trio.open_memory_channel[ExitIntent](10)
    mailbox: ConflatingMailbox[str, Any] = ConflatingMailbox()
    with AuditSink(
        journal_path=tmp_path / "j2", config=AuditWriterConfig(fsync_in_thread=False)
    ) as sink:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: position_watcher.run(
                    trade=restarted,
                    mailbox=mailbox,
                    intents=send,
                    audit=sink,
                    store=h.store,
                    market_clock=TrioMarketClock(START),
                    settings=WatcherSettings(),
                    task_status=task_status,
                )
            )
            for symbol, bid, ask in (
                (SHORT, "0.80", "0.90"),
                (LONG, "0.15", "0.25"),
                ("SPY", "490", "490.02"),
            ):
                mailbox.put(
                    symbol,
                    Quote(
                        symbol=symbol,
                        bid=Decimal(bid),
                        ask=Decimal(ask),
                        received_at=trio.current_time(),
                    ),
                )
            await trio.sleep(5)
            assert receive.statistics().current_buffer_used == 0
            mailbox.put(
                "#1",
                SpreadClosed(
                    trade_id=restarted.trade_id, reason="x", realized_pnl_dollars=None, at=START
                ),
            )


async def test_dry_run_records_the_exit_once_and_sends_nothing(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path, dry_run=True) as h:
        for _ in range(5):
            h.spread_at("0.60")
            await trio.sleep(1)
    exits = [d for d in h.decisions() if d.decision is Decision.EXIT]
    assert len(exits) == 1 and exits[0].dry_run and exits[0].rule == "profit_target"


async def test_guarded_exit_is_recorded_and_hold_snapshots_are_sampled(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path) as h:
        assert h.intents is not None
        h.quote(SHORT, "0.60", "0.40")  # crossed short leg, mid in profit-target land
        h.quote(LONG, "0.15", "0.25")
        h.quote("SPY", "490", "490.02")
        await trio.sleep(1)
        assert h.intents.statistics().current_buffer_used == 0
        for _ in range(150):  # 150 s of holding ticks: samples every 60 s, not every tick
            h.spread_at("0.80")
            await trio.sleep(1)
    guarded = [d for d in h.decisions() if d.decision is Decision.HELD_BY_GUARD]
    holds = [d for d in h.decisions() if d.decision is Decision.HOLD]
    assert len(guarded) == 1 and guarded[0].guard is not None and "crossed" in guarded[0].guard
    assert 2 <= len(holds) <= 3


async def test_a_record_carries_the_full_model_that_the_tick_skipped(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    # A losing credit spread with no underlying quote: no rule can read the volatility model
    # on these ticks, so the watcher skips it; its hold records still say why it is unknown.
    async with _watching(tmp_path) as h:
        for _ in range(70):
            h.quote(SHORT, "1.45", "1.55")  # close price 1.30: a loss of 0.30
            h.quote(LONG, "0.15", "0.25")
            await trio.sleep(1)
    holds = [d for d in h.decisions() if d.decision is Decision.HOLD]
    assert len(holds) == 2
    for hold in holds:
        assert hold.pnl == Decimal("-0.30")
        assert hold.thresholds["notes"] == ["underlying_missing"]


async def test_a_changed_quantity_is_what_the_next_exit_closes(
    autojump_clock: trio.abc.Clock, tmp_path: pathlib.Path
) -> None:
    async with _watching(tmp_path) as h:
        assert h.intents is not None
        legs = (Leg.from_position(SHORT, -1), Leg.from_position(LONG, 1))
        h.event(
            SpreadQuantityChanged(
                trade_id=h.trade.trade_id, quantity=1, previous_quantity=2, legs=legs, at=START
            )
        )
        h.spread_at("0.69")  # close price 0.49: profit 0.51 - exit
        intent = await h.intents.receive()
    assert intent.rule == "profit_target" and intent.quantity == 1
    (exit_record,) = [d for d in h.decisions() if d.decision is Decision.EXIT]
    assert exit_record.quantity == 1
    assert exit_record.thresholds["inputs"]["position"]["spread"]["quantity"] == 1
