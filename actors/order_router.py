"""OrderRouter: every exit order, from the watcher's intent to the fill that closes the trade.

The router owns the orders. For an :class:`~engine.messages.ExitIntent` it:

1. declines it (:class:`~engine.messages.ExitIntentDeclined`, and the watcher retries later)
   when the engine is halted, the intent is a dry run, the New York session is closed (reason
   ``market_closed``: a day order sent now would only expire; the watcher decides again after
   the open), the router has not yet read the broker's orders since it started, an exit of the
   trade is already working, a person's order at the broker touches the trade's legs, or the
   trade is not OPEN and managed;
2. reads the broker's positions (at most ``positions_max_age`` old) and works out what the
   broker holds **for this trade** (:func:`engine.domain.orders.held_for_trade`: never another
   trade's contracts on the same strikes), and the quantity: the trade's whole quantity for a
   FULL exit, the intent's for a PARTIAL one, never more than held;
3. builds the order (:func:`engine.domain.orders.build_exit_order`: one multileg order closing
   every leg, debit to close a credit spread, credit to close a debit spread; refused, never
   clamped, when a rule would be broken) priced at the first rung of
   :func:`~engine.domain.orders.price_ladder` (the mark, walked toward the natural);
4. records it (status NEW, trade CLOSING, one transaction; the database refuses a second
   working exit of a trade) and hands it to a follower task (:mod:`actors.order_follower`),
   which sends it tagged with its client order id, follows it to a final state and re-prices it.

Reconciliation runs before the first intent is served and every ``reconcile_seconds``: orders
recorded but not final are resolved against the broker (by id, else by tag) and followed again;
an order recorded but never sent (NEW) is ended; one maybe sent (SUBMITTED) and not found by its
tag is ended, never resent. Broker orders without our tag that touch a managed trade's legs are
recorded and hold that trade's exits off while they work.

``Halt`` stops new orders at once (intents are declined) and pauses re-pricing; nothing is
cancelled on the router's own initiative; ``Resume`` lifts it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol, assert_never

import trio

from actors.order_follower import (
    Follower,
    FollowerContext,
    OrderObserver,
    RouterSettings,
    priority_for,
)
from actors.position_watcher import AuditSubmit
from engine.brokers import BrokerOrder, BrokerPosition, OrderBroker
from engine.calendar import MarketCalendar
from engine.clock import NEW_YORK, MarketClock
from engine.domain.exit_plan import ExitPlan, default_plan, plan_with_overrides
from engine.domain.orders import (
    ExitRefused,
    build_exit_order,
    client_order_id,
    closable_quantity,
    held_for_trade,
    parse_client_order_id,
    price_ladder,
)
from engine.domain.reconcile import OpenTrade
from engine.domain.spread import Spread
from engine.domain.strategy import Strategy
from engine.errors import BrokerAnswerInvalid, BrokerUnavailable, ConfigError, RateLimited
from engine.log import Logger, get_logger
from engine.messages import (
    CancelOrder,
    EngineEventRecord,
    ExitAction,
    ExitIntent,
    ExitIntentDeclined,
    Halt,
    RefreshPositions,
    RepriceOrder,
    Resume,
    RouterCommand,
    RouterEvent,
)
from storage.orders import PgOrderStore, StoredOrder

__all__ = ["ACTOR", "MARKET_CLOSED", "RouterSettings", "TradeSource", "run"]

ACTOR = "order_router"
MARKET_CLOSED = "market_closed"  # how a decline outside the session starts (log and audit)

_READ_ERRORS = (BrokerUnavailable, RateLimited, BrokerAnswerInvalid, trio.TooSlowError)


class TradeSource(Protocol):
    """The open trades (``storage.trades.PgTradeStore`` fits)."""

    async def load_open_trades(self, account_id: str) -> list[OpenTrade]: ...

    async def load_trade_and_sharers(self, account_id: str, trade_id: int) -> list[OpenTrade]: ...


async def run(
    *,
    inbox: trio.MemoryReceiveChannel[RouterCommand],
    events: trio.MemorySendChannel[RouterEvent],
    refresh: trio.MemorySendChannel[RefreshPositions],
    broker: OrderBroker,
    orders: PgOrderStore,
    trades: TradeSource,
    audit: AuditSubmit,
    account_id: str,
    clock: MarketClock,
    settings: RouterSettings | None = None,
    control: trio.MemoryReceiveChannel[Halt | Resume] | None = None,
    calendar: MarketCalendar | None = None,
    observer: OrderObserver | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Route exits until cancelled; ``audit`` takes engine events. ``control`` carries the
    operator's Halt and Resume on a channel of their own, served by a task of its own: a halt
    never waits behind a queue of intents. ``observer`` times decision -> order request.
    ``calendar``: exits are declined outside the New York session (None: always open)."""
    settings = settings or RouterSettings()
    async with trio.open_nursery() as nursery:
        ctx = FollowerContext(
            broker=broker,
            orders=orders,
            events=events,
            refresh=refresh,
            audit=audit,
            account_id=account_id,
            clock=clock,
            settings=settings,
            nursery=nursery,
            observer=observer,
        )
        router = _Router(ctx, trades, calendar)
        with inbox:
            await router.reconcile()
            nursery.start_soon(router.follow_stream)
            nursery.start_soon(router.poll_and_reconcile)
            if control is not None:
                nursery.start_soon(router.serve_control, control)
            task_status.started()
            async for command in inbox:
                await router.on_command(command)
        nursery.cancel_scope.cancel()


class _Router:
    """The state the router task owns (followers own their orders' state)."""

    def __init__(
        self, ctx: FollowerContext, trades: TradeSource, calendar: MarketCalendar | None = None
    ) -> None:
        self.ctx = ctx
        self.trades = trades
        self.calendar = calendar
        self.log: Logger = get_logger(ACTOR).bind(account_id=ctx.account_id)
        self.reconciled = False
        self.held_off: dict[int, set[str]] = {}  # trade_id -> foreign broker order ids
        self.reported: set[str] = set()  # broker order ids already recorded as findings
        self._positions: tuple[float, list[BrokerPosition]] | None = None

    # -- commands ---------------------------------------------------------------------------

    async def serve_control(self, control: trio.MemoryReceiveChannel[Halt | Resume]) -> None:
        with control:
            async for command in control:
                await self.on_command(command)

    async def on_command(self, command: RouterCommand) -> None:
        match command:
            case ExitIntent():
                await self.on_intent(command)
            case Halt(reason=reason):
                self.ctx.halted = True
                self.log.warning("order_router.halted", reason=reason)
                self._event("halted", level="WARNING", message=reason, action="no new orders")
            case Resume(reason=reason):
                self.ctx.halted = False
                self.log.info("order_router.resumed", reason=reason)
                self._event("resumed", message=reason, action="orders allowed")
                for follower in self.ctx.followers.values():
                    follower.poke()  # re-pricing was paused
            case CancelOrder(client_order_id=cid):
                target = self.ctx.followers_by_client.get(cid)
                if target is not None:
                    await target.cancel(command.reason)
            case RepriceOrder(client_order_id=cid):
                working = self.ctx.followers_by_client.get(cid)
                if working is not None:
                    await working.reprice(command.limit_price)
            case _:
                assert_never(command)

    async def on_intent(self, intent: ExitIntent) -> None:
        reason = self._refusal(intent)
        if reason is None:
            reason = await self._route(intent)
        if reason is not None:
            await self._decline(intent, reason)

    def _refusal(self, intent: ExitIntent) -> str | None:
        if intent.dry_run:
            return "dry run: nothing is sent"
        if self.ctx.halted:
            return "halted: no new orders"
        if self.calendar is not None:
            now = self.ctx.clock.now()
            if not self.calendar.is_open(now):
                opens = self.calendar.next_open(now).astimezone(NEW_YORK)
                return (
                    f"{MARKET_CLOSED}: the New York session is closed (a day order would only "
                    f"expire); it opens {opens:%Y-%m-%d %H:%M} ET"
                )
        if not self.reconciled:
            return "the broker's orders have not been read since start; not acting blind"
        if intent.trade_id in self.ctx.followers:
            return "an exit order of this trade is already working"
        if self.held_off.get(intent.trade_id):
            orders = sorted(self.held_off[intent.trade_id])
            return f"a broker order without our tag touches this trade's legs ({orders})"
        return None

    async def _route(self, intent: ExitIntent) -> str | None:
        # The trade and those sharing a symbol with it: all that attribution needs.
        open_trades = await self.trades.load_trade_and_sharers(
            self.ctx.account_id, intent.trade_id
        )
        mine = next((t for t in open_trades if t.trade_id == intent.trade_id), None)
        if mine is None:
            return "the trade is not open"
        if mine.exit_in_flight:
            return "the trade is closing: an exit order is already recorded"
        snapshot = mine.snapshot
        if not snapshot.managed:
            return "the trade is not managed"
        try:
            plan = plan_with_overrides(default_plan(snapshot.strategy), snapshot.exit_plan)
        except ConfigError as exc:
            return f"the trade's exit plan is invalid: {exc}"
        positions = await self._read_positions()
        if positions is None:
            return "the broker's positions could not be read; not acting blind"
        net = {p.symbol: p.quantity for p in positions}
        others = [t.snapshot.spread() for t in open_trades if t.trade_id != intent.trade_id]
        spread = snapshot.spread()
        held = held_for_trade(spread, net, others)
        return await self._build_and_record(intent, snapshot.strategy, spread, held, plan)

    async def _build_and_record(
        self,
        intent: ExitIntent,
        strategy: Strategy,
        spread: Spread,
        held: dict[str, int],
        plan: ExitPlan,
    ) -> str | None:
        wanted = spread.quantity if intent.action is ExitAction.FULL else intent.quantity
        quantity = min(wanted, closable_quantity(spread, held))
        if quantity <= 0:
            return f"the broker holds none of this trade's spreads ({held})"
        ladder = _ladder(intent, plan)
        if ladder is None:
            return "no mark and natural price to set a limit, and the plan forbids market orders"
        order = build_exit_order(
            spread,
            strategy,
            quantity,
            held,
            ladder[0] if ladder else None,
            allow_market=plan.allow_market_order,
        )
        if isinstance(order, ExitRefused):
            return f"{order.code}: {order.reason}"
        cid = client_order_id(intent.trade_id, intent.intent_id, 1)
        stored = await self.ctx.orders.record_exit_order(
            client_order_id=cid,
            account_id=self.ctx.account_id,
            trade_id=intent.trade_id,
            order=order,
            action=intent.action,
            rule=intent.rule,
            decision_id=intent.decision_id,
        )
        if stored is None:
            return "the database refused the order: the trade is not OPEN or an exit works"
        follower = Follower(
            self.ctx,
            stored,
            intent_id=intent.intent_id,
            exit_order=order,
            ladder=ladder,
            step_seconds=float(plan.order_step_seconds),
            priority=priority_for(intent.rule),
            decided_at=intent.decided_at,
        )
        self.ctx.start(follower)
        self.log.info(
            "order_router.routed",
            trade_id=intent.trade_id,
            client_order_id=cid,
            rule=intent.rule,
            action=intent.action,
            quantity=quantity,
            limit_price=order.limit_price,
            ladder=list(ladder),
        )
        return None

    async def _decline(self, intent: ExitIntent, reason: str) -> None:
        self.log.info(
            "order_router.declined",
            trade_id=intent.trade_id,
            intent_id=intent.intent_id,
            reason=reason,
        )
        if reason.startswith(MARKET_CLOSED):
            self._event(
                MARKET_CLOSED,
                trade_id=intent.trade_id,
                message=reason,
                action="exit declined; the watcher decides again after the open",
            )
        await self.ctx.events.send(
            ExitIntentDeclined(
                intent_id=intent.intent_id,
                trade_id=intent.trade_id,
                reason=reason,
                at=self.ctx.clock.now(),
            )
        )

    async def _read_positions(self) -> list[BrokerPosition] | None:
        now = trio.current_time()
        if (
            self._positions is not None
            and now - self._positions[0] <= self.ctx.settings.positions_max_age
        ):
            return self._positions[1]
        try:
            positions = await self.ctx.read(self.ctx.broker.get_positions)
        except _READ_ERRORS as exc:
            self.log.warning("order_router.positions_failed", error=str(exc) or type(exc).__name__)
            return None
        self._positions = (trio.current_time(), positions)
        return positions

    # -- following and reconciling ----------------------------------------------------------

    async def follow_stream(self) -> None:
        """Poke the follower of every order the account stream mentions. The stream loses
        events and drops; polling catches up, so a failure here only costs latency."""
        failures = 0
        while True:
            try:
                async with self.ctx.broker.order_events() as source:
                    failures = 0
                    self.log.info("order_router.stream_connected")
                    while True:
                        update = await source.receive()
                        if update is not None:
                            self.ctx.poke(
                                update.broker_order_id,
                                update.parent_order_id,
                                update.client_order_id,
                            )
            except ConfigError as exc:
                self.log.info("order_router.stream_unavailable", reason=str(exc))
                return  # polling alone follows the orders
            except BrokerUnavailable as exc:
                failures += 1
                self.log.warning("order_router.stream_lost", error=str(exc), failures=failures)
            await trio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))

    async def poll_and_reconcile(self) -> None:
        next_reconcile = trio.current_time() + self.ctx.settings.reconcile_seconds
        while True:
            await trio.sleep(self.ctx.settings.poll_seconds)
            if trio.current_time() >= next_reconcile or not self.reconciled:
                await self.reconcile()
                next_reconcile = trio.current_time() + self.ctx.settings.reconcile_seconds
            elif self.ctx.followers:
                await self._poll_followed()

    async def _poll_followed(self) -> None:
        try:
            broker_orders = await self.ctx.read(self.ctx.broker.get_orders)
        except _READ_ERRORS as exc:
            self.log.warning("order_router.poll_failed", error=str(exc) or type(exc).__name__)
            return
        for read in broker_orders:
            self.ctx.offer(read)

    async def reconcile(self) -> None:
        """Resolve recorded orders that are not final against the broker, and look for orders
        at the broker that touch our trades. Failures leave ``reconciled`` as it was."""
        try:
            broker_orders = await self.ctx.read(self.ctx.broker.get_orders)
            unfinished = await self.ctx.orders.unfinished_orders(self.ctx.account_id)
            open_trades = await self.trades.load_open_trades(self.ctx.account_id)
        except _READ_ERRORS as exc:
            self.log.warning("order_router.reconcile_failed", error=str(exc) or type(exc).__name__)
            return
        by_tag = {o.client_order_id: o for o in broker_orders if o.client_order_id}
        by_id = {o.broker_order_id: o for o in broker_orders}
        for stored in unfinished:
            if stored.trade_id in self.ctx.followers:
                continue
            await self._resume(stored, by_id, by_tag)
        for read in broker_orders:
            self.ctx.offer(read)
        self._find_foreign(broker_orders, open_trades)
        if not self.reconciled:
            self.log.info(
                "order_router.reconciled",
                unfinished=len(unfinished),
                broker_orders=len(broker_orders),
            )
        self.reconciled = True

    async def _resume(
        self,
        stored: StoredOrder,
        by_id: dict[str, BrokerOrder],
        by_tag: dict[str, BrokerOrder],
    ) -> None:
        read = by_id.get(stored.broker_order_id or "") or by_tag.get(stored.client_order_id)
        if read is None and stored.broker_order_id:
            try:
                read = await self.ctx.read(self.ctx.broker.get_order, stored.broker_order_id)
            except _READ_ERRORS as exc:
                self.log.warning(
                    "order_router.resume_read_failed",
                    client_order_id=stored.client_order_id,
                    error=str(exc),
                )
                return
        if read is None:
            status, why = (
                ("CANCELLED", "recorded but never sent (the engine stopped before sending)")
                if stored.status == "NEW"
                else ("REJECTED", "not found at the broker by its tag after a restart; not resent")
            )
            follower = Follower(
                self.ctx,
                stored,
                intent_id="",
                exit_order=None,
                ladder=(),
                step_seconds=0.0,
                priority=priority_for(stored.reason),
            )
            await follower.end_unsent(status, why)
            self._event(
                "order_unsent",
                level="WARNING",
                trade_id=stored.trade_id,
                client_order_id=stored.client_order_id,
                message=why,
                action=f"order ended as {status}; trade back to OPEN",
            )
            return
        follower = Follower(
            self.ctx,
            stored,
            intent_id=_intent_of(stored.client_order_id),
            exit_order=None,
            ladder=(),
            step_seconds=0.0,
            priority=priority_for(stored.reason),
            resumed_read=read,
        )
        self._event(
            "order_resumed",
            trade_id=stored.trade_id,
            client_order_id=stored.client_order_id,
            message=f"found at the broker as {read.broker_order_id} ({read.status})",
            action="following it again; nothing resent",
        )
        self.log.info(
            "order_router.resumed_order",
            trade_id=stored.trade_id,
            client_order_id=stored.client_order_id,
            broker_order_id=read.broker_order_id,
            status=read.status,
        )
        self.ctx.start(follower)

    def _find_foreign(
        self, broker_orders: Sequence[BrokerOrder], open_trades: Sequence[OpenTrade]
    ) -> None:
        legs_of: dict[str, list[int]] = {}
        for trade in open_trades:
            if trade.snapshot.managed:
                for leg in trade.snapshot.legs:
                    legs_of.setdefault(leg.occ, []).append(trade.trade_id)
        held_off: dict[int, set[str]] = {}
        for read in broker_orders:
            if read.is_final:
                continue
            ours = parse_client_order_id(read.client_order_id)
            if ours is not None and read.client_order_id in self.ctx.followers_by_client:
                continue
            touched = {tid for leg in read.legs for tid in legs_of.get(leg.option_symbol, [])}
            if not touched:
                continue
            if ours is None:
                for tid in touched:
                    held_off.setdefault(tid, set()).add(read.broker_order_id)
            if read.broker_order_id not in self.reported:
                self.reported.add(read.broker_order_id)
                kind = "untracked_own_order" if ours is not None else "foreign_order"
                self.log.warning(
                    f"order_router.{kind}",
                    broker_order_id=read.broker_order_id,
                    trades=sorted(touched),
                    tag=read.client_order_id,
                )
                for tid in sorted(touched):
                    self._event(
                        kind,
                        level="WARNING",
                        trade_id=tid,
                        message=f"broker order {read.broker_order_id} "
                        f"(tag {read.client_order_id}) works on this trade's legs",
                        action="exits of this trade held off while it works",
                    )
        self.held_off = held_off

    def _event(
        self,
        kind: str,
        *,
        level: str = "INFO",
        trade_id: int | None = None,
        client_order_id: str | None = None,
        message: str | None = None,
        action: str | None = None,
    ) -> None:
        self.ctx.audit.submit(
            EngineEventRecord(
                kind=f"{ACTOR}.{kind}",
                actor=ACTOR,
                level=level,
                trade_id=trade_id,
                client_order_id=client_order_id,
                message=message,
                action_taken=action,
                at=self.ctx.clock.now().astimezone(dt.UTC),
            )
        )


def _intent_of(cid: str) -> str:
    parsed = parse_client_order_id(cid)
    return "" if parsed is None else parsed.intent


def _ladder(intent: ExitIntent, plan: ExitPlan) -> tuple[Decimal, ...] | None:
    """The limits to walk; ``()`` for a market order; None when neither is possible."""
    if intent.mark_close_price is not None and intent.natural_close_price is not None:
        return price_ladder(
            intent.mark_close_price,
            intent.natural_close_price,
            plan.order_steps,
            plan.order_price_cap,
        )
    return () if plan.allow_market_order else None
