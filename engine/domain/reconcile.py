"""Reconciliation: what the broker's positions mean for the trades we know. Pure.

:func:`reconcile` takes one positions answer, the account's open trades, the mirror's memory of
earlier answers and the policy, and returns the new memory and the actions to take, in order.
PortfolioMirror (``actors/portfolio_mirror.py``) performs them; nothing here does I/O.

**Attribution, per trade, never merged.** The broker reports one net quantity per symbol; our
trades each hold legs. For every symbol the trades' legs are expected to add up to the broker's
net quantity (so a long leg of one trade and a short leg of another on the same contract cancel
at the broker and are both held). Where the broker differs from what is expected:

- it holds *more* in one direction: first, legs of the opposite direction are taken to be gone
  (a short bought back shows as "more long"); what is still unexplained is a position nobody
  opened (adopted, below);
- legs are cut from trades in **reverse priority**: priority goes to trades with no exit in
  flight, then to the oldest (lowest ``trade_id``). So the trade whose exit is working loses its
  legs first (its fill is the likely reason they are gone), else the newest trade does.
  Example: trades A (2 spreads) and B (1 spread, exit in flight) on the same strikes, broker
  holds 2 of each leg: A keeps 2, B holds nothing (the router will close B on its fill). Without
  an exit in flight, B (the newer) would be the one counted missing.

Each trade's claimed legs then say what it holds. A trade never grows: a broker quantity above
what the trades hold is adopted as a new trade, not added to an old one.

**The decision table**, per open trade (``N`` = ``phantom_confirmations``):

=====================================  ======================================================
what the answer shows for the trade    what is done
=====================================  ======================================================
every leg at its full quantity         intact; in sync again if it was out of sync
                                       (``MarkBackInSync``)
every leg, in ratio, at a lower        ``ChangeQuantity`` to the held quantity (partial exit);
quantity                               in sync again if it was out of sync; nothing while an
                                       exit is in flight (the router accounts for its fills)
some legs present, others gone (or     out of sync: ``MarkOutOfSync`` (once per change of the
held out of ratio)                     missing set), left OPEN, quantity unchanged
every leg gone, no exit in flight      one more consecutive confirmation (``MarkMissing``);
                                       the N-th declares it phantom (``DeclarePhantom``: closed
                                       with close reason PHANTOM, realized P&L null)
every leg gone, exit in flight         not counted; confirmations restart from zero
                                       (the router closes it from its fills)
=====================================  ======================================================

and per answer:

======================================  =====================================================
the answer                              what is done
======================================  =====================================================
failed (None: error, timeout, invalid)  **not believed**: mirror untouched, nothing counted
                                        or reset (a failed read says nothing about positions;
                                        counting it would phantom-close every trade after a
                                        few minutes of broker outage), ``AnswerNotBelieved``
empty ("null") while trades are open    **not believed**: mirror untouched; every open trade
                                        counts one confirmation (rows above: "every leg gone")
empty with no trade open                believed: the mirror is emptied
anything else                           believed: ``ReplaceMirror`` (a pure mirror), then the
                                        rows above, then adoption
======================================  =====================================================

Confirmations are *consecutive*: any answer that shows one of the trade's legs resets them.

**Watching.** A managed open trade is announced (``WatchTrade``, once) unless a believed answer
shows every leg gone: on a cold start the pool is rebuilt from broker + database, and when the
broker cannot be read the database is the best knowledge we have (not watching a held spread is
the worse mistake). A watched trade that is no longer open (the router closed it) is forgotten
(``ForgetTrade``). ``notify`` on an action says whether the WatcherPool must hear of it (the
trade is watched).

**Adoption.** Option legs nobody's trade explains are grouped by root and expiration, each group
one spread classified by the domain model. ``adopt_imported`` = ``managed`` | ``unmanaged``
adopts it as an IMPORTED trade (``AdoptSpread``); ``ignore`` leaves it in the mirror only
(``IgnoreSpread``, once per new set of symbols). The entry price per spread is
``|sum of signed cost basis| / (quantity x 100)``; the sign says credit (negative) or debit. An
entry whose sign contradicts the strategy (a credit spread bought for a debit), and a custom
spread (never auto-exited, no price direction), are adopted unmanaged whatever the policy.
Known limit: two imported spreads of one root and expiration form one group, hence one (custom)
trade.

Stock positions are mirrored but never grouped, attributed or adopted.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import Enum
from typing import Protocol, TypeAlias

import msgspec

from engine.brokers import BrokerPosition
from engine.domain.occ import OptionSymbol, is_option_symbol
from engine.domain.pricing import CONTRACT_MULTIPLIER
from engine.domain.spread import Leg, Side, Spread, underlying_of
from engine.domain.strategy import Strategy, is_credit, is_debit
from engine.messages import TradeSnapshot

__all__ = [
    "Action",
    "AdoptSpread",
    "AnswerNotBelieved",
    "ChangeQuantity",
    "DeclarePhantom",
    "ForgetTrade",
    "IgnoreSpread",
    "MarkBackInSync",
    "MarkMissing",
    "MarkOutOfSync",
    "MirrorState",
    "OpenTrade",
    "PositionRow",
    "ReconcileConfig",
    "ReplaceMirror",
    "WatchTrade",
    "entry_price_from_cost_basis",
    "mirror_rows",
    "reconcile",
    "watching",
]

_PRICE_QUANTUM = Decimal("0.0001")


class ReconcileConfig(Protocol):
    """The policy reconcile reads (``engine.config.EngineConfig`` fits)."""

    @property
    def adopt_imported(self) -> str: ...  # "managed" | "unmanaged" | "ignore"

    @property
    def phantom_confirmations(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# Inputs and memory
# ---------------------------------------------------------------------------------------------


class OpenTrade(msgspec.Struct, frozen=True, kw_only=True):
    """One trade that is not CLOSED, as reconcile needs it. ``exit_in_flight``: an exit order is
    working for it (or it is CLOSING), so its legs may vanish for a good reason."""

    snapshot: TradeSnapshot
    exit_in_flight: bool = False

    @property
    def trade_id(self) -> int:
        return self.snapshot.trade_id


class PositionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``portfolio_positions``: one leg as the broker holds it. Invariants:
    ``quantity > 0``; the option fields (expiration, option_type, strike) are all set for an
    option and all None for stock."""

    symbol: str
    underlying: str
    expiration: dt.date | None
    option_type: str | None  # OptionRight value: "call" | "put"
    strike: Decimal | None
    side: Side
    quantity: int
    cost_basis: Decimal | None
    acquired_at: dt.datetime | None = None


class MirrorState(msgspec.Struct, frozen=True, kw_only=True):
    """What reconcile remembers between answers (held by the actor, rebuilt on a cold start).

    ``missing``: consecutive confirmations that every leg of a trade is gone (trade_id -> n,
    1 <= n < phantom_confirmations). ``out_of_sync``: trades announced out of sync, with the
    symbols reported missing. ``watched``: trades the WatcherPool was told to watch.
    ``ignored``: symbols last left unadopted (``adopt_imported = ignore``), to report changes
    only. Treat the containers as read-only."""

    missing: dict[int, int] = {}
    out_of_sync: dict[int, frozenset[str]] = {}
    watched: frozenset[int] = frozenset()
    ignored: frozenset[str] = frozenset()


def watching(state: MirrorState, trade_id: int) -> MirrorState:
    """``state`` with ``trade_id`` watched: for a trade announced outside :func:`reconcile`
    (an adopted trade, whose id only exists once the store inserted it)."""
    return msgspec.structs.replace(state, watched=state.watched | {trade_id})


# ---------------------------------------------------------------------------------------------
# Actions, in the order reconcile emits them
# ---------------------------------------------------------------------------------------------


class ReplaceMirror(msgspec.Struct, frozen=True, kw_only=True):
    """Make the account's position mirror exactly ``rows`` (upsert these, delete the rest)."""

    rows: tuple[PositionRow, ...]


class AnswerNotBelieved(msgspec.Struct, frozen=True, kw_only=True):
    """The answer is not taken at face value: ``reason`` is ``failed`` or ``empty``."""

    reason: str
    open_trades: int


class ChangeQuantity(msgspec.Struct, frozen=True, kw_only=True):
    """The broker holds ``quantity`` (< the trade's) spreads of the trade; ``legs`` at it."""

    trade_id: int
    quantity: int
    previous_quantity: int
    legs: tuple[Leg, ...]
    notify: bool


class WatchTrade(msgspec.Struct, frozen=True, kw_only=True):
    """Announce a managed open trade to the WatcherPool (``trade`` at its current quantity)."""

    trade: TradeSnapshot


class MarkMissing(msgspec.Struct, frozen=True, kw_only=True):
    """Every leg of the trade is gone: ``confirmations`` of ``required`` so far (0 while an exit
    is in flight: not counted)."""

    trade_id: int
    confirmations: int
    required: int
    exit_in_flight: bool


class DeclarePhantom(msgspec.Struct, frozen=True, kw_only=True):
    """Close the trade as PHANTOM (realized P&L null): gone for ``confirmations`` answers."""

    trade_id: int
    confirmations: int
    symbols: tuple[str, ...]
    notify: bool


class MarkOutOfSync(msgspec.Struct, frozen=True, kw_only=True):
    """Some legs are gone, others held: record it, leave the trade OPEN, hold its exits."""

    trade_id: int
    missing_symbols: frozenset[str]
    notify: bool


class MarkBackInSync(msgspec.Struct, frozen=True, kw_only=True):
    trade_id: int
    notify: bool


class ForgetTrade(msgspec.Struct, frozen=True, kw_only=True):
    """A watched trade is no longer open (closed elsewhere): its watcher must stop."""

    trade_id: int
    notify: bool


class AdoptSpread(msgspec.Struct, frozen=True, kw_only=True):
    """Record an IMPORTED trade for positions nobody's trade explains. ``cost_basis`` is the
    signed dollar total of its legs; ``entry_price_suspect``: the sign contradicts the
    strategy (then it is unmanaged)."""

    spread: Spread
    entry_price: Decimal
    cost_basis: Decimal
    managed: bool
    opened_at: dt.datetime | None
    entry_price_suspect: bool = False


class IgnoreSpread(msgspec.Struct, frozen=True, kw_only=True):
    """Positions nobody's trade explains, left unadopted by policy (mirrored only)."""

    spread: Spread
    cost_basis: Decimal


Action: TypeAlias = (
    ReplaceMirror
    | AnswerNotBelieved
    | ChangeQuantity
    | WatchTrade
    | MarkMissing
    | DeclarePhantom
    | MarkOutOfSync
    | MarkBackInSync
    | ForgetTrade
    | AdoptSpread
    | IgnoreSpread
)


# ---------------------------------------------------------------------------------------------
# reconcile
# ---------------------------------------------------------------------------------------------


class _Kind(Enum):
    HELD = "held"
    MISSING = "missing"
    OUT_OF_SYNC = "out_of_sync"


class _Outcome(msgspec.Struct, frozen=True):
    kind: _Kind
    held: int = 0
    missing_symbols: frozenset[str] = frozenset()


_GONE = _Outcome(_Kind.MISSING)


class _Work:
    """The mutable copy of the state one reconcile call builds (never escapes the call)."""

    def __init__(self, state: MirrorState, open_ids: set[int]) -> None:
        self.missing = {k: v for k, v in state.missing.items() if k in open_ids}
        self.out_of_sync = {k: v for k, v in state.out_of_sync.items() if k in open_ids}
        self.watched = set(state.watched)
        self.ignored = state.ignored
        self.actions: list[Action] = []

    def state(self) -> MirrorState:
        return MirrorState(
            missing=self.missing,
            out_of_sync=self.out_of_sync,
            watched=frozenset(self.watched),
            ignored=self.ignored,
        )


def reconcile(
    positions: Sequence[BrokerPosition] | None,
    open_trades: Sequence[OpenTrade],
    state: MirrorState,
    config: ReconcileConfig,
) -> tuple[MirrorState, list[Action]]:
    """One positions answer (None when the read failed) against the account's open trades.

    Returns the new state and the actions to perform, in order (see the module docstring)."""
    trades = sorted(open_trades, key=lambda t: t.trade_id)
    open_ids = {t.trade_id for t in trades}
    work = _Work(state, open_ids)
    for trade_id in sorted(state.watched - open_ids):
        work.actions.append(ForgetTrade(trade_id=trade_id, notify=True))
        work.watched.discard(trade_id)

    if positions is None:
        work.actions.append(AnswerNotBelieved(reason="failed", open_trades=len(trades)))
        for trade in trades:
            _watch(work, trade.snapshot)
        return work.state(), work.actions

    rows = mirror_rows(positions)
    if not rows and trades:
        work.actions.append(AnswerNotBelieved(reason="empty", open_trades=len(trades)))
        for trade in trades:
            _settle(work, trade, _GONE, config, believed=False)
        return work.state(), work.actions

    work.actions.append(ReplaceMirror(rows=rows))
    net = {row.symbol: _signed(row) for row in rows if row.option_type is not None}
    claims, unexplained = _attribute(net, trades)
    for trade in trades:
        _settle(work, trade, _outcome(trade, claims[trade.trade_id]), config, believed=True)
    _adopt(work, rows, unexplained, config)
    return work.state(), work.actions


def mirror_rows(positions: Sequence[BrokerPosition]) -> tuple[PositionRow, ...]:
    """The mirror rows of an answer: one per symbol (duplicates summed), zero quantities
    dropped, sorted by symbol."""
    quantity: dict[str, int] = defaultdict(int)
    cost: dict[str, Decimal] = defaultdict(Decimal)
    acquired: dict[str, dt.datetime | None] = {}
    for position in positions:
        quantity[position.symbol] += position.quantity
        cost[position.symbol] += position.cost_basis
        acquired[position.symbol] = _earliest(acquired.get(position.symbol), position.acquired_at)
    rows = []
    for symbol in sorted(quantity):
        held = quantity[symbol]
        if held == 0:
            continue
        occ = OptionSymbol.parse(symbol) if is_option_symbol(symbol) else None
        rows.append(
            PositionRow(
                symbol=symbol,
                underlying=symbol if occ is None else underlying_of(occ.root),
                expiration=None if occ is None else occ.expiration,
                option_type=None if occ is None else occ.right.value,
                strike=None if occ is None else occ.strike,
                side=Side.LONG if held > 0 else Side.SHORT,
                quantity=abs(held),
                cost_basis=cost[symbol],
                acquired_at=acquired[symbol],
            )
        )
    return tuple(rows)


def _signed(row: PositionRow) -> int:
    return row.quantity if row.side is Side.LONG else -row.quantity


def _earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None or b is None:
        return a or b
    return min(a, b)


# A trade's wish for one symbol: (rank, trade_id, leg index, sign). Lower rank = higher priority.
_Want: TypeAlias = tuple[int, int, int, int]


def _attribute(
    net: Mapping[str, int], trades: Sequence[OpenTrade]
) -> tuple[dict[int, list[int]], dict[str, int]]:
    """Per trade, the contracts of each leg (canonical leg order) the broker's net quantities
    explain; and per symbol, the signed quantity no trade explains."""
    ranked = sorted(trades, key=lambda t: (t.exit_in_flight, t.trade_id))
    claims: dict[int, list[int]] = {}
    wants: dict[str, list[_Want]] = defaultdict(list)
    for rank, trade in enumerate(ranked):
        legs = trade.snapshot.spread().legs
        claims[trade.trade_id] = [leg.quantity for leg in legs]
        for index, leg in enumerate(legs):
            wants[leg.occ].append((rank, trade.trade_id, index, leg.sign))
    unexplained: dict[str, int] = {}
    for symbol in sorted(set(net) | set(wants)):
        entries = wants.get(symbol, [])
        expected = sum(sign * claims[tid][index] for _, tid, index, sign in entries)
        surplus = net.get(symbol, 0) - expected
        if surplus == 0:
            continue
        # More held in `direction` than the trades explain: legs of the other direction are
        # gone first (lowest priority first), and only the rest is unexplained.
        direction = 1 if surplus > 0 else -1
        left = abs(surplus)
        for _, tid, index, sign in sorted(entries, reverse=True):
            if left == 0:
                break
            if sign == -direction:
                cut = min(left, claims[tid][index])
                claims[tid][index] -= cut
                left -= cut
        if left:
            unexplained[symbol] = direction * left
    return claims, unexplained


def _outcome(trade: OpenTrade, claimed: Sequence[int]) -> _Outcome:
    snapshot = trade.snapshot
    legs = snapshot.spread().legs
    ratios = [leg.quantity // snapshot.quantity for leg in legs]
    if not any(claimed):
        return _GONE
    units = [c // r for c, r in zip(claimed, ratios, strict=True)]
    held = min(units)
    if all(c == r * held for c, r in zip(claimed, ratios, strict=True)):
        return _Outcome(_Kind.HELD, held=held)
    best = max(units)
    missing = frozenset(leg.occ for leg, u in zip(legs, units, strict=True) if u < best)
    if not missing:  # held out of ratio without a whole unit's difference: name the short legs
        missing = frozenset(
            leg.occ for leg, c in zip(legs, claimed, strict=True) if c < leg.quantity
        )
    return _Outcome(_Kind.OUT_OF_SYNC, missing_symbols=missing)


def _watch(work: _Work, snapshot: TradeSnapshot) -> None:
    if snapshot.managed and snapshot.trade_id not in work.watched:
        work.actions.append(WatchTrade(trade=snapshot))
        work.watched.add(snapshot.trade_id)


def _settle(
    work: _Work, trade: OpenTrade, outcome: _Outcome, config: ReconcileConfig, *, believed: bool
) -> None:
    snapshot = trade.snapshot
    trade_id = snapshot.trade_id
    if outcome.kind is _Kind.MISSING:
        declared = _count_missing(work, trade, config)
        if not believed and not declared:
            _watch(work, snapshot)  # an empty answer is not believed: the database is
        return
    work.missing.pop(trade_id, None)
    if outcome.kind is _Kind.HELD:
        # While an exit works, fewer spreads held is most likely its fill: the router accounts
        # for it from the order's fills (counting it here too would count it twice).
        if outcome.held != snapshot.quantity and not trade.exit_in_flight:
            spread = snapshot.spread().with_quantity(outcome.held)
            work.actions.append(
                ChangeQuantity(
                    trade_id=trade_id,
                    quantity=outcome.held,
                    previous_quantity=snapshot.quantity,
                    legs=spread.legs,
                    notify=trade_id in work.watched,
                )
            )
            snapshot = msgspec.structs.replace(snapshot, quantity=outcome.held, legs=spread.legs)
        _watch(work, snapshot)
        if work.out_of_sync.pop(trade_id, None) is not None:
            work.actions.append(MarkBackInSync(trade_id=trade_id, notify=trade_id in work.watched))
        return
    _watch(work, snapshot)
    if work.out_of_sync.get(trade_id) != outcome.missing_symbols:
        work.out_of_sync[trade_id] = outcome.missing_symbols
        work.actions.append(
            MarkOutOfSync(
                trade_id=trade_id,
                missing_symbols=outcome.missing_symbols,
                notify=trade_id in work.watched,
            )
        )


def _count_missing(work: _Work, trade: OpenTrade, config: ReconcileConfig) -> bool:
    """Count one confirmation that every leg is gone; True when it declared the trade phantom."""
    trade_id = trade.trade_id
    required = config.phantom_confirmations
    if trade.exit_in_flight:
        work.missing.pop(trade_id, None)
        work.actions.append(
            MarkMissing(trade_id=trade_id, confirmations=0, required=required, exit_in_flight=True)
        )
        return False
    confirmations = work.missing.get(trade_id, 0) + 1
    if confirmations < required:
        work.missing[trade_id] = confirmations
        work.actions.append(
            MarkMissing(
                trade_id=trade_id,
                confirmations=confirmations,
                required=required,
                exit_in_flight=False,
            )
        )
        return False
    work.missing.pop(trade_id, None)
    work.out_of_sync.pop(trade_id, None)
    work.actions.append(
        DeclarePhantom(
            trade_id=trade_id,
            confirmations=confirmations,
            symbols=tuple(leg.occ for leg in trade.snapshot.spread().legs),
            notify=trade_id in work.watched,
        )
    )
    work.watched.discard(trade_id)
    return True


def _adopt(
    work: _Work,
    rows: Sequence[PositionRow],
    unexplained: Mapping[str, int],
    config: ReconcileConfig,
) -> None:
    by_symbol = {row.symbol: row for row in rows}
    groups: dict[tuple[str, dt.date], list[str]] = defaultdict(list)
    for symbol in unexplained:
        occ = OptionSymbol.parse(symbol)
        groups[(occ.root, occ.expiration)].append(symbol)
    ignored: set[str] = set()
    for key in sorted(groups):
        symbols = groups[key]
        legs = [Leg.from_position(symbol, unexplained[symbol]) for symbol in symbols]
        spread = Spread.from_legs(legs)
        cost = sum((_cost_share(by_symbol[s], unexplained[s]) for s in symbols), Decimal(0))
        if config.adopt_imported == "ignore":
            ignored.update(symbols)
            if not set(symbols) <= work.ignored:
                work.actions.append(IgnoreSpread(spread=spread, cost_basis=cost))
            continue
        entry, suspect = entry_price_from_cost_basis(spread, cost)
        managed = (
            config.adopt_imported == "managed"
            and spread.strategy is not Strategy.CUSTOM
            and not suspect
        )
        opened = [by_symbol[s].acquired_at for s in symbols]
        work.actions.append(
            AdoptSpread(
                spread=spread,
                entry_price=entry,
                cost_basis=cost,
                managed=managed,
                opened_at=min((t for t in opened if t is not None), default=None),
                entry_price_suspect=suspect,
            )
        )
    work.ignored = frozenset(ignored)


def _cost_share(row: PositionRow, contracts: int) -> Decimal:
    """The part of a position's cost basis that ``contracts`` of it carry (the broker reports
    one total per symbol; part of it may belong to our trades)."""
    if row.cost_basis is None or row.quantity == 0:
        return Decimal(0)
    return row.cost_basis * abs(contracts) / row.quantity


def entry_price_from_cost_basis(spread: Spread, cost_basis: Decimal) -> tuple[Decimal, bool]:
    """Entry price per spread (positive, per share) from the signed dollar cost basis of all
    the spread's legs: ``|cost| / (quantity x 100)``. The second value is True when the sign
    contradicts the strategy (a credit strategy whose legs cost a debit, or the reverse)."""
    per_spread = cost_basis / (spread.quantity * CONTRACT_MULTIPLIER)
    suspect = (is_credit(spread.strategy) and per_spread > 0) or (
        is_debit(spread.strategy) and per_spread < 0
    )
    return abs(per_spread).quantize(_PRICE_QUANTUM), suspect
