"""Exit plan defaults per strategy and per-trade overrides from JSON/TOML values."""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal

import msgspec
import pytest

from engine.domain import Strategy
from engine.domain.exit_plan import (
    RULE_VERSION,
    ExitPlan,
    ScaleOutTier,
    StopBasis,
    default_plan,
    plan_with_overrides,
)
from engine.errors import ConfigError

D = Decimal
CREDIT = [
    Strategy.BULL_PUT_CREDIT,
    Strategy.BEAR_CALL_CREDIT,
    Strategy.IRON_CONDOR,
    Strategy.SHORT_PUT,
    Strategy.SHORT_CALL,
]
DEBIT = [Strategy.BULL_CALL_DEBIT, Strategy.BEAR_PUT_DEBIT, Strategy.LONG_CALL, Strategy.LONG_PUT]


@pytest.mark.parametrize("strategy", CREDIT)
def test_credit_defaults(strategy: Strategy) -> None:
    plan = default_plan(strategy)
    assert plan.profit_target == D("0.50")
    assert (plan.stop_loss, plan.stop_loss_basis) == (D("1.0"), StopBasis.CREDIT)
    assert (plan.stop_debounce_ticks, plan.stop_debounce_seconds) == (3, D(2))
    assert (plan.trailing_arm, plan.trailing_giveback) == (D("0.25"), D("0.10"))
    assert plan.scale_out_tiers == ()
    assert (plan.dte_exit_days, plan.dte_exit_time) == (2, dt.time(15, 50))
    assert plan.low_value_price == D("0.05")
    assert (plan.iv_crush_ratio, plan.iv_crush_min_profit) == (D("0.85"), D("0.15"))
    off = (
        plan.underlying_breach_buffer,
        plan.underlying_move_fraction,
        plan.underlying_spike_fraction,
        plan.max_days_in_trade,
        plan.short_delta_max,
    )
    assert off == (None,) * 5
    assert (plan.max_quote_age_seconds, plan.max_relative_width) == (D(10), D("0.5"))


@pytest.mark.parametrize("strategy", DEBIT)
def test_debit_defaults(strategy: Strategy) -> None:
    plan = default_plan(strategy)
    assert plan.profit_target == D("0.60")
    assert (plan.stop_loss, plan.stop_loss_basis) == (D("0.50"), StopBasis.MAX_LOSS)
    assert (plan.trailing_arm, plan.dte_exit_days) == (D("0.25"), 2)
    assert (plan.low_value_price, plan.iv_crush_ratio) == (None, None)


def test_custom_plan_has_every_rule_off() -> None:
    plan = default_plan(Strategy.CUSTOM)
    rules = ("profit_target", "stop_loss", "trailing_arm", "dte_exit_days", "low_value_price")
    assert all(getattr(plan, name) is None for name in rules)
    assert plan == ExitPlan()


def test_rule_version_is_named() -> None:
    assert RULE_VERSION.startswith("exit-rules/")


def test_overrides_from_json_values() -> None:
    base = default_plan(Strategy.BULL_PUT_CREDIT)
    plan = plan_with_overrides(
        base,
        msgspec.json.decode(
            b'{"profit_target": 0.65, "stop_loss": "2", "stop_loss_basis": "max_loss",'
            b' "stop_debounce_ticks": 5, "scale_out_tiers": [[0.3, 0.5], [0.6, 0.25]],'
            b' "dte_exit_time": "15:30", "iv_crush_ratio": null, "max_days_in_trade": 21.0,'
            b' "underlying_breach_buffer": -0.005}'
        ),
    )
    assert plan.profit_target == D("0.65")  # the float's shortest repr, not its binary value
    assert (plan.stop_loss, plan.stop_loss_basis) == (D(2), StopBasis.MAX_LOSS)
    assert plan.stop_debounce_ticks == 5
    assert plan.scale_out_tiers == (
        ScaleOutTier(D("0.3"), D("0.5")),
        ScaleOutTier(D("0.6"), D("0.25")),
    )
    assert plan.dte_exit_time == dt.time(15, 30)
    assert plan.iv_crush_ratio is None
    assert plan.max_days_in_trade == 21
    assert plan.underlying_breach_buffer == D("-0.005")
    assert plan.low_value_price == base.low_value_price  # untouched


def test_overrides_from_toml_values() -> None:
    doc = tomllib.loads(
        "profit_target = 0.4\nlow_value_price = false\ndte_exit_time = 15:45:00\n"
        "scale_out_tiers = [{profit_fraction = 0.25, close_fraction = 0.5}]\n"
    )
    plan = plan_with_overrides(default_plan(Strategy.IRON_CONDOR), doc)
    assert plan.profit_target == D("0.4")
    assert plan.low_value_price is None  # TOML has no null: false turns a rule off
    assert plan.dte_exit_time == dt.time(15, 45)
    assert plan.scale_out_tiers == (ScaleOutTier(D("0.25"), D("0.5")),)


def test_no_overrides_is_the_same_plan() -> None:
    base = default_plan(Strategy.BULL_CALL_DEBIT)
    assert plan_with_overrides(base, {}) is base


def test_plan_round_trips_through_json_with_tiers_as_pairs() -> None:
    plan = plan_with_overrides(ExitPlan(), {"scale_out_tiers": [[0.5, 0.5]]})
    encoded = msgspec.json.encode(plan)
    assert b'"scale_out_tiers":[["0.5","0.5"]]' in encoded
    assert msgspec.json.decode(encoded, type=ExitPlan) == plan


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown exit plan override 'profit_targt'"):
        plan_with_overrides(ExitPlan(), {"profit_targt": 0.5})


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("profit_target", "half", "profit_target"),
        ("profit_target", True, "profit_target"),
        ("profit_target", 0, "profit_target"),
        ("profit_target", -0.5, "profit_target"),
        ("profit_target", "NaN", "profit_target"),
        ("profit_target", [0.5], "profit_target"),
        ("stop_loss_basis", "credits", "stop_loss_basis"),
        ("stop_loss_basis", 1, "stop_loss_basis"),
        ("stop_debounce_ticks", 0, "stop_debounce_ticks"),
        ("stop_debounce_ticks", 2.5, "stop_debounce_ticks"),
        ("stop_debounce_seconds", -1, "stop_debounce_seconds"),
        ("iv_crush_ratio", 1.5, "iv_crush_ratio"),
        ("short_delta_max", 0, "short_delta_max"),
        ("dte_exit_days", -1, "dte_exit_days"),
        ("dte_exit_time", "25:00", "dte_exit_time"),
        ("dte_exit_time", 1550, "dte_exit_time"),
        ("dte_exit_time", "15:50-05:00", "dte_exit_time"),
        ("scale_out_tiers", 0.5, "scale_out_tiers"),
        ("scale_out_tiers", [[0.5]], r"scale_out_tiers\[0\]"),
        ("scale_out_tiers", [[0.5, 0.5], [0.6, 1.5]], r"scale_out_tiers\[1\].close_fraction"),
        ("scale_out_tiers", [{"profit_fraction": 0.5, "close": 0.5}], r"scale_out_tiers\[0\]"),
        ("underlying_breach_buffer", -1, "underlying_breach_buffer"),
        ("max_quote_age_seconds", 0, "max_quote_age_seconds"),
        ("max_relative_width", None, "max_relative_width"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, named: str) -> None:
    with pytest.raises(ConfigError, match=f"exit plan override {named}:"):
        plan_with_overrides(default_plan(Strategy.BULL_PUT_CREDIT), {key: value})


def test_every_field_is_overridable() -> None:
    values: dict[str, object] = {
        name: getattr(default_plan(Strategy.BULL_PUT_CREDIT), name)
        for name in ExitPlan.__struct_fields__
    }
    json_values = msgspec.json.decode(msgspec.json.encode(values))
    assert plan_with_overrides(ExitPlan(), json_values) == default_plan(Strategy.BULL_PUT_CREDIT)
