"""The types :func:`engine.domain.exit_rules.evaluate` reads and returns.

Split from :mod:`engine.domain.exit_rules` to keep each module small; import them from either.
:class:`WatchState` is the watcher's rule state: :meth:`WatchState.persisted` is the part that
must survive a restart (high-water mark, fired tiers, entry IV, entry underlying price), and
:meth:`WatchState.from_persisted` rebuilds a state from it after a cold start.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import msgspec

from engine.domain.exit_plan import ExitPlan
from engine.domain.guards import TimedQuote
from engine.domain.spread import Spread
from engine.domain.strategy import Strategy

__all__ = [
    "MAX_UNDERLYING_SAMPLES",
    "PRIORITY",
    "UNDERLYING_RULES",
    "Decision",
    "Evaluation",
    "EvaluationInputs",
    "ExitAction",
    "MarketSnapshot",
    "Metrics",
    "PersistedWatchState",
    "PositionFacts",
    "Rule",
    "WatchState",
]

MAX_UNDERLYING_SAMPLES: Final = 512
"""Bound on the spike rule's samples; past it the oldest go first (the window shortens)."""


class Rule(StrEnum):
    STOP_LOSS = "stop_loss"
    UNDERLYING_BREACH = "underlying_breach"
    UNDERLYING_MOVE = "underlying_move"
    UNDERLYING_SPIKE = "underlying_spike"
    SHORT_DELTA = "short_delta"
    EXPIRATION_DAY = "expiration_day"
    MAX_DAYS = "max_days"
    IV_CRUSH = "iv_crush"
    TRAILING_PROFIT = "trailing_profit"
    PROFIT_TARGET = "profit_target"
    LOW_VALUE = "low_value"
    SCALE_OUT = "scale_out"


PRIORITY: Final[tuple[Rule, ...]] = tuple(Rule)
"""The fixed evaluation order (the declaration order of :class:`Rule`)."""

UNDERLYING_RULES: Final = frozenset(
    {
        Rule.UNDERLYING_BREACH,
        Rule.UNDERLYING_MOVE,
        Rule.UNDERLYING_SPIKE,
        Rule.SHORT_DELTA,
        Rule.IV_CRUSH,
    }
)
"""Rules that read the underlying price: a stale underlying holds back only these."""


class Decision(StrEnum):
    """Same values as :class:`engine.messages.Decision` (the domain cannot import messages)."""

    HOLD = "hold"
    EXIT = "exit"
    HELD_BY_GUARD = "held_by_guard"


class ExitAction(StrEnum):
    """Same values as :class:`engine.messages.ExitAction`."""

    PARTIAL = "partial"
    FULL = "full"


# ---------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------


class PositionFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules need about the trade. ``spread`` holds the CURRENT quantity (its
    ``quantity``) and the strategy; ``entry_price`` is the positive per-spread credit or debit."""

    spread: Spread
    entry_price: Decimal
    opening_quantity: int
    opened_at: dt.datetime  # market time, timezone-aware
    managed: bool = True
    entry_short_iv: Decimal | None = None
    entry_underlying_price: Decimal | None = None

    @property
    def strategy(self) -> Strategy:
        return self.spread.strategy

    @property
    def quantity(self) -> int:
        return self.spread.quantity


class PersistedWatchState(msgspec.Struct, frozen=True, kw_only=True):
    """The part of :class:`WatchState` that must survive a restart."""

    high_water_mark: Decimal | None = None
    fired_tiers: tuple[int, ...] = ()
    entry_iv: Decimal | None = None
    entry_underlying_price: Decimal | None = None


class WatchState(msgspec.Struct, frozen=True, kw_only=True):
    """A watcher's rule state. Invariants: ``fired_tiers`` sorted and unique;
    ``stop_first_breach_at`` is None exactly when ``stop_breach_count`` is 0;
    ``underlying_samples`` are (trio time, price) in time order, at most
    :data:`MAX_UNDERLYING_SAMPLES`."""

    high_water_mark: Decimal | None = None  # highest profit fraction seen on a clean tick
    fired_tiers: tuple[int, ...] = ()
    entry_iv: Decimal | None = None
    entry_underlying_price: Decimal | None = None
    trailing_armed: bool = False
    stop_breach_count: int = 0
    stop_first_breach_at: float | None = None
    underlying_samples: tuple[tuple[float, Decimal], ...] = ()

    def persisted(self) -> PersistedWatchState:
        return PersistedWatchState(
            high_water_mark=self.high_water_mark,
            fired_tiers=self.fired_tiers,
            entry_iv=self.entry_iv,
            entry_underlying_price=self.entry_underlying_price,
        )

    @classmethod
    def from_persisted(cls, saved: PersistedWatchState) -> WatchState:
        """A cold-started state: the persisted facts, nothing transient (the trailing rule
        re-arms from the high-water mark; the debounce starts over)."""
        return cls(
            high_water_mark=saved.high_water_mark,
            fired_tiers=tuple(sorted(set(saved.fired_tiers))),
            entry_iv=saved.entry_iv,
            entry_underlying_price=saved.entry_underlying_price,
        )


class MarketSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The quotes one evaluation sees. ``legs`` is aligned with ``position.spread.legs`` (None
    for a leg never quoted). ``monotonic`` is trio time in seconds. ``market_open`` and
    ``session_close`` come from the market calendar (:mod:`engine.calendar`): whether the New
    York session is open at ``market_time``, and when that day's session closes (None on a day
    without one); without a calendar the market counts as open and no close is known."""

    legs: tuple[TimedQuote | None, ...]
    underlying_price: Decimal | None = None
    underlying_age_seconds: float | None = None
    market_time: dt.datetime
    monotonic: float
    market_open: bool = True
    session_close: dt.datetime | None = None


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    """Per-spread prices (close-price convention of :mod:`engine.domain.pricing`) and P&L."""

    mark: Decimal
    natural_value: Decimal
    mark_close_price: Decimal
    natural_close_price: Decimal
    pnl: Decimal
    natural_pnl: Decimal
    pnl_dollars: Decimal  # at the mark, for the current quantity
    natural_pnl_dollars: Decimal
    max_profit: Decimal | None
    max_loss: Decimal | None
    profit_fraction: Decimal | None
    loss_fraction: Decimal | None
    high_water_mark: Decimal | None
    underlying_price: Decimal | None
    short_iv: Decimal | None
    entry_iv: Decimal | None
    short_delta: Decimal | None  # the largest absolute short-leg delta
    days_to_expiration: int | None
    days_in_trade: int


class EvaluationInputs(msgspec.Struct, frozen=True, kw_only=True):
    """Everything :func:`evaluate` read: enough to replay the decision (:func:`replay`)."""

    plan: ExitPlan
    position: PositionFacts
    state: WatchState
    snapshot: MarketSnapshot


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one evaluation. ``rule`` is the deciding rule (the first fired, or the
    first unguarded one for an exit); ``quantity`` the spreads to close (None for a hold);
    ``tiers`` the scale-out tier indexes this exit closes; ``notes`` say why a rule could not
    be evaluated or why nothing was (``missing:<symbol>``, ``custom_strategy``...)."""

    decision: Decision
    rule: Rule | None
    rules_fired: tuple[Rule, ...]
    action: ExitAction | None
    quantity: int | None
    tiers: tuple[int, ...]
    metrics: Metrics | None
    thresholds: dict[str, Any]
    guard_reasons: tuple[str, ...]
    notes: tuple[str, ...]
    new_state: WatchState
    rule_version: str
    inputs: EvaluationInputs

    def to_record(self) -> dict[str, Any]:
        """The evaluation as JSON-ready builtins (Decimals as strings), inputs included."""
        record: dict[str, Any] = msgspec.to_builtins(self)
        return record
