"""PortfolioMirror through its channels, under the autojump clock, with the in-memory trade
store and a scripted broker (the broker boundary: answers given in order, the last repeated)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from decimal import Decimal

import pytest
import trio
import trio.testing

from actors import portfolio_mirror
from engine.brokers import BrokerPosition
from engine.clock import TrioMarketClock
from engine.config import EngineConfig
from engine.domain.spread import Leg, Spread
from engine.errors import AuthFailed, BrokerAnswerInvalid, BrokerUnavailable, RateLimited
from engine.messages import (
    CloseReason,
    EngineEventRecord,
    RefreshPositions,
    SpreadBackInSync,
    SpreadClosed,
    SpreadLifecycle,
    SpreadOpened,
    SpreadOutOfSync,
    SpreadQuantityChanged,
    TradeOrigin,
)
from tests.fakes.trade_store import InMemoryTradeStore

SP500 = "SPY240621P00500000"
LP495 = "SPY240621P00495000"
SC520 = "SPY240621C00520000"
LC525 = "SPY240621C00525000"
START = dt.datetime(2024, 6, 10, 14, 0, tzinfo=dt.UTC)
BUDGET = 600  # virtual seconds: enough for any test here, fails a hang quickly under autojump

Answer = list[BrokerPosition] | Exception


def pos(symbol: str, quantity: int, cost: str = "0") -> BrokerPosition:
    return BrokerPosition(symbol=symbol, quantity=quantity, cost_basis=Decimal(cost))


HELD = [pos(SP500, -2, "-290"), pos(LP495, 2, "200")]
PARTIAL = [pos(SP500, -1, "-145"), pos(LP495, 1, "100")]
SHORT_ONLY = [pos(SP500, -2, "-290")]
NULL: list[BrokerPosition] = []


class ScriptedPositions:
    """A PositionSource answering from a script; the last answer repeats."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.calls = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def get_positions(self) -> list[BrokerPosition]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        self._lot.unpark_all()
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    async def called(self, times: int) -> None:
        """Wait until the broker was asked ``times`` times."""
        while self.calls < times:
            await self._lot.park()


class HangingPositions:
    async def get_positions(self) -> list[BrokerPosition]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@dataclasses.dataclass
class RecordingSink:
    records: list[EngineEventRecord] = dataclasses.field(default_factory=list)

    def submit(self, record: EngineEventRecord) -> None:
        self.records.append(record)

    def kinds(self) -> list[str]:
        return [r.kind.removeprefix("portfolio_mirror.") for r in self.records]


@dataclasses.dataclass
class Mirror:
    lifecycle: trio.MemoryReceiveChannel[SpreadLifecycle]
    requests: trio.MemorySendChannel[RefreshPositions]
    sink: RecordingSink

    async def next(self) -> tuple[float, SpreadLifecycle]:
        message = await self.lifecycle.receive()
        return trio.current_time(), message

    def nothing_pending(self) -> bool:
        try:
            self.lifecycle.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


async def start(
    nursery: trio.Nursery,
    broker: object,
    store: InMemoryTradeStore,
    *,
    refresh: float = 30.0,
    confirmations: int = 3,
    adopt: str = "managed",
) -> Mirror:
    # Buffered outbox so an unexpected message never blocks the actor and shows in
    # nothing_pending() instead; the real wiring is unbuffered.
    send_life, receive_life = trio.open_memory_channel[SpreadLifecycle](100)
    send_req, receive_req = trio.open_memory_channel[RefreshPositions](10)
    sink = RecordingSink()
    config = EngineConfig(
        positions_refresh_seconds=refresh,
        phantom_confirmations=confirmations,
        adopt_imported=adopt,  # type: ignore[arg-type]
    )
    await nursery.start(
        functools.partial(
            portfolio_mirror.run,
            broker=broker,  # type: ignore[arg-type]
            store=store,
            outbox=send_life,
            inbox=receive_req,
            audit=sink,
            account_id="VA1",
            config=config,
            clock=TrioMarketClock(START),
        )
    )
    return Mirror(receive_life, send_req, sink)


def spread(legs: dict[str, int]) -> Spread:
    return Spread.from_legs([Leg.from_position(s, q) for s, q in legs.items()])


async def seed(
    store: InMemoryTradeStore, legs: dict[str, int] | None = None, *, managed: bool = True
) -> int:
    snapshot = await store.insert_trade(
        account_id="VA1",
        spread=spread(legs or {SP500: -2, LP495: 2}),
        entry_price=Decimal("0.45"),
        origin=TradeOrigin.ENGINE,
        managed=managed,
    )
    return snapshot.trade_id


# ---------------------------------------------------------------------------------------------
# Phantoms
# ---------------------------------------------------------------------------------------------


async def test_phantom_declared_only_after_the_confirmations(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(HELD, NULL, NULL, NULL)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=30, confirmations=3)
            at, opened = await mirror.next()
            assert at == 0 and isinstance(opened, SpreadOpened)
            assert opened.trade.trade_id == trade_id
            # Two "null" answers (t=30, t=60) are not believed; the third (t=90) confirms.
            at, closed = await mirror.next()
            assert at == 90
            assert closed == SpreadClosed(
                trade_id=trade_id,
                reason=CloseReason.PHANTOM,
                realized_pnl_dollars=None,
                at=START + dt.timedelta(seconds=90),
            )
            assert broker.calls == 4
            nursery.cancel_scope.cancel()
    stored = await store.get_trade(trade_id)
    assert stored is not None
    assert (stored.status, stored.close_reason, stored.realized_pnl) == (
        "CLOSED",
        CloseReason.PHANTOM,
        None,
    )
    # The "null" answers never wiped the mirror: it still holds what the broker last showed.
    assert {r.symbol for r in await store.load_positions("VA1")} == {SP500, LP495}
    missing = [r for r in mirror.sink.records if r.kind == "portfolio_mirror.legs_missing"]
    assert [r.detail["confirmations"] for r in missing] == [1, 2]
    (phantom,) = [r for r in mirror.sink.records if r.kind == "portfolio_mirror.phantom"]
    assert phantom.trade_id == trade_id and phantom.level == "ERROR"
    assert mirror.sink.kinds().count("answer_not_believed") == 3


async def test_no_phantom_while_an_exit_is_in_flight(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    store.set_exit_in_flight(trade_id)
    broker = ScriptedPositions(HELD, [pos(SC520, -1), pos(LC525, 1)])
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, confirmations=2, adopt="ignore")
            _, opened = await mirror.next()
            assert isinstance(opened, SpreadOpened)
            await broker.called(8)  # seven refreshes after the start have completed
            assert mirror.nothing_pending()
            nursery.cancel_scope.cancel()
    stored = await store.get_trade(trade_id)
    assert stored is not None and stored.status == "OPEN" and stored.quantity == 2


# ---------------------------------------------------------------------------------------------
# Out of sync
# ---------------------------------------------------------------------------------------------


async def test_out_of_sync_is_left_open_until_back_in_sync(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(HELD, SHORT_ONLY, SHORT_ONLY, SHORT_ONLY, SHORT_ONLY, HELD)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, confirmations=2)
            await mirror.next()
            at, message = await mirror.next()
            assert at == 30
            assert message == SpreadOutOfSync(
                trade_id=trade_id,
                missing_symbols=frozenset({LP495}),
                at=START + dt.timedelta(seconds=30),
            )
            # Said once, never counted toward a phantom, however long it lasts.
            at, message = await mirror.next()
            assert at == 150
            assert message == SpreadBackInSync(
                trade_id=trade_id, at=START + dt.timedelta(seconds=150)
            )
            nursery.cancel_scope.cancel()
    stored = await store.get_trade(trade_id)
    assert stored is not None and (stored.status, stored.quantity) == ("OPEN", 2)
    kinds = mirror.sink.kinds()
    assert kinds.count("out_of_sync") == 1 and kinds.count("back_in_sync") == 1
    assert "phantom" not in kinds and "legs_missing" not in kinds
    (event,) = [r for r in mirror.sink.records if r.kind == "portfolio_mirror.out_of_sync"]
    assert event.detail == {"missing_symbols": [LP495]}
    assert event.action_taken == "left OPEN; exits held until back in sync"


# ---------------------------------------------------------------------------------------------
# When it refreshes: on demand, on the timer
# ---------------------------------------------------------------------------------------------


async def test_refresh_on_demand_reports_a_partial_exit_at_once(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(HELD, PARTIAL)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=3600)
            await mirror.next()
            await mirror.requests.send(RefreshPositions(reason="fill", trade_id=trade_id))
            at, message = await mirror.next()
            assert at == 0  # no timer involved
            assert isinstance(message, SpreadQuantityChanged)
            assert (message.trade_id, message.quantity, message.previous_quantity) == (
                trade_id,
                1,
                2,
            )
            assert {(leg.occ, leg.quantity) for leg in message.legs} == {(SP500, 1), (LP495, 1)}
            nursery.cancel_scope.cancel()
    stored = await store.get_trade(trade_id)
    assert stored is not None and stored.quantity == 1


async def test_requests_waiting_together_are_served_by_one_refresh(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    await seed(store)
    broker = ScriptedPositions(HELD)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=300)
            await mirror.next()
            for n in range(3):
                mirror.requests.send_nowait(RefreshPositions(reason=f"fill-{n}"))
            await broker.called(2)
            assert trio.current_time() == 0
            # The next read is the timer's: the three requests took one refresh.
            await broker.called(3)
            assert trio.current_time() == 300
            nursery.cancel_scope.cancel()


async def test_timer_refresh(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(HELD, HELD, PARTIAL)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=45)
            await mirror.next()
            at, message = await mirror.next()
            assert at == 90 and broker.calls == 3
            assert isinstance(message, SpreadQuantityChanged) and message.trade_id == trade_id
            nursery.cancel_scope.cancel()


async def test_timer_goes_on_when_nobody_asks_any_more(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    await seed(store)
    broker = ScriptedPositions(HELD)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=30)
            await mirror.requests.aclose()
            await broker.called(3)
            assert trio.current_time() == 60
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Failures of the broker
# ---------------------------------------------------------------------------------------------


async def test_failed_reads_are_logged_not_believed_and_not_fatal(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(
        HELD,
        BrokerUnavailable("502"),
        RateLimited("slow down"),
        BrokerAnswerInvalid("no positions key"),
        BrokerUnavailable("timeout"),
        HELD,
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, confirmations=1)
            await mirror.next()
            # The broker's sixth answer was just taken in (the actor runs until it blocks).
            await broker.called(6)
            assert mirror.nothing_pending()
            nursery.cancel_scope.cancel()
    stored = await store.get_trade(trade_id)
    assert stored is not None and stored.status == "OPEN"
    assert store.replace_calls == 2  # the two believed answers, nothing for the failures
    assert mirror.sink.kinds().count("answer_not_believed") == 4


async def test_a_broker_that_never_answers_counts_as_a_failed_read(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    await seed(store)
    send_life, receive_life = trio.open_memory_channel[SpreadLifecycle](10)
    _send_req, receive_req = trio.open_memory_channel[RefreshPositions](0)
    sink = RecordingSink()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(
                    portfolio_mirror.run,
                    broker=HangingPositions(),
                    store=store,
                    outbox=send_life,
                    inbox=receive_req,
                    audit=sink,
                    account_id="VA1",
                    config=EngineConfig(),
                    positions_timeout=5,
                )
            )
            # Not believed, so the database decides: the open trade is watched.
            message = await receive_life.receive()
            assert isinstance(message, SpreadOpened) and trio.current_time() == 5
            nursery.cancel_scope.cancel()
    assert sink.kinds() == ["answer_not_believed"]


async def test_auth_failure_is_fatal(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    send_life, _receive_life = trio.open_memory_channel[SpreadLifecycle](10)
    _send_req, receive_req = trio.open_memory_channel[RefreshPositions](0)
    with trio.fail_after(BUDGET), pytest.raises(AuthFailed):
        await portfolio_mirror.run(
            broker=ScriptedPositions(AuthFailed("bad token")),
            store=store,
            outbox=send_life,
            inbox=receive_req,
            audit=RecordingSink(),
            account_id="VA1",
            config=EngineConfig(),
        )


# ---------------------------------------------------------------------------------------------
# Cold start, adoption, trades closed elsewhere
# ---------------------------------------------------------------------------------------------


async def test_cold_start_announces_held_managed_trades(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    held = await seed(store)
    await seed(store, {SC520: -1, LC525: 1}, managed=False)  # held, unmanaged
    gone = await seed(store, {"SPY240621P00480000": -1, "SPY240621P00475000": 1})
    positions = [*HELD, pos(SC520, -1), pos(LC525, 1)]
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, ScriptedPositions(positions), store, refresh=3600)
            _, message = await mirror.next()
            assert isinstance(message, SpreadOpened) and message.trade.trade_id == held
            await trio.testing.wait_all_tasks_blocked()
            assert mirror.nothing_pending()
            nursery.cancel_scope.cancel()
    (missing,) = [r for r in mirror.sink.records if r.kind == "portfolio_mirror.legs_missing"]
    assert missing.trade_id == gone


async def test_adopted_spread_is_stored_and_announced_once(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    broker = ScriptedPositions(HELD)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=30)
            _, message = await mirror.next()
            assert isinstance(message, SpreadOpened)
            trade = message.trade
            assert trade.origin is TradeOrigin.IMPORTED and trade.managed
            assert (trade.quantity, trade.entry_price) == (2, Decimal("0.45"))
            await broker.called(4)
            assert mirror.nothing_pending()
            nursery.cancel_scope.cancel()
    assert [t.trade_id for t in await store.load_open_trades("VA1")] == [trade.trade_id]
    (adopted,) = [r for r in mirror.sink.records if r.kind == "portfolio_mirror.adopted"]
    assert adopted.trade_id == trade.trade_id
    assert adopted.detail["strategy"] == "bull_put_credit"


@pytest.mark.parametrize(("policy", "trades"), [("unmanaged", 1), ("ignore", 0)])
async def test_unmanaged_or_ignored_imports_are_not_announced(
    autojump_clock: object, policy: str, trades: int
) -> None:
    store = InMemoryTradeStore()
    broker = ScriptedPositions(HELD)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, adopt=policy)
            await broker.called(3)
            assert mirror.nothing_pending()
            nursery.cancel_scope.cancel()
    open_trades = await store.load_open_trades("VA1")
    assert len(open_trades) == trades
    assert all(not t.snapshot.managed for t in open_trades)
    assert len(await store.load_positions("VA1")) == 2


async def test_a_trade_closed_elsewhere_stops_its_watcher(autojump_clock: object) -> None:
    store = InMemoryTradeStore()
    trade_id = await seed(store)
    broker = ScriptedPositions(HELD, NULL)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            mirror = await start(nursery, broker, store, refresh=30)
            await mirror.next()
            closed_at = START + dt.timedelta(seconds=10)
            store.close(trade_id, CloseReason.STOP_LOSS, Decimal("-125.50"), closed_at)
            at, message = await mirror.next()
            assert at == 30
            assert message == SpreadClosed(
                trade_id=trade_id,
                reason=CloseReason.STOP_LOSS,
                realized_pnl_dollars=Decimal("-125.50"),
                at=closed_at,
            )
            nursery.cancel_scope.cancel()
    # With no trade open any more, the empty answer is believed: the mirror is emptied.
    assert await store.load_positions("VA1") == []
