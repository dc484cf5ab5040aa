"""One exit order's life, owned by one task of the OrderRouter: send, follow, re-price, finish.

A :class:`Follower` owns its order's state; the router's tasks only *offer* it broker reads
(polling) and *poke* it (an account-stream event says "read this order now"). It:

- sends the order (marked SUBMITTED first) within the trading rate limit, by priority; a refusal
  ends it as REJECTED; an ambiguous outcome (timeout, 5xx, dropped connection, 429) is resolved
  by reading the broker's orders by the order's tag, a few times, and **never** by sending
  again: not found means REJECTED ("not found by its tag"), and the watcher decides afresh;
- applies every broker read in one transaction (:meth:`storage.orders.PgOrderStore.apply_read`)
  and reports what changed, in this order, on the one channel to the WatcherPool: the fills,
  the trade's new quantity or its close, then the order event; after any fill it asks the
  mirror to re-read positions;
- walks its limit one rung of the ladder every ``step_seconds`` (market seconds) by modifying
  the order's price, while it works and the engine is not halted; one step after the cap it
  cancels what is left (the watcher decides again from fresh quotes). A modify or cancel that
  finds the order already final ("already in finalized state: filled") means: read it, the
  fill is real.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Protocol, TypeVar

import msgspec
import trio

from actors.position_watcher import AuditSubmit
from engine.brokers import BrokerOrder, OrderBroker
from engine.clock import MarketClock
from engine.domain.orders import ExitOrder
from engine.errors import (
    BrokerAnswerInvalid,
    BrokerUnavailable,
    OrderAlreadyFinal,
    OrderRejected,
    RateLimited,
)
from engine.log import Logger, get_logger
from engine.messages import (
    CloseReason,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderPartiallyFilled,
    OrderRepriced,
    OrderSubmitted,
    RefreshPositions,
    RouterEvent,
    SpreadClosed,
    SpreadQuantityChanged,
)
from engine.messages import (
    OrderRejected as OrderRejectedEvent,
)
from engine.ratelimit import TokenBucket
from storage.orders import AppliedRead, PgOrderStore, StoredOrder

__all__ = ["Follower", "FollowerContext", "OrderObserver", "RouterSettings", "priority_for"]

T = TypeVar("T")

_AMBIGUOUS = (BrokerUnavailable, RateLimited, BrokerAnswerInvalid, trio.TooSlowError)
_WORKING: Final = frozenset({"PENDING", "OPEN", "PARTIALLY_FILLED"})

# Stops first; then exits that protect against a loss or a deadline; then profit taking.
_PROTECTIVE: Final = frozenset(
    {
        "underlying_breach",
        "underlying_move",
        "underlying_spike",
        "short_delta",
        "expiration_day",
        "max_days",
        "dte",
        "manual",
    }
)


def priority_for(rule: str | None) -> int:
    """Rate-limit priority of an exit decided by ``rule`` (0 goes first)."""
    if rule == "stop_loss":
        return 0
    return 1 if rule in _PROTECTIVE else 2


class RouterSettings(msgspec.Struct, frozen=True, kw_only=True):
    poll_seconds: float = 2.0  # read the broker's orders while any is followed
    reconcile_seconds: float = 30.0  # look for unfinished and foreign orders
    follow_seconds: float = 10.0  # a follower reads its own order if nothing else did
    submit_timeout: float = 10.0
    read_timeout: float = 10.0
    tag_reads: int = 4  # reads by tag before an ambiguous send is declared never received
    positions_max_age: float = 1.0
    trading_limit: int = 60  # Tradier: place/modify/cancel per minute
    standard_limit: int = 120  # Tradier (live): account and order reads per minute
    rate_window: float = 60.0
    time_scale: float = 1.0  # market seconds per trio second (a simulator at speed N: N)


class OrderObserver(Protocol):
    """Times exit orders (``engine.metrics.EngineMetrics`` fits)."""

    def order_sent(self, decision_age: float) -> None: ...


@dataclass
class FollowerContext:
    """What every follower shares with the router. Only the router's tasks and the followers
    touch it, all in one trio run."""

    broker: OrderBroker
    orders: PgOrderStore
    events: trio.MemorySendChannel[RouterEvent]
    refresh: trio.MemorySendChannel[RefreshPositions]
    audit: AuditSubmit
    account_id: str
    clock: MarketClock
    settings: RouterSettings
    nursery: trio.Nursery
    halted: bool = False
    observer: OrderObserver | None = None
    followers: dict[int, Follower] = field(default_factory=dict)  # by trade_id
    followers_by_client: dict[str, Follower] = field(default_factory=dict)
    followers_by_broker: dict[str, Follower] = field(default_factory=dict)
    trading: TokenBucket = field(init=False)
    standard: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.trading = TokenBucket(
            limit=s.trading_limit, window=s.rate_window, time_scale=s.time_scale
        )
        self.standard = TokenBucket(
            limit=s.standard_limit, window=s.rate_window, time_scale=s.time_scale
        )

    async def read(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One broker read within the standard rate limit and the read deadline."""
        await self.standard.acquire(1)
        with trio.fail_after(self.settings.read_timeout):
            return await call(*args)

    def start(self, follower: Follower) -> None:
        self.followers[follower.order.trade_id] = follower
        self.followers_by_client[follower.order.client_order_id] = follower
        if follower.order.broker_order_id:
            self.followers_by_broker[follower.order.broker_order_id] = follower
        self.nursery.start_soon(follower.run, name=f"order:{follower.order.client_order_id}")

    def finished(self, follower: Follower) -> None:
        order = follower.order
        if self.followers.get(order.trade_id) is follower:
            del self.followers[order.trade_id]
        self.followers_by_client.pop(order.client_order_id, None)
        if order.broker_order_id:
            self.followers_by_broker.pop(order.broker_order_id, None)

    def poke(self, broker_order_id: str, parent_id: str | None, client_id: str | None) -> None:
        follower = (
            self.followers_by_broker.get(broker_order_id)
            or (self.followers_by_broker.get(parent_id) if parent_id else None)
            or (self.followers_by_client.get(client_id) if client_id else None)
        )
        if follower is not None:
            follower.poke()

    def offer(self, read: BrokerOrder) -> None:
        follower = self.followers_by_broker.get(read.broker_order_id) or (
            self.followers_by_client.get(read.client_order_id) if read.client_order_id else None
        )
        if follower is not None:
            follower.offer(read)


class Follower:
    """One order's task (see the module docstring). ``ladder`` holds the limits to walk, the
    first being the one sent; empty for a market order or an order resumed after a restart."""

    def __init__(
        self,
        ctx: FollowerContext,
        order: StoredOrder,
        *,
        intent_id: str,
        exit_order: ExitOrder | None,
        ladder: tuple[Decimal, ...],
        step_seconds: float,
        priority: int,
        resumed_read: BrokerOrder | None = None,
        decided_at: dt.datetime | None = None,
    ) -> None:
        self.ctx = ctx
        self.decided_at = decided_at  # the watcher's decision, market time (None: resumed)
        self.order = order
        self.intent_id = intent_id
        self.exit_order = exit_order
        self.ladder = ladder
        self.rung = 0
        self.step = step_seconds / ctx.settings.time_scale
        self.priority = priority
        self.done = order.is_final
        self._offered: BrokerOrder | None = resumed_read
        self._wake = trio.Event()
        self._read_now = resumed_read is not None
        self._next_step_at = float("inf")
        self.log: Logger = get_logger("order_router").bind(
            trade_id=order.trade_id, client_order_id=order.client_order_id
        )

    # -- what the router's tasks call --------------------------------------------------------

    def poke(self) -> None:
        self._read_now = True
        self._wake.set()

    def offer(self, read: BrokerOrder) -> None:
        self._offered = read
        self._wake.set()

    async def cancel(self, reason: str) -> None:
        broker_id = self.order.broker_order_id
        if broker_id is None or self.done:
            return
        await self.ctx.orders.mark_cancel_requested(self.order.order_id)
        await self.ctx.trading.acquire(0)
        try:
            with trio.fail_after(self.ctx.settings.submit_timeout):
                await self.ctx.broker.cancel_order(broker_id)
            self.log.info("order_router.cancel_sent", reason=reason)
        except OrderAlreadyFinal as exc:
            # The cancel raced the order to its end (a fill, most often): read what happened.
            self.log.info("order_router.cancel_too_late", state=exc.state)
        except OrderRejected as exc:
            self.log.warning("order_router.cancel_refused", error=str(exc))
        except _AMBIGUOUS as exc:
            self.log.warning("order_router.cancel_unknown", error=str(exc) or type(exc).__name__)
        self.poke()

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.order.status == "NEW":
                if not await self._send():
                    return
            while not self.done:
                read = await self._next_read()
                if read is not None:
                    await self._apply(read)
                if not self.done:
                    await self._maybe_reprice()
        finally:
            self.ctx.finished(self)

    async def _next_read(self) -> BrokerOrder | None:
        if self._offered is None and not self._read_now:
            # Wake for the next rung only when one can be taken now (not halted, working):
            # a deadline already passed that cannot be acted on would spin this loop.
            step_at = self._next_step_at if self._may_step() else float("inf")
            deadline = min(step_at, trio.current_time() + self.ctx.settings.follow_seconds)
            with trio.move_on_at(deadline) as waited:
                await self._wake.wait()
            if waited.cancelled_caught and trio.current_time() < step_at:
                self._read_now = True  # nothing heard for a while: read it ourselves
        self._wake = trio.Event()
        offered, self._offered = self._offered, None
        if offered is not None and not self._read_now:
            return offered
        if not self._read_now:
            return None
        self._read_now = False
        broker_id = self.order.broker_order_id
        if broker_id is None:
            return offered
        try:
            return await self.ctx.read(self.ctx.broker.get_order, broker_id)
        except _AMBIGUOUS as exc:
            self.log.warning("order_router.read_failed", error=str(exc) or type(exc).__name__)
            return offered

    async def _send(self) -> bool:
        order, exit_order = self.order, self.exit_order
        assert exit_order is not None
        await self.ctx.orders.mark_submitted(order.order_id)
        await self._emit(
            OrderSubmitted(
                client_order_id=order.client_order_id,
                trade_id=order.trade_id,
                intent_id=self.intent_id,
                action=order.exit_action,
                quantity=order.quantity,
                order_type=order.order_type,
                limit_price=order.limit_price,
                legs=exit_order.legs,
                at=self.ctx.clock.now(),
            )
        )
        await self.ctx.trading.acquire(self.priority)
        if self.ctx.halted:  # halted while this order waited for its turn: it never leaves
            await self.end_unsent("CANCELLED", "halted before it was sent")
            return False
        if self.decided_at is not None and self.ctx.observer is not None:
            # Market seconds since the decision, in trio seconds (a simulator runs faster).
            age = (self.ctx.clock.now() - self.decided_at).total_seconds()
            self.ctx.observer.order_sent(age / self.ctx.settings.time_scale)
        try:
            # Once the request leaves, its answer is recorded even if the engine is being
            # stopped (SIGTERM): the next start then follows a known broker id instead of
            # searching for a SUBMITTED order by its tag. Bounded by the submit timeout.
            with trio.CancelScope(shield=True):
                with trio.fail_after(self.ctx.settings.submit_timeout):
                    broker_id = await self.ctx.broker.submit_order(
                        exit_order, client_order_id=order.client_order_id
                    )
                await self.ctx.orders.mark_accepted(order.order_id, broker_id)
        except OrderRejected as exc:
            reasons = "; ".join(exc.reasons) or str(exc)
            await self.end_unsent("REJECTED", reasons)
            return False
        except _AMBIGUOUS as exc:
            self.log.warning("order_router.send_ambiguous", error=str(exc) or type(exc).__name__)
            found = await self._find_by_tag()
            if found is None:
                await self.end_unsent(
                    "REJECTED",
                    f"outcome unknown ({type(exc).__name__}) and not found at the broker by "
                    f"its tag after {self.ctx.settings.tag_reads} reads; not resent",
                )
                return False
            broker_id = found.broker_order_id
            self._offered = found
            await self.ctx.orders.mark_accepted(order.order_id, broker_id)
        await self._accepted(broker_id)
        return True

    async def _accepted(self, broker_id: str) -> None:
        """The broker's id is recorded (``mark_accepted``): follow the order from here."""
        # As mark_accepted did in the database: working, so the ladder walks before any read.
        status = "PENDING" if self.order.status in ("NEW", "SUBMITTED") else self.order.status
        self.order = msgspec.structs.replace(self.order, broker_order_id=broker_id, status=status)
        self.ctx.followers_by_broker[broker_id] = self
        self._next_step_at = trio.current_time() + self.step if self.ladder else float("inf")
        self.log.info("order_router.accepted", broker_order_id=broker_id)
        await self._emit(
            OrderAccepted(
                client_order_id=self.order.client_order_id,
                broker_order_id=broker_id,
                trade_id=self.order.trade_id,
                at=self.ctx.clock.now(),
            )
        )

    async def _find_by_tag(self) -> BrokerOrder | None:
        for attempt in range(self.ctx.settings.tag_reads):
            await trio.sleep(0.5 * 2**attempt)
            try:
                orders = await self.ctx.read(self.ctx.broker.get_orders)
            except _AMBIGUOUS:
                continue
            for read in orders:
                if read.client_order_id == self.order.client_order_id:
                    self.log.info("order_router.found_by_tag", broker_order_id=read.broker_order_id)
                    return read
        return None

    async def end_unsent(self, status: str, reason: str) -> None:
        """End an order the broker does not have (see :meth:`PgOrderStore.end_unsent`)."""
        applied = await self.ctx.orders.end_unsent(
            self.order.order_id, status=status, reason=reason
        )
        await self._report(applied)

    async def _apply(self, read: BrokerOrder) -> None:
        if self.order.broker_order_id is None and read.broker_order_id:
            await self.ctx.orders.mark_accepted(self.order.order_id, read.broker_order_id)
            await self._accepted(read.broker_order_id)
        applied = await self.ctx.orders.apply_read(self.order.order_id, read)
        await self._report(applied)

    async def _report(self, applied: AppliedRead) -> None:
        before, self.order = self.order, applied.order
        step = applied.progress
        now = self.ctx.clock.now()
        order = self.order
        for fill in applied.fills:
            await self._emit(
                Fill(
                    client_order_id=order.client_order_id,
                    broker_order_id=order.broker_order_id or "",
                    trade_id=order.trade_id,
                    option_symbol=fill.symbol,
                    side=fill.side,
                    quantity=fill.quantity,
                    price=fill.price,
                    at=now,
                )
            )
        if step.newly_filled > 0:
            await self._report_trade(applied, now)
        if step.is_final:
            self.done = True
            await self._emit(self._final_event(applied, now))
            self.log.info(
                "order_router.finished",
                status=order.status,
                filled_quantity=order.filled_quantity,
                avg_fill_price=order.avg_fill_price,
                trade_status=applied.trade_status,
                realized_pnl=applied.realized_pnl,
                reason=step.reason,
            )
        elif step.newly_filled > 0:
            await self._emit(
                OrderPartiallyFilled(
                    client_order_id=order.client_order_id,
                    broker_order_id=order.broker_order_id or "",
                    trade_id=order.trade_id,
                    quantity=order.quantity,
                    filled_quantity=order.filled_quantity,
                    remaining_quantity=order.quantity - order.filled_quantity,
                    avg_fill_price=order.avg_fill_price or Decimal(0),
                    at=now,
                )
            )
        elif order.status != before.status:
            self.log.info("order_router.status", status=order.status)

    async def _report_trade(self, applied: AppliedRead, now: dt.datetime) -> None:
        order = self.order
        self.log.info(
            "order_router.filled_part",
            filled_quantity=order.filled_quantity,
            quantity=order.quantity,
            avg_fill_price=order.avg_fill_price,
            trade_quantity=applied.trade_quantity,
        )
        if applied.trade_status == "CLOSED":
            await self._emit(
                SpreadClosed(
                    trade_id=order.trade_id,
                    reason=CloseReason(applied.close_reason or "MANUAL"),
                    realized_pnl_dollars=applied.realized_pnl,
                    at=now,
                )
            )
        elif applied.trade_quantity < applied.trade_quantity_before:
            await self._emit(
                SpreadQuantityChanged(
                    trade_id=order.trade_id,
                    quantity=applied.trade_quantity,
                    previous_quantity=applied.trade_quantity_before,
                    legs=applied.trade_legs,
                    at=now,
                )
            )
        await self.ctx.refresh.send(RefreshPositions(reason="fill", trade_id=order.trade_id))

    def _final_event(self, applied: AppliedRead, now: dt.datetime) -> RouterEvent:
        order = self.order
        reason = applied.progress.reason or order.status.lower()
        broker_id = order.broker_order_id
        match order.status:
            case "FILLED":
                return OrderFilled(
                    client_order_id=order.client_order_id,
                    broker_order_id=broker_id or "",
                    trade_id=order.trade_id,
                    filled_quantity=order.filled_quantity,
                    avg_fill_price=order.avg_fill_price or Decimal(0),
                    at=now,
                )
            case "CANCELLED":
                return OrderCanceled(
                    client_order_id=order.client_order_id,
                    broker_order_id=broker_id,
                    trade_id=order.trade_id,
                    filled_quantity=order.filled_quantity,
                    reason=reason,
                    at=now,
                )
            case "EXPIRED":
                return OrderExpired(
                    client_order_id=order.client_order_id,
                    broker_order_id=broker_id,
                    trade_id=order.trade_id,
                    filled_quantity=order.filled_quantity,
                    at=now,
                )
            case _:
                return OrderRejectedEvent(
                    client_order_id=order.client_order_id,
                    broker_order_id=broker_id,
                    trade_id=order.trade_id,
                    reason=reason,
                    at=now,
                )

    def _may_step(self) -> bool:
        order = self.order
        return (
            not self.ctx.halted
            and bool(self.ladder)
            and order.status in _WORKING
            and order.broker_order_id is not None
        )

    async def _maybe_reprice(self) -> None:
        order = self.order
        broker_id = order.broker_order_id
        if not self._may_step() or broker_id is None or trio.current_time() < self._next_step_at:
            return
        if self.rung + 1 >= len(self.ladder):
            # The cap was reached a step ago and the market moved on: a limit left behind the
            # market protects nothing. Cancel it; the trade goes back to OPEN and its watcher
            # decides again (after its retry period) from fresh quotes.
            self._next_step_at = float("inf")
            await self.cancel("the limit reached its cap without filling; deciding again")
            return
        moved = await self._modify(broker_id, self.ladder[self.rung + 1])
        # The step is timed from the modify, not from the wait for a rate-limit token.
        self._next_step_at = trio.current_time() + self.step
        if moved:
            self.rung += 1

    async def reprice(self, limit_price: Decimal) -> None:
        """Move the working order's limit to ``limit_price`` now (an operator's request); the
        ladder's later rungs still apply."""
        broker_id = self.order.broker_order_id
        if broker_id is not None and not self.done and self.order.status in _WORKING:
            await self._modify(broker_id, limit_price)

    async def _modify(self, broker_id: str, price: Decimal) -> bool:
        """Modify the order's limit within the trading rate limit; True when it moved."""
        await self.ctx.trading.acquire(self.priority)
        try:
            with trio.fail_after(self.ctx.settings.submit_timeout):
                await self.ctx.broker.modify_price(broker_id, price)
        except OrderAlreadyFinal as exc:
            self.log.info("order_router.reprice_too_late", state=exc.state)
            self.poke()
            return False
        except OrderRejected as exc:
            self.log.warning("order_router.reprice_refused", error=str(exc), limit_price=price)
            self.ladder = self.ladder[: self.rung + 1]  # stop walking; the order still works
            return False
        except _AMBIGUOUS as exc:
            # A modify is idempotent: the next step tries this rung again.
            self.log.warning("order_router.reprice_unknown", error=str(exc) or type(exc).__name__)
            self.poke()
            return False
        order = self.order
        previous = order.limit_price
        await self.ctx.orders.record_reprice(order.order_id, price)
        self.order = msgspec.structs.replace(order, limit_price=price, attempts=order.attempts + 1)
        self.log.info(
            "order_router.repriced",
            previous_price=previous,
            limit_price=price,
            rung=self.rung + 1,
            remaining_quantity=order.quantity - order.filled_quantity,
        )
        await self._emit(
            OrderRepriced(
                client_order_id=order.client_order_id,
                broker_order_id=broker_id,
                trade_id=order.trade_id,
                previous_price=previous,
                limit_price=price,
                at=self.ctx.clock.now(),
            )
        )
        return True

    async def _emit(self, event: RouterEvent) -> None:
        await self.ctx.events.send(event)
