"""The exit plan: every threshold the exit rules compare against, per-strategy defaults, and
per-trade overrides (DESIGN section 5, issue 4).

A plan is a frozen :class:`ExitPlan`. Fractions are ``Decimal`` fractions, not percents
(``0.5`` = 50 %). A rule whose threshold is None is off. The rules themselves, their priority
and which price drives them are in :mod:`engine.domain.exit_rules`.

Defaults (:func:`default_plan`), from the systems spreadwatch replaces:

- ``profit_target``: credit 0.50, debit 0.60 of max profit.
- ``stop_loss``: credit strategies ``1.0`` on the ``credit`` basis (the loss reaches 100 % of the
  credit received, capped at max loss); debit strategies ``0.5`` on the ``max_loss`` basis.
  Debounced: the condition must hold on ``stop_debounce_ticks`` (3) consecutive evaluations
  spanning at least ``stop_debounce_seconds`` (2).
- ``trailing_arm`` 0.25 / ``trailing_giveback`` 0.10: arms once the profit fraction has reached
  25 % of max profit; fires when it has fallen 10 percentage points below its high-water mark.
- ``scale_out_tiers``: none. Each tier is (profit fraction, fraction of the OPENING quantity).
- ``dte_exit_days`` 2 / ``dte_exit_time`` 15:50: read literally as "days to expiration at or
  below 2 AND New York time at or after 15:50": on each of the last three calendar days (2, 1
  and 0 days to expiration) the exit fires from 15:50 on, and not before 15:50. A position past
  its expiration date fires at any time. To exit on DTE alone at any hour, set the time to
  ``"00:00"``; to exit on expiration day only, set the days to 0. The time is for a regular
  day closing at 16:00; on a half day it keeps its distance before the early close (15:50 is
  ten minutes before the close, so 12:50 when the market closes at 13:00), from the New York
  calendar (:mod:`engine.calendar`). Days to expiration are calendar days, not sessions.
- ``low_value_price`` 0.05 (credit only): the mark close price is at or below it.
- ``iv_crush_ratio`` 0.85 with ``iv_crush_min_profit`` 0.15 (credit only).
- Off by default: ``underlying_breach_buffer``, ``underlying_move_fraction``,
  ``underlying_spike_fraction`` (within ``underlying_spike_seconds``), ``max_days_in_trade``,
  ``short_delta_max``.
- Quote guards: ``max_quote_age_seconds`` 10 (market-data age, measured by the caller on trio
  time); ``max_relative_width`` 0.5, i.e. a leg whose ``(ask - bid) / mid`` exceeds 0.5 (a
  0.80 x 1.30 market) is too wide to act on; ``width_floor`` 0.10: a leg whose width is at most
  0.10 is never "wide", because on cheap options one or two ticks are a large fraction of the
  price (without the floor, a 0.05 x 0.10 short leg would block every low-value close). A long
  leg with a zero bid is exempt from the width guard: its bid is a valid quote. Crossed quotes
  (bid > ask) are always guarded; a locked quote (bid = ask) is not.
- ``risk_free_rate`` 0.04: used only by the Black-Scholes model for IV and delta.

Not here, on purpose: DESIGN's market-context gates (VIX regime, gamma-exposure flip) need data
the engine does not have yet; the order re-pricing knobs belong to the order side.

Overrides (:func:`plan_with_overrides`) arrive as JSON values from TOML scenario files and the
database: numbers, strings, lists, booleans. ``None`` or ``false`` turns an optional rule off.
Unknown keys and bad values raise :class:`engine.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

import msgspec

from engine.domain.strategy import Strategy, is_credit, is_debit
from engine.errors import ConfigError

__all__ = [
    "RULE_VERSION",
    "ExitPlan",
    "ScaleOutTier",
    "StopBasis",
    "default_plan",
    "plan_with_overrides",
]

RULE_VERSION: Final = "exit-rules/2"  # 2: the expiration-day cutoff moves with an early close
"""Names the rule code and defaults that decided; recorded with each decision. Bump it when a
rule's meaning, priority or a default changes, so old decisions replay under the right rules."""

D = Decimal


class StopBasis(StrEnum):
    CREDIT = "credit"  # stop when the loss reaches stop_loss x the credit received (capped)
    MAX_LOSS = "max_loss"  # stop when the loss reaches stop_loss x max loss


class ScaleOutTier(msgspec.Struct, frozen=True, array_like=True):
    """Close ``close_fraction`` of the opening quantity once the profit fraction reaches
    ``profit_fraction``. Encoded as a pair ``[profit_fraction, close_fraction]``."""

    profit_fraction: Decimal
    close_fraction: Decimal


class ExitPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One trade's exit thresholds. None turns a rule off. See the module docstring."""

    profit_target: Decimal | None = None
    stop_loss: Decimal | None = None
    stop_loss_basis: StopBasis = StopBasis.MAX_LOSS
    stop_debounce_ticks: int = 3
    stop_debounce_seconds: Decimal = D(2)
    trailing_arm: Decimal | None = None
    trailing_giveback: Decimal = D("0.10")
    scale_out_tiers: tuple[ScaleOutTier, ...] = ()
    dte_exit_days: int | None = None
    dte_exit_time: dt.time = dt.time(15, 50)
    low_value_price: Decimal | None = None
    iv_crush_ratio: Decimal | None = None
    iv_crush_min_profit: Decimal = D("0.15")
    underlying_breach_buffer: Decimal | None = None
    underlying_move_fraction: Decimal | None = None
    underlying_spike_fraction: Decimal | None = None
    underlying_spike_seconds: Decimal = D(60)
    max_days_in_trade: int | None = None
    short_delta_max: Decimal | None = None
    risk_free_rate: Decimal = D("0.04")
    max_quote_age_seconds: Decimal = D(10)
    max_relative_width: Decimal = D("0.5")
    width_floor: Decimal = D("0.10")
    # How the closing order is priced (the OrderRouter reads these): a limit at the mark,
    # walked ``order_steps`` times, every ``order_step_seconds``, toward the natural price, up
    # to ``order_price_cap`` of the way (1 = the natural); a market order only if allowed.
    order_steps: int = 4
    order_step_seconds: Decimal = D(5)
    order_price_cap: Decimal = D(1)
    allow_market_order: bool = False


_NEVER = ExitPlan()  # every rule off: custom spreads are mirrored, never auto-exited

_COMMON: dict[str, Any] = {
    "trailing_arm": D("0.25"),
    "trailing_giveback": D("0.10"),
    "dte_exit_days": 2,
    "dte_exit_time": dt.time(15, 50),
}

_CREDIT = ExitPlan(
    profit_target=D("0.50"),
    stop_loss=D("1.0"),
    stop_loss_basis=StopBasis.CREDIT,
    low_value_price=D("0.05"),
    iv_crush_ratio=D("0.85"),
    iv_crush_min_profit=D("0.15"),
    **_COMMON,
)
_DEBIT = ExitPlan(
    profit_target=D("0.60"),
    stop_loss=D("0.50"),
    stop_loss_basis=StopBasis.MAX_LOSS,
    **_COMMON,
)


def default_plan(strategy: Strategy) -> ExitPlan:
    """The default plan of a strategy: credit or debit defaults; every rule off for custom."""
    if is_credit(strategy):
        return _CREDIT
    if is_debit(strategy):
        return _DEBIT
    return _NEVER


# ---------------------------------------------------------------------------------------------
# Overrides: one parser per field, each given the key (for the error) and the JSON value.
# ---------------------------------------------------------------------------------------------


def _bad(key: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"exit plan override {key}: expected {expected}, got {value!r}")


def _decimal(key: str, value: object) -> Decimal:
    # bool is an int in Python; "true" is never a number in a plan.
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _bad(key, value, "a number")
    try:
        # str() of a float is its shortest repr: 0.1 becomes Decimal("0.1"), not the binary sum.
        number = value if isinstance(value, Decimal) else D(str(value).strip())
    except InvalidOperation as exc:
        raise _bad(key, value, "a number") from exc
    if not number.is_finite():
        raise _bad(key, value, "a finite number")
    return number


def _ranged(
    low: Decimal | None, high: Decimal | None, *, low_open: bool = False
) -> Callable[[str, object], Decimal]:
    def parse(key: str, value: object) -> Decimal:
        number = _decimal(key, value)
        too_low = low is not None and (number <= low if low_open else number < low)
        if too_low or (high is not None and number > high):
            left = "(" if low_open else "["
            raise _bad(key, value, f"a number in {left}{low}, {high}]")
        return number

    return parse


def _optional(parse: Callable[[str, object], Any]) -> Callable[[str, object], Any]:
    def parse_optional(key: str, value: object) -> Any:
        # TOML has no null: false is how a scenario file turns a rule off.
        if value is None or value is False:
            return None
        return parse(key, value)

    return parse_optional


def _integer(low: int) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        number = _decimal(key, value)
        if number != number.to_integral_value() or number < low:
            raise _bad(key, value, f"a whole number >= {low}")
        return int(number)

    return parse


def _time_of_day(key: str, value: object) -> dt.time:
    if isinstance(value, dt.time):  # TOML local times arrive parsed
        return value
    if not isinstance(value, str):
        raise _bad(key, value, 'a New York time of day "HH:MM"')
    try:
        parsed = dt.time.fromisoformat(value.strip())
    except ValueError as exc:
        raise _bad(key, value, 'a New York time of day "HH:MM"') from exc
    if parsed.tzinfo is not None:
        raise _bad(key, value, "a time without a zone (it is always New York time)")
    return parsed


def _stop_basis(key: str, value: object) -> StopBasis:
    try:
        return StopBasis(value if isinstance(value, str) else "")
    except ValueError as exc:
        raise _bad(key, value, "one of " + ", ".join(repr(b.value) for b in StopBasis)) from exc


_FRACTION = _ranged(D(0), D(1), low_open=True)  # (0, 1]
_POSITIVE = _ranged(D(0), None, low_open=True)  # (0, inf)
_NON_NEGATIVE = _ranged(D(0), None)  # [0, inf)


def _tiers(key: str, value: object) -> tuple[ScaleOutTier, ...]:
    if value is None or value is False:
        return ()
    if not isinstance(value, list | tuple):
        raise _bad(key, value, "a list of [profit_fraction, close_fraction] pairs")
    tiers = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if isinstance(item, Mapping):
            unknown = set(item) - {"profit_fraction", "close_fraction"}
            if unknown or len(item) != 2:
                raise _bad(where, item, "{profit_fraction = ..., close_fraction = ...}")
            pair: tuple[object, object] = (item["profit_fraction"], item["close_fraction"])
        elif isinstance(item, list | tuple) and len(item) == 2:
            pair = (item[0], item[1])
        elif isinstance(item, ScaleOutTier):
            pair = (item.profit_fraction, item.close_fraction)
        else:
            raise _bad(where, item, "a pair [profit_fraction, close_fraction]")
        tiers.append(
            ScaleOutTier(
                profit_fraction=_POSITIVE(f"{where}.profit_fraction", pair[0]),
                close_fraction=_FRACTION(f"{where}.close_fraction", pair[1]),
            )
        )
    # Tiers are kept in the order given: their index is what "fired" is persisted as.
    return tuple(tiers)


def _boolean(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"exit plan override {key!r}: expected true or false, got {value!r}")


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "profit_target": _optional(_POSITIVE),
    "stop_loss": _optional(_POSITIVE),
    "stop_loss_basis": _stop_basis,
    "stop_debounce_ticks": _integer(1),
    "stop_debounce_seconds": _NON_NEGATIVE,
    "trailing_arm": _optional(_POSITIVE),
    "trailing_giveback": _POSITIVE,
    "scale_out_tiers": _tiers,
    "dte_exit_days": _optional(_integer(0)),
    "dte_exit_time": _time_of_day,
    "low_value_price": _optional(_decimal),
    "iv_crush_ratio": _optional(_FRACTION),
    "iv_crush_min_profit": _decimal,
    # Negative: fire before the strike is reached (an early warning); bounded to stay sane.
    "underlying_breach_buffer": _optional(_ranged(D(-1), D(1), low_open=True)),
    "underlying_move_fraction": _optional(_POSITIVE),
    "underlying_spike_fraction": _optional(_POSITIVE),
    "underlying_spike_seconds": _POSITIVE,
    "max_days_in_trade": _optional(_integer(0)),
    "short_delta_max": _optional(_FRACTION),
    "risk_free_rate": _ranged(D(-1), D(1)),
    "max_quote_age_seconds": _POSITIVE,
    "max_relative_width": _POSITIVE,
    "width_floor": _NON_NEGATIVE,
    "order_steps": _integer(0),
    "order_step_seconds": _POSITIVE,
    "order_price_cap": _ranged(D(0), D(1)),
    "allow_market_order": _boolean,
}
assert set(_PARSERS) == set(ExitPlan.__struct_fields__), "every plan field needs a parser"


def plan_with_overrides(plan: ExitPlan, overrides: Mapping[str, object]) -> ExitPlan:
    """``plan`` with the given fields replaced. Keys are :class:`ExitPlan` field names; values
    are JSON values (or already-typed ones). Raises ConfigError naming the first bad key."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        parse = _PARSERS.get(key)
        if parse is None:
            known = ", ".join(sorted(_PARSERS))
            raise ConfigError(f"unknown exit plan override {key!r} (known: {known})")
        changes[key] = parse(key, value)
    return msgspec.structs.replace(plan, **changes) if changes else plan
