"""PortfolioMirror: the broker-position mirror, and what it means for our trades.

On start, on a timer (``engine.positions_refresh_seconds``) and on demand (a
:class:`~engine.messages.RefreshPositions` in the inbox, sent by the order router after every
fill; requests that pile up while a refresh runs are served by one refresh), it:

1. loads the account's open trades from the store, **then** reads the broker's positions (in
   this order: a trade is written before its order is sent, so a position can never be newer
   than the trades that explain it, and a fresh fill is never mistaken for an import);
2. calls :func:`engine.domain.reconcile.reconcile` (all decisions live there: phantoms,
   out-of-sync, attribution per trade, adoption; its docstring has the decision table);
3. performs the actions: the store writes (the mirror in one transaction), the spread lifecycle
   to the WatcherPool (``outbox``), engine events to the audit sink, and the logs.

A failed positions read (``BrokerUnavailable``, ``RateLimited``, ``BrokerAnswerInvalid``, or no
answer within ``positions_timeout``) is logged and handed to reconcile as "not believed"; it
never crashes the actor. ``AuthFailed`` propagates (fatal). A store error crashes the actor: the
supervisor restarts it, and a restart is a cold start (open trades re-announced; the pool ignores
trades it already watches).

``task_status.started()`` is called before the first refresh: the WatcherPool is started after
this actor and must be running to receive the first announcements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, assert_never

import trio

from engine.brokers import BrokerPosition, PositionSource
from engine.clock import MarketClock, SystemMarketClock
from engine.domain.reconcile import (
    Action,
    AdoptSpread,
    AnswerNotBelieved,
    ChangeQuantity,
    DeclarePhantom,
    ForgetTrade,
    IgnoreSpread,
    MarkBackInSync,
    MarkMissing,
    MarkOutOfSync,
    MirrorState,
    OpenTrade,
    PositionRow,
    ReconcileConfig,
    ReplaceMirror,
    WatchTrade,
    reconcile,
    watching,
)
from engine.domain.spread import Spread
from engine.errors import BrokerAnswerInvalid, BrokerUnavailable, RateLimited
from engine.log import Logger, get_logger
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
    TradeSnapshot,
)
from storage.trades import StoredTrade

__all__ = ["ACTOR", "EventSink", "MirrorConfig", "TradeStore", "run"]

ACTOR = "portfolio_mirror"


class TradeStore(Protocol):
    """What the mirror (and the PositionWatchers, for ``save_watch_state``) need from storage.
    ``storage.trades.PgTradeStore`` is the real one; ``tests/fakes/trade_store.py`` the fake."""

    async def load_open_trades(self, account_id: str) -> list[OpenTrade]: ...

    async def get_trade(self, trade_id: int) -> StoredTrade | None: ...

    async def insert_trade(
        self,
        *,
        account_id: str,
        spread: Spread,
        entry_price: Decimal,
        origin: TradeOrigin,
        managed: bool,
        opened_at: dt.datetime | None = None,
        exit_plan: dict[str, Any] | None = None,
    ) -> TradeSnapshot: ...

    async def update_trade_quantity(self, trade_id: int, quantity: int) -> bool: ...

    async def close_phantom(self, trade_id: int, *, at: dt.datetime) -> bool: ...

    async def save_watch_state(
        self,
        trade_id: int,
        high_water_mark: Decimal | None,
        fired_tiers: Sequence[int],
        entry_iv: Decimal | None,
    ) -> None: ...

    async def replace_positions(self, account_id: str, rows: Sequence[PositionRow]) -> None: ...


class MirrorConfig(ReconcileConfig, Protocol):
    """The settings the mirror reads (``engine.config.EngineConfig`` fits)."""

    @property
    def positions_refresh_seconds(self) -> float: ...


class EventSink(Protocol):
    """Where engine events go (``actors.audit_writer.AuditSink`` fits): never blocks."""

    def submit(self, record: EngineEventRecord) -> None: ...


async def run(
    *,
    broker: PositionSource,
    store: TradeStore,
    outbox: trio.MemorySendChannel[SpreadLifecycle],
    inbox: trio.MemoryReceiveChannel[RefreshPositions],
    audit: EventSink,
    account_id: str,
    config: MirrorConfig,
    clock: MarketClock | None = None,
    positions_timeout: float = 30.0,
    on_positions_read: Callable[[float], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mirror ``account_id`` until cancelled. ``config`` is ``engine.config.EngineConfig``;
    ``clock`` stamps the ``at`` of messages and records (the wall clock by default);
    ``on_positions_read(trio_time)`` hears of every successful positions read (readiness)."""
    mirror = _Mirror(
        broker=broker,
        store=store,
        outbox=outbox,
        audit=audit,
        account_id=account_id,
        config=config,
        clock=clock or SystemMarketClock(),
        positions_timeout=positions_timeout,
    )
    mirror.on_positions_read = on_positions_read
    with outbox, inbox:
        task_status.started()
        reasons = ["start"]
        while True:
            await mirror.refresh(reasons)
            deadline = trio.current_time() + config.positions_refresh_seconds
            reasons = await _next_request(inbox, deadline)


async def _next_request(
    inbox: trio.MemoryReceiveChannel[RefreshPositions], deadline: float
) -> list[str]:
    """Wait for a refresh request or the deadline; the reasons of every request waiting."""
    with trio.move_on_at(deadline):
        try:
            first = await inbox.receive()
        except trio.EndOfChannel:
            await trio.sleep_until(deadline)  # nobody asks any more: the timer goes on
        else:
            reasons = [first.reason]
            while True:
                try:
                    reasons.append(inbox.receive_nowait().reason)
                except (trio.WouldBlock, trio.EndOfChannel):
                    return reasons
    return ["timer"]


class _Mirror:
    """The state one incarnation of the actor owns, and how each action is performed."""

    def __init__(
        self,
        *,
        broker: PositionSource,
        store: TradeStore,
        outbox: trio.MemorySendChannel[SpreadLifecycle],
        audit: EventSink,
        account_id: str,
        config: ReconcileConfig,
        clock: MarketClock,
        positions_timeout: float,
    ) -> None:
        self.broker = broker
        self.store = store
        self.outbox = outbox
        self.audit = audit
        self.account_id = account_id
        self.config = config
        self.clock = clock
        self.positions_timeout = positions_timeout
        self.state = MirrorState()
        self.log: Logger = get_logger(ACTOR).bind(account_id=account_id)
        self.on_positions_read: Callable[[float], None] | None = None

    async def refresh(self, reasons: list[str]) -> None:
        trades = await self.store.load_open_trades(self.account_id)
        positions = await self._read_positions()
        if positions is not None and self.on_positions_read is not None:
            self.on_positions_read(trio.current_time())
        self.state, actions = reconcile(positions, trades, self.state, self.config)
        at = self.clock.now()
        for action in actions:
            await self._perform(action, at)
        self.log.info(
            "portfolio_mirror.refreshed",
            reasons=reasons,
            positions=None if positions is None else len(positions),
            open_trades=len(trades),
            watched=len(self.state.watched),
            out_of_sync=len(self.state.out_of_sync),
            actions=len(actions),
        )

    async def _read_positions(self) -> list[BrokerPosition] | None:
        try:
            with trio.fail_after(self.positions_timeout):
                return list(await self.broker.get_positions())
        except (BrokerUnavailable, RateLimited, BrokerAnswerInvalid, trio.TooSlowError) as exc:
            self.log.warning(
                "portfolio_mirror.positions_failed",
                error_type=type(exc).__name__,
                error=str(exc) or f"no answer within {self.positions_timeout:g} s",
            )
            return None

    def _event(self, kind: str, at: dt.datetime, **fields: Any) -> None:
        self.audit.submit(EngineEventRecord(kind=f"{ACTOR}.{kind}", actor=ACTOR, at=at, **fields))

    async def _perform(self, action: Action, at: dt.datetime) -> None:
        match action:
            case ReplaceMirror(rows=rows):
                await self.store.replace_positions(self.account_id, rows)
            case AnswerNotBelieved():
                self._not_believed(action, at)
            case WatchTrade(trade=trade):
                await self.outbox.send(SpreadOpened(trade=trade))
                self.log.info("portfolio_mirror.watching", trade_id=trade.trade_id)
            case ChangeQuantity():
                await self._change_quantity(action, at)
            case MarkMissing():
                self._missing(action, at)
            case DeclarePhantom():
                await self._phantom(action, at)
            case MarkOutOfSync():
                await self._out_of_sync(action, at)
            case MarkBackInSync(trade_id=trade_id, notify=notify):
                self.log.info("portfolio_mirror.back_in_sync", trade_id=trade_id)
                self._event("back_in_sync", at, trade_id=trade_id, action_taken="exits allowed")
                if notify:
                    await self.outbox.send(SpreadBackInSync(trade_id=trade_id, at=at))
            case ForgetTrade():
                await self._forget(action, at)
            case AdoptSpread():
                await self._adopt(action, at)
            case IgnoreSpread(spread=spread):
                self.log.info(
                    "portfolio_mirror.ignored",
                    symbols=list(spread.symbols),
                    strategy=spread.strategy,
                    quantity=spread.quantity,
                )
            case _:
                assert_never(action)

    def _not_believed(self, action: AnswerNotBelieved, at: dt.datetime) -> None:
        self.log.warning(
            "portfolio_mirror.answer_not_believed",
            reason=action.reason,
            open_trades=action.open_trades,
        )
        self._event(
            "answer_not_believed",
            at,
            level="WARNING",
            message=f"positions answer {action.reason} with {action.open_trades} trades open",
            action_taken="mirror kept; counted toward phantom confirmations"
            if action.reason == "empty"
            else "mirror kept; nothing counted",
            detail={"reason": action.reason, "open_trades": action.open_trades},
        )

    async def _change_quantity(self, action: ChangeQuantity, at: dt.datetime) -> None:
        if not await self.store.update_trade_quantity(action.trade_id, action.quantity):
            return  # closed meanwhile; the next refresh forgets it
        self.log.info(
            "portfolio_mirror.quantity_changed",
            trade_id=action.trade_id,
            quantity=action.quantity,
            previous_quantity=action.previous_quantity,
        )
        self._event(
            "quantity_changed",
            at,
            trade_id=action.trade_id,
            action_taken=f"quantity set to {action.quantity}",
            detail={"quantity": action.quantity, "previous_quantity": action.previous_quantity},
        )
        if action.notify:
            await self.outbox.send(
                SpreadQuantityChanged(
                    trade_id=action.trade_id,
                    quantity=action.quantity,
                    previous_quantity=action.previous_quantity,
                    legs=action.legs,
                    at=at,
                )
            )

    def _missing(self, action: MarkMissing, at: dt.datetime) -> None:
        fields = {
            "trade_id": action.trade_id,
            "confirmations": action.confirmations,
            "required": action.required,
            "exit_in_flight": action.exit_in_flight,
        }
        self.log.warning("portfolio_mirror.legs_missing", **fields)
        self._event(
            "legs_missing",
            at,
            level="WARNING",
            trade_id=action.trade_id,
            action_taken="waiting for the exit order"
            if action.exit_in_flight
            else f"confirmation {action.confirmations} of {action.required}",
            detail=fields,
        )

    async def _phantom(self, action: DeclarePhantom, at: dt.datetime) -> None:
        if not await self.store.close_phantom(action.trade_id, at=at):
            # An exit order started (or the trade moved on) since the trades were loaded: the
            # store refused. Keep treating it as watched; the next refresh decides again.
            self.log.warning("portfolio_mirror.phantom_deferred", trade_id=action.trade_id)
            if action.notify:
                self.state = watching(self.state, action.trade_id)
            return
        self.log.error(
            "portfolio_mirror.phantom",
            trade_id=action.trade_id,
            confirmations=action.confirmations,
            symbols=list(action.symbols),
        )
        self._event(
            "phantom",
            at,
            level="ERROR",
            trade_id=action.trade_id,
            message=f"every leg gone for {action.confirmations} consecutive answers",
            action_taken="closed as PHANTOM; realized P&L left null",
            detail={"confirmations": action.confirmations, "symbols": list(action.symbols)},
        )
        if action.notify:
            await self.outbox.send(
                SpreadClosed(
                    trade_id=action.trade_id,
                    reason=CloseReason.PHANTOM,
                    realized_pnl_dollars=None,
                    at=at,
                )
            )

    async def _out_of_sync(self, action: MarkOutOfSync, at: dt.datetime) -> None:
        missing = sorted(action.missing_symbols)
        self.log.warning("portfolio_mirror.out_of_sync", trade_id=action.trade_id, missing=missing)
        self._event(
            "out_of_sync",
            at,
            level="WARNING",
            trade_id=action.trade_id,
            message="some legs gone at the broker, others still held",
            action_taken="left OPEN; exits held until back in sync",
            detail={"missing_symbols": missing},
        )
        if action.notify:
            await self.outbox.send(
                SpreadOutOfSync(
                    trade_id=action.trade_id, missing_symbols=action.missing_symbols, at=at
                )
            )

    async def _forget(self, action: ForgetTrade, at: dt.datetime) -> None:
        stored = await self.store.get_trade(action.trade_id)
        reason = CloseReason.EXTERNAL
        pnl: Decimal | None = None
        if stored is not None and stored.close_reason is not None:
            reason, pnl = stored.close_reason, stored.realized_pnl
        self.log.info("portfolio_mirror.closed_elsewhere", trade_id=action.trade_id, reason=reason)
        if action.notify:
            closed_at = stored.closed_at if stored is not None and stored.closed_at else at
            await self.outbox.send(
                SpreadClosed(
                    trade_id=action.trade_id,
                    reason=reason,
                    realized_pnl_dollars=pnl,
                    at=closed_at,
                )
            )

    async def _adopt(self, action: AdoptSpread, at: dt.datetime) -> None:
        spread = action.spread
        trade = await self.store.insert_trade(
            account_id=self.account_id,
            spread=spread,
            entry_price=action.entry_price,
            origin=TradeOrigin.IMPORTED,
            managed=action.managed,
            opened_at=action.opened_at,
        )
        fields = {
            "strategy": spread.strategy.value,
            "quantity": spread.quantity,
            "entry_price": action.entry_price,
            "cost_basis": action.cost_basis,
            "managed": action.managed,
            "entry_price_suspect": action.entry_price_suspect,
            "symbols": list(spread.symbols),
        }
        log = self.log.warning if action.entry_price_suspect else self.log.info
        log("portfolio_mirror.adopted", trade_id=trade.trade_id, **fields)
        self._event(
            "adopted",
            at,
            trade_id=trade.trade_id,
            action_taken="adopted as IMPORTED, " + ("managed" if trade.managed else "unmanaged"),
            detail=fields,
        )
        if trade.managed:
            await self.outbox.send(SpreadOpened(trade=trade))
            self.state = watching(self.state, trade.trade_id)
