"""PositionWatcher: one spread's live state, and the exit plan evaluated on every tick.

A watcher owns its spread's latest leg and underlying quotes, the exit state (high-water mark,
fired tiers, debounce progress) and whether an exit is in flight. Every batch taken from its
mailbox (the newest quote per symbol, plus lifecycle and order events in arrival order) is
applied, then the exit plan is evaluated once, as the pure function
:func:`engine.domain.exit_rules.evaluate`, on the newest state of every leg (through the trade's
:class:`~engine.domain.exit_rules.ExitEvaluator`, lazy about the volatility model; a record
gets the full evaluation).

What a watcher records (through the AuditWriter; never blocking the tick):

- every exit decision, once per exit attempt (``decision = exit``);
- every guard that held an exit back, when the guard reasons change or at most once per
  ``snapshot_interval`` while they persist (a stuck guard must not write a row per tick);
- a sampled ``hold`` snapshot per spread every ``snapshot_interval`` seconds.

What it persists synchronously (the trades table, before acting): the high-water mark, fired
scale-out tiers and entry IV, so a restarted engine never fires a tier twice or forgets a
trailing stop's peak. A tier is only recorded as fired when its exit is actually sent.

At most one exit is in flight. It ends with the order's final event (filled, cancelled,
rejected, expired) or the router declining the intent; after a failure the watcher waits
``retry_after`` seconds before it may decide again (a retry policy, not a tight loop). An
out-of-sync spread (a leg gone at the broker) is watched but proposes no exit, and neither
does any spread while the New York session is closed (``WatcherSettings.calendar``): the first
tick after the open decides again. In dry run (or with no router) exits are decided and
recorded, never sent; a recorded dry-run exit holds further exits for ``retry_after`` seconds,
as a declined intent would.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Protocol

import msgspec
import trio

from engine.calendar import MarketCalendar
from engine.clock import MarketClock
from engine.conflate import ConflatingMailbox
from engine.domain.exit_plan import ExitPlan, default_plan, plan_with_overrides
from engine.domain.exit_rules import ExitEvaluator
from engine.domain.exit_types import (
    Decision as DomainDecision,
)
from engine.domain.exit_types import (
    Evaluation,
    MarketSnapshot,
    PersistedWatchState,
    PositionFacts,
    WatchState,
)
from engine.domain.guards import TimedQuote
from engine.domain.spread import Spread
from engine.log import get_logger
from engine.messages import (
    AuditRecord,
    CloseTradeNow,
    Decision,
    DecisionRecord,
    ExitAction,
    ExitIntent,
    ExitIntentDeclined,
    FeedStatusChanged,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    Quote,
    QuoteSnapshot,
    SpreadBackInSync,
    SpreadClosed,
    SpreadOutOfSync,
    SpreadQuantityChanged,
    TradePrint,
    TradeSnapshot,
)

__all__ = ["AuditSubmit", "DecisionObserver", "WatchStateStore", "WatcherSettings", "run"]

_log = get_logger("position_watcher")

MANUAL_RULE = "manual"


class WatchStateStore(Protocol):
    async def save_watch_state(
        self,
        trade_id: int,
        high_water_mark: Decimal | None,
        fired_tiers: Any,
        entry_iv: Decimal | None,
    ) -> None: ...


class AuditSubmit(Protocol):
    def submit(self, record: AuditRecord) -> None: ...


class DecisionObserver(Protocol):
    """Counts recorded decisions (``engine.metrics.EngineMetrics`` fits); never per tick."""

    def exit_decided(self, rule: str, tick_age: float | None) -> None: ...
    def guard_recorded(self, rule: str | None) -> None: ...


class WatcherSettings(msgspec.Struct, frozen=True, kw_only=True):
    dry_run: bool = False
    snapshot_interval: float = 60.0  # seconds of trio time between sampled hold records
    retry_after: float = 30.0  # after a failed exit, before the watcher may decide again
    # Session hours: no exit is sent while the market is closed (a day order would only
    # expire), and an early close moves the expiration-day cutoff. None: always open.
    calendar: MarketCalendar | None = None


class _Watch:
    """The mutable state of one watcher, owned by its task alone."""

    def __init__(self, trade: TradeSnapshot, plan: ExitPlan) -> None:
        self.trade = trade
        self.plan = plan
        self.trade_changed()
        self.state = WatchState.from_persisted(
            PersistedWatchState(
                high_water_mark=trade.high_water_mark,
                fired_tiers=trade.fired_tiers,
                entry_iv=trade.entry_iv,
            )
        )
        self.quotes: dict[str, Quote] = {}
        self.underlying_last: tuple[Decimal, float] | None = None  # (price, received_at)
        self.out_of_sync = False
        self.exit_in_flight: str | None = None  # intent id
        self.retry_not_before = float("-inf")
        self.last_snapshot_at = float("-inf")
        self.last_guard: tuple[tuple[str, ...], float] | None = None
        self.manual_exit_requested = False
        self.exit_is_manual = False  # the exit in flight was the operator's close
        self.closed = False
        self.observer: DecisionObserver | None = None

    def trade_changed(self) -> None:
        """Derive again what the ticks read from the trade: its spread, the spread's OCC symbols
        and the exit evaluator (on start, and when a partial exit or an add changes it)."""
        self.spread: Spread = self.trade.spread()
        self.symbols = self.spread.symbols
        self.evaluator = ExitEvaluator(self.plan, self.facts())

    def facts(self) -> PositionFacts:
        return PositionFacts(
            spread=self.spread,
            entry_price=self.trade.entry_price,
            opening_quantity=self.trade.opening_quantity,
            opened_at=self.trade.opened_at,
            managed=self.trade.managed,
            entry_short_iv=self.trade.entry_iv,
        )


def plan_for(trade: TradeSnapshot) -> ExitPlan:
    return plan_with_overrides(default_plan(trade.strategy), trade.exit_plan)


async def run(
    *,
    trade: TradeSnapshot,
    mailbox: ConflatingMailbox[str, Any],
    intents: trio.MemorySendChannel[ExitIntent] | None,
    audit: AuditSubmit,
    store: WatchStateStore,
    market_clock: MarketClock,
    settings: WatcherSettings,
    observer: DecisionObserver | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Watch one trade until its spread closes (or the task is cancelled)."""
    watch = _Watch(trade, plan_for(trade))
    watch.observer = observer
    log = _log.bind(trade_id=trade.trade_id)
    task_status.started()
    while not watch.closed:
        try:
            batch, retry_due = await _next_batch(mailbox, watch.retry_not_before)
        except trio.EndOfChannel:
            return
        # A retry period ending is a reason to look again even if no quote moves.
        ticked = retry_due and bool(watch.quotes)
        for item in batch.values():
            ticked |= _apply(watch, item, log, settings.retry_after)
        if watch.closed:
            return
        if ticked or watch.manual_exit_requested:
            await _evaluate(watch, intents, audit, store, market_clock, settings, log)


async def _next_batch(
    mailbox: ConflatingMailbox[str, Any], retry_at: float
) -> tuple[dict[str, Any], bool]:
    """The mailbox's next batch, or nothing and True when the retry time comes first. Only a
    pending retry costs a cancel scope: on the tick path it would be paid on every batch."""
    if retry_at <= trio.current_time():
        return await mailbox.get_batch(), False
    with trio.move_on_at(retry_at):
        return await mailbox.get_batch(), False
    return {}, True


def _apply(watch: _Watch, item: object, log: Any, retry_after: float) -> bool:
    """Fold one mailbox item into the watch; True when market data changed."""
    match item:
        case Quote():
            watch.quotes[item.symbol] = item
            return True
        case TradePrint(symbol=symbol) if symbol == watch.trade.underlying:
            watch.underlying_last = (item.last, item.received_at)
            return True
        case TradePrint() | FeedStatusChanged():
            return False
        case SpreadClosed():
            watch.closed = True
        case SpreadQuantityChanged(quantity=quantity, legs=legs):
            watch.trade = msgspec.structs.replace(watch.trade, quantity=quantity, legs=legs)
            watch.trade_changed()
        case SpreadOutOfSync():
            watch.out_of_sync = True
            log.warning("position_watcher.out_of_sync", missing=sorted(item.missing_symbols))
        case SpreadBackInSync():
            watch.out_of_sync = False
        case CloseTradeNow():
            watch.manual_exit_requested = True
        case OrderFilled():
            if watch.exit_in_flight is not None:
                watch.exit_in_flight = None
                watch.exit_is_manual = False
        case OrderCanceled() | OrderRejected() | OrderExpired() | ExitIntentDeclined() if (
            watch.exit_in_flight is not None
        ):
            watch.exit_in_flight = None
            watch.retry_not_before = trio.current_time() + retry_after
            if watch.exit_is_manual:  # the operator's close stands until it is done
                watch.manual_exit_requested = True
                watch.exit_is_manual = False
            log.info("position_watcher.exit_failed", kind=type(item).__name__)
        case _:
            pass
    return False


def _snapshot(
    watch: _Watch, market_clock: MarketClock, calendar: MarketCalendar | None
) -> MarketSnapshot:
    now = trio.current_time()
    legs: list[TimedQuote | None] = []
    for symbol in watch.symbols:
        quote = watch.quotes.get(symbol)
        legs.append(
            None
            if quote is None
            else TimedQuote(bid=quote.bid, ask=quote.ask, age_seconds=now - quote.received_at)
        )
    price, age = _underlying(watch, now)
    market_time = market_clock.now()
    session = None if calendar is None else calendar.session_at(market_time)
    return MarketSnapshot(
        legs=tuple(legs),
        underlying_price=price,
        underlying_age_seconds=age,
        market_time=market_time,
        monotonic=now,
        market_open=calendar is None or (session is not None and session.contains(market_time)),
        session_close=None if session is None else session.close,
    )


def _underlying(watch: _Watch, now: float) -> tuple[Decimal | None, float | None]:
    quote = watch.quotes.get(watch.trade.underlying)
    if quote is not None and quote.bid is not None and quote.ask is not None and quote.ask > 0:
        return (quote.bid + quote.ask) / 2, now - quote.received_at
    if watch.underlying_last is not None:
        price, received_at = watch.underlying_last
        return price, now - received_at
    return None, None


async def _evaluate(
    watch: _Watch,
    intents: trio.MemorySendChannel[ExitIntent] | None,
    audit: AuditSubmit,
    store: WatchStateStore,
    market_clock: MarketClock,
    settings: WatcherSettings,
    log: Any,
) -> None:
    snapshot = _snapshot(watch, market_clock, settings.calendar)
    # Lazily: the volatility model only where it decides (a record evaluates in full).
    evaluation = watch.evaluator.evaluate(watch.state, snapshot, lazy_model=True)
    now = snapshot.monotonic
    # An operator's close waits for quotes: without a mark there is no limit to set.
    manual = watch.manual_exit_requested and evaluation.metrics is not None
    wants_exit = manual or evaluation.decision is DomainDecision.EXIT
    # Outside the session the exit waits for the open (the first tick then decides again).
    acting = wants_exit and snapshot.market_open and _may_act(watch, now)
    new_state = evaluation.new_state
    if not acting and new_state.fired_tiers != watch.state.fired_tiers:
        # A tier only counts as fired when its exit is sent.
        new_state = msgspec.structs.replace(new_state, fired_tiers=watch.state.fired_tiers)
    await _persist(watch, new_state, store)
    watch.state = new_state

    if acting:
        watch.manual_exit_requested = False
        await _act(watch, evaluation, snapshot, intents, audit, settings, log, manual=manual)
    elif evaluation.decision is DomainDecision.HELD_BY_GUARD:
        _record_guard(watch, evaluation, snapshot, audit, settings, now)
    elif evaluation.decision is DomainDecision.HOLD and not wants_exit:
        if now - watch.last_snapshot_at >= settings.snapshot_interval:
            watch.last_snapshot_at = now
            audit.submit(_record(watch, evaluation, snapshot, settings, Decision.HOLD))


def _may_act(watch: _Watch, now: float) -> bool:
    if watch.out_of_sync:
        return False
    if watch.exit_in_flight is not None:
        return False
    return now >= watch.retry_not_before


async def _persist(watch: _Watch, new_state: WatchState, store: WatchStateStore) -> None:
    old, new = watch.state.persisted(), new_state.persisted()
    if old == new:
        return
    await store.save_watch_state(
        watch.trade.trade_id, new.high_water_mark, new.fired_tiers, new.entry_iv
    )


async def _act(
    watch: _Watch,
    evaluation: Evaluation,
    snapshot: MarketSnapshot,
    intents: trio.MemorySendChannel[ExitIntent] | None,
    audit: AuditSubmit,
    settings: WatcherSettings,
    log: Any,
    *,
    manual: bool,
) -> None:
    rule = MANUAL_RULE if manual else str(evaluation.rule)
    dry_run = settings.dry_run or intents is None
    partial = not manual and evaluation.action is not None and evaluation.action.value == "partial"
    action = ExitAction.PARTIAL if partial else ExitAction.FULL
    quantity = evaluation.quantity if partial and evaluation.quantity else watch.trade.quantity
    record = _record(
        watch,
        evaluation,
        snapshot,
        settings,
        Decision.EXIT,
        rule=rule,
        action=action,
        quantity=quantity,
    )
    audit.submit(record)
    if watch.observer is not None:
        watch.observer.exit_decided(rule, None if manual else _newest_tick_age(watch))
    metrics = evaluation.metrics
    log.info(
        "position_watcher.exit_decided",
        rule=rule,
        rules_fired=[str(r) for r in evaluation.rules_fired],
        action=action,
        quantity=quantity,
        mark_close_price=None if metrics is None else metrics.mark_close_price,
        pnl=None if metrics is None else metrics.pnl,
        dry_run=dry_run,
    )
    if dry_run:
        # Nothing was sent: hold this exit as if it were in flight and then declined, so a
        # flapping rule is recorded once per retry period, not on every crossing.
        watch.retry_not_before = snapshot.monotonic + settings.retry_after
        return
    assert intents is not None
    intent = ExitIntent(
        intent_id=f"{watch.trade.trade_id}-{uuid.uuid4().hex[:12]}",
        trade_id=watch.trade.trade_id,
        action=action,
        quantity=quantity,
        rule=rule,
        decision_id=record.decision_id,
        rules_fired=tuple(str(r) for r in evaluation.rules_fired) or (rule,),
        mark_close_price=None if metrics is None else metrics.mark_close_price,
        natural_close_price=None if metrics is None else metrics.natural_close_price,
        decided_at=snapshot.market_time,
        dry_run=False,
    )
    watch.exit_in_flight = intent.intent_id
    watch.exit_is_manual = manual
    await intents.send(intent)


def _record_guard(
    watch: _Watch,
    evaluation: Evaluation,
    snapshot: MarketSnapshot,
    audit: AuditSubmit,
    settings: WatcherSettings,
    now: float,
) -> None:
    reasons = tuple(sorted(evaluation.guard_reasons))
    last = watch.last_guard
    if last is not None and last[0] == reasons and now - last[1] < settings.snapshot_interval:
        return
    watch.last_guard = (reasons, now)
    audit.submit(_record(watch, evaluation, snapshot, settings, Decision.HELD_BY_GUARD))
    if watch.observer is not None:
        watch.observer.guard_recorded(None if evaluation.rule is None else str(evaluation.rule))


def _newest_tick_age(watch: _Watch) -> float | None:
    """Seconds since the newest quote (or underlying print) the watcher holds arrived."""
    arrivals = [quote.received_at for quote in watch.quotes.values()]
    if watch.underlying_last is not None:
        arrivals.append(watch.underlying_last[1])
    return trio.current_time() - max(arrivals) if arrivals else None


def _record(
    watch: _Watch,
    evaluation: Evaluation,
    snapshot: MarketSnapshot,
    settings: WatcherSettings,
    decision: Decision,
    *,
    rule: str | None = None,
    action: ExitAction | None = None,
    quantity: int | None = None,
) -> DecisionRecord:
    # The tick's evaluation was lazy about the volatility model; the record has it all.
    evaluation = watch.evaluator.evaluate(evaluation.inputs.state, evaluation.inputs.snapshot)
    metrics = evaluation.metrics
    inputs = evaluation.to_record()["inputs"]
    thresholds = dict(evaluation.thresholds)
    thresholds["inputs"] = inputs  # everything evaluate() saw: replayable with exit_rules.replay
    if evaluation.notes:
        thresholds["notes"] = list(evaluation.notes)
    return DecisionRecord(
        trade_id=watch.trade.trade_id,
        decision=decision,
        rule=rule
        if rule is not None
        else (None if evaluation.rule is None else str(evaluation.rule)),
        rules_fired=tuple(str(r) for r in evaluation.rules_fired),
        guard=", ".join(evaluation.guard_reasons) or None,
        legs=tuple(_quote_snapshot(watch, s, snapshot.monotonic) for s in watch.symbols),
        underlying=_underlying_snapshot(watch, snapshot),
        mark_close_price=None if metrics is None else metrics.mark_close_price,
        natural_close_price=None if metrics is None else metrics.natural_close_price,
        pnl=None if metrics is None else metrics.pnl,
        profit_fraction=None if metrics is None else metrics.profit_fraction,
        loss_fraction=None if metrics is None else metrics.loss_fraction,
        quantity=watch.trade.quantity,
        exit_action=action,
        exit_quantity=quantity,
        thresholds=thresholds,
        rule_version=evaluation.rule_version,
        dry_run=settings.dry_run,
        at=snapshot.market_time.astimezone(dt.UTC),
    )


def _underlying_snapshot(watch: _Watch, snapshot: MarketSnapshot) -> QuoteSnapshot | None:
    if snapshot.underlying_price is None:
        return None
    quote = watch.quotes.get(watch.trade.underlying)
    if quote is not None:
        return _quote_snapshot(watch, watch.trade.underlying, snapshot.monotonic)
    age = snapshot.underlying_age_seconds or 0.0
    return QuoteSnapshot(
        symbol=watch.trade.underlying,
        bid=None,
        ask=None,
        last=snapshot.underlying_price,
        age_ms=int(age * 1000),
    )


def _quote_snapshot(watch: _Watch, symbol: str, now: float) -> QuoteSnapshot:
    quote = watch.quotes.get(symbol)
    if quote is None:
        return QuoteSnapshot(symbol=symbol, bid=None, ask=None)
    return QuoteSnapshot(
        symbol=symbol,
        bid=quote.bid,
        ask=quote.ask,
        bid_at=quote.bid_at,
        ask_at=quote.ask_at,
        age_ms=int((now - quote.received_at) * 1000),
    )
