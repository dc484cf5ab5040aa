"""reconcile(): every row of the decision table in engine/domain/reconcile.py, table style."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

import msgspec
import pytest

from engine.brokers import BrokerPosition
from engine.config import EngineConfig
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
    ReplaceMirror,
    WatchTrade,
    entry_price_from_cost_basis,
    reconcile,
    watching,
)
from engine.domain.spread import Leg, Side, Spread
from engine.domain.strategy import Strategy
from engine.messages import TradeOrigin, TradeSnapshot

# Bull put 500/495 and 495/490 (adjacent: they share the 495 put), a bear call 520/525.
SP500 = "SPY240621P00500000"
LP495 = "SPY240621P00495000"
LP490 = "SPY240621P00490000"
SC520 = "SPY240621C00520000"
LC525 = "SPY240621C00525000"
LC500 = "SPY240621C00500000"
QQQ_P = "QQQ240621P00400000"

CFG = EngineConfig(phantom_confirmations=3)
OPENED = dt.datetime(2024, 6, 3, 14, 30, tzinfo=dt.UTC)


def pos(symbol: str, quantity: int, cost: str = "0") -> BrokerPosition:
    return BrokerPosition(symbol=symbol, quantity=quantity, cost_basis=Decimal(cost))


def trade(
    trade_id: int,
    legs: dict[str, int],
    *,
    managed: bool = True,
    exit_in_flight: bool = False,
) -> OpenTrade:
    """A trade holding ``legs`` (symbol -> signed contracts for the whole trade)."""
    domain_legs = tuple(Leg.from_position(s, q) for s, q in legs.items())
    spread = Spread.from_legs(domain_legs)
    snapshot = TradeSnapshot(
        trade_id=trade_id,
        account_id="VA1",
        underlying=spread.underlying,
        strategy=spread.strategy,
        legs=spread.legs,
        quantity=spread.quantity,
        opening_quantity=spread.quantity,
        entry_price=Decimal("1.00"),
        origin=TradeOrigin.ENGINE,
        managed=managed,
        opened_at=OPENED,
    )
    return OpenTrade(snapshot=snapshot, exit_in_flight=exit_in_flight)


def bull_put(trade_id: int, quantity: int = 1, **kw: bool) -> OpenTrade:
    return trade(trade_id, {SP500: -quantity, LP495: quantity}, **kw)


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def of(actions: Sequence[Action], cls: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, cls)]


def watched(*trade_ids: int) -> MirrorState:
    return MirrorState(watched=frozenset(trade_ids))


# ---------------------------------------------------------------------------------------------
# Per trade: intact, fewer spreads, out of sync, gone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "positions", "expected"),
    [
        ("intact", [pos(SP500, -2), pos(LP495, 2)], ["ReplaceMirror"]),
        ("partial exit", [pos(SP500, -1), pos(LP495, 1)], ["ReplaceMirror", "ChangeQuantity"]),
        ("long leg gone", [pos(SP500, -2)], ["ReplaceMirror", "MarkOutOfSync"]),
        ("short leg gone", [pos(LP495, 2)], ["ReplaceMirror", "MarkOutOfSync"]),
        ("out of ratio", [pos(SP500, -2), pos(LP495, 1)], ["ReplaceMirror", "MarkOutOfSync"]),
        ("all gone", [pos(SC520, -1), pos(LC525, 1)], ["ReplaceMirror", "MarkMissing"]),
        ("empty answer", [], ["AnswerNotBelieved", "MarkMissing"]),
        ("failed answer", None, ["AnswerNotBelieved"]),
    ],
)
def test_decision_table_for_one_watched_trade(
    case: str, positions: list[BrokerPosition] | None, expected: list[str]
) -> None:
    config = EngineConfig(phantom_confirmations=3, adopt_imported="ignore")
    _, actions = reconcile(positions, [bull_put(1, 2)], watched(1), config)
    assert [k for k in kinds(actions) if k != "IgnoreSpread"] == expected, case


def test_partial_exit_changes_quantity_with_legs_at_the_new_quantity() -> None:
    state, actions = reconcile([pos(SP500, -1), pos(LP495, 1)], [bull_put(1, 3)], watched(1), CFG)
    (change,) = of(actions, ChangeQuantity)
    assert (change.trade_id, change.quantity, change.previous_quantity) == (1, 1, 3)
    assert {(leg.occ, leg.signed_quantity) for leg in change.legs} == {(SP500, -1), (LP495, 1)}
    assert change.notify
    assert not of(actions, AdoptSpread)
    assert state.missing == {}


def test_a_trade_never_grows_the_surplus_is_adopted() -> None:
    positions = [pos(SP500, -3, "-300"), pos(LP495, 3, "150")]
    _, actions = reconcile(positions, [bull_put(1, 2)], watched(1), CFG)
    assert not of(actions, ChangeQuantity)
    (adopt,) = of(actions, AdoptSpread)
    assert adopt.spread.quantity == 1
    # The surplus carries its share of the cost basis: (-100 + 50) / (1 x 100).
    assert adopt.entry_price == Decimal("0.50")


# ---------------------------------------------------------------------------------------------
# Two trades on the same strikes: attributed per trade, never merged
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "a_flight", "b_flight", "a_expect", "b_expect"),
    [
        # broker holds 3: A (2) and B (1) both intact
        (3, False, False, None, None),
        # broker holds 2, no exit in flight: the newest (B) is the one missing
        (2, False, False, None, "missing"),
        # broker holds 2, B's exit in flight: B loses its legs, not counted toward phantom
        (2, False, True, None, "missing_in_flight"),
        # broker holds 2, A's partial exit in flight: A holds 1 now, but its fill is the
        # router's to account (from the order's fills), so the mirror changes nothing
        (2, True, False, None, None),
        # broker holds 1, A's exit in flight: A loses both, B (priority) keeps its one
        (1, True, False, "missing_in_flight", None),
    ],
)
def test_same_strikes_two_trades_attributed_per_trade(
    held: int,
    a_flight: bool,
    b_flight: bool,
    a_expect: int | str | None,
    b_expect: int | str | None,
) -> None:
    a = bull_put(1, 2, exit_in_flight=a_flight)
    b = bull_put(2, 1, exit_in_flight=b_flight)
    positions = [pos(SP500, -held), pos(LP495, held)]
    _, actions = reconcile(positions, [a, b], watched(1, 2), CFG)
    assert not of(actions, AdoptSpread)  # nothing is merged or left over
    for trade_id, expect in ((1, a_expect), (2, b_expect)):
        changes = [c for c in of(actions, ChangeQuantity) if c.trade_id == trade_id]
        missing = [m for m in of(actions, MarkMissing) if m.trade_id == trade_id]
        if expect is None:
            assert not changes and not missing
        elif isinstance(expect, int):
            assert [c.quantity for c in changes] == [expect] and not missing
        else:
            assert not changes and len(missing) == 1
            assert missing[0].exit_in_flight == (expect == "missing_in_flight")
            assert missing[0].confirmations == (0 if missing[0].exit_in_flight else 1)


def test_same_strikes_surplus_becomes_a_third_trade() -> None:
    positions = [pos(SP500, -4, "-400"), pos(LP495, 4, "200")]
    _, actions = reconcile(positions, [bull_put(1, 2), bull_put(2, 1)], watched(1, 2), CFG)
    assert not of(actions, ChangeQuantity) and not of(actions, MarkMissing)
    (adopt,) = of(actions, AdoptSpread)
    assert adopt.spread.quantity == 1


def test_adjacent_spreads_net_out_at_the_broker_and_are_both_held() -> None:
    # A: -500 +495; B: -495 +490. The broker nets the 495 put to zero and does not list it.
    a = trade(1, {SP500: -1, LP495: 1})
    b = trade(2, {LP495: -1, LP490: 1})
    _, actions = reconcile([pos(SP500, -1), pos(LP490, 1)], [a, b], watched(1, 2), CFG)
    assert kinds(actions) == ["ReplaceMirror"]
    # B closed at the broker: the 495 shows +1 (A's long), the 490 is gone.
    _, actions = reconcile([pos(SP500, -1), pos(LP495, 1)], [a, b], watched(1, 2), CFG)
    assert [(m.trade_id, m.confirmations) for m in of(actions, MarkMissing)] == [(2, 1)]
    assert not of(actions, MarkOutOfSync) and not of(actions, AdoptSpread)


# ---------------------------------------------------------------------------------------------
# Phantoms: N consecutive confirmations, never with an exit in flight
# ---------------------------------------------------------------------------------------------


def _run(
    answers: Sequence[list[BrokerPosition] | None],
    trades: list[OpenTrade],
    config: EngineConfig = CFG,
    state: MirrorState | None = None,
) -> tuple[MirrorState, list[list[Action]]]:
    state = state or watched(*(t.trade_id for t in trades))
    history = []
    for answer in answers:
        state, actions = reconcile(answer, trades, state, config)
        history.append(actions)
    return state, history


GONE: list[BrokerPosition] = [pos(SC520, -1), pos(LC525, 1)]  # non-empty, the trade absent
HELD: list[BrokerPosition] = [pos(SP500, -1), pos(LP495, 1), pos(SC520, -1), pos(LC525, 1)]


@pytest.mark.parametrize(
    ("answers", "phantom_at"),
    [
        ([GONE, GONE, GONE], 2),
        ([[], [], []], 2),  # "null" answers count as confirmations
        ([GONE, [], GONE], 2),
        ([GONE, GONE], None),  # fewer than N
        ([GONE, GONE, HELD, GONE, GONE], None),  # not consecutive: reset by a held answer
        ([GONE, None, GONE, None, GONE], 4),  # failed answers neither count nor reset
        ([None] * 10, None),  # a broker outage never makes a phantom
    ],
)
def test_phantom_only_after_consecutive_confirmations(
    answers: list[list[BrokerPosition] | None], phantom_at: int | None
) -> None:
    config = EngineConfig(phantom_confirmations=3, adopt_imported="ignore")
    _, history = _run(answers, [bull_put(7)], config)
    declared = [i for i, actions in enumerate(history) if of(actions, DeclarePhantom)]
    assert declared == ([] if phantom_at is None else [phantom_at])
    if phantom_at is not None:
        (phantom,) = of(history[phantom_at], DeclarePhantom)
        assert phantom.trade_id == 7 and phantom.confirmations == 3 and phantom.notify
        assert set(phantom.symbols) == {SP500, LP495}


def test_phantom_counts_show_in_state_and_the_phantom_is_unwatched() -> None:
    state, _ = _run([GONE, GONE], [bull_put(7)])
    assert state.missing == {7: 2}
    state, actions = reconcile(GONE, [bull_put(7)], state, CFG)
    assert of(actions, DeclarePhantom)
    assert state.missing == {} and 7 not in state.watched


def test_never_phantom_with_an_exit_in_flight() -> None:
    state, history = _run([GONE] * 6, [bull_put(7, exit_in_flight=True)])
    assert not any(of(actions, DeclarePhantom) for actions in history)
    assert all(m.confirmations == 0 for actions in history for m in of(actions, MarkMissing))
    # Once the exit is no longer in flight, the count starts from zero.
    state, history = _run([GONE, GONE, GONE], [bull_put(7)], state=state)
    assert [bool(of(actions, DeclarePhantom)) for actions in history] == [False, False, True]


def test_phantom_confirmations_of_one_closes_at_once() -> None:
    _, actions = reconcile(GONE, [bull_put(7)], watched(7), EngineConfig(phantom_confirmations=1))
    assert of(actions, DeclarePhantom)


# ---------------------------------------------------------------------------------------------
# Answers that are not believed never wipe the mirror
# ---------------------------------------------------------------------------------------------


def test_failed_answer_touches_nothing() -> None:
    state = MirrorState(
        missing={7: 2}, out_of_sync={8: frozenset({LC525})}, watched=frozenset({7, 8})
    )
    trades = [bull_put(7), trade(8, {SC520: -1, LC525: 1})]
    new, actions = reconcile(None, trades, state, CFG)
    assert kinds(actions) == ["AnswerNotBelieved"]
    assert actions[0] == AnswerNotBelieved(reason="failed", open_trades=2)
    assert new == state


def test_empty_answer_with_open_trades_is_not_believed() -> None:
    _, actions = reconcile([], [bull_put(7)], watched(7), CFG)
    assert not of(actions, ReplaceMirror)
    assert of(actions, AnswerNotBelieved) == [AnswerNotBelieved(reason="empty", open_trades=1)]


def test_empty_answer_with_no_trade_open_empties_the_mirror() -> None:
    _, actions = reconcile([], [], MirrorState(), CFG)
    assert actions == [ReplaceMirror(rows=())]


def test_zero_quantities_count_as_empty() -> None:
    _, actions = reconcile([pos(SP500, 0)], [bull_put(7)], watched(7), CFG)
    assert not of(actions, ReplaceMirror)


# ---------------------------------------------------------------------------------------------
# Out of sync: recorded once, left open, back in sync when healed
# ---------------------------------------------------------------------------------------------


def test_out_of_sync_then_back_in_sync() -> None:
    trades = [bull_put(7, 2)]
    state, actions = reconcile([pos(SP500, -2)], trades, watched(7), CFG)
    assert of(actions, MarkOutOfSync) == [
        MarkOutOfSync(trade_id=7, missing_symbols=frozenset({LP495}), notify=True)
    ]
    assert not of(actions, DeclarePhantom) and not of(actions, ChangeQuantity)
    assert state.out_of_sync == {7: frozenset({LP495})}
    # The same finding again: nothing new to say, and it never counts toward a phantom.
    for _ in range(5):
        state, actions = reconcile([pos(SP500, -2)], trades, state, CFG)
        assert kinds(actions) == ["ReplaceMirror"]
    assert state.missing == {}
    # A different leg missing now: said again.
    state, actions = reconcile([pos(LP495, 2)], trades, state, CFG)
    assert [m.missing_symbols for m in of(actions, MarkOutOfSync)] == [frozenset({SP500})]
    # Healed.
    state, actions = reconcile([pos(SP500, -2), pos(LP495, 2)], trades, state, CFG)
    assert of(actions, MarkBackInSync) == [MarkBackInSync(trade_id=7, notify=True)]
    assert state.out_of_sync == {}


def test_out_of_sync_heals_into_a_partial_exit() -> None:
    state = MirrorState(out_of_sync={7: frozenset({LP495})}, watched=frozenset({7}))
    _, actions = reconcile([pos(SP500, -1), pos(LP495, 1)], [bull_put(7, 2)], state, CFG)
    assert kinds(actions) == ["ReplaceMirror", "ChangeQuantity", "MarkBackInSync"]


def test_iron_condor_missing_one_wing_is_out_of_sync() -> None:
    condor = trade(3, {SP500: -1, LP495: 1, SC520: -1, LC525: 1})
    _, actions = reconcile([pos(SC520, -1), pos(LC525, 1)], [condor], watched(3), CFG)
    assert [m.missing_symbols for m in of(actions, MarkOutOfSync)] == [frozenset({SP500, LP495})]


# ---------------------------------------------------------------------------------------------
# Adoption: managed / unmanaged / ignore, entry price from the cost basis
# ---------------------------------------------------------------------------------------------

CREDIT = [pos(SP500, -2, "-290.00"), pos(LP495, 2, "200.00")]  # sold 2 at 1.45, bought at 1.00
DEBIT = [pos(LC500, 2, "630.00"), pos("SPY240621C00505000", -2, "-240.00")]


@pytest.mark.parametrize(
    ("positions", "policy", "strategy", "entry", "managed"),
    [
        (CREDIT, "managed", Strategy.BULL_PUT_CREDIT, Decimal("0.45"), True),
        (CREDIT, "unmanaged", Strategy.BULL_PUT_CREDIT, Decimal("0.45"), False),
        (DEBIT, "managed", Strategy.BULL_CALL_DEBIT, Decimal("1.95"), True),
        (DEBIT, "unmanaged", Strategy.BULL_CALL_DEBIT, Decimal("1.95"), False),
        ([pos(SP500, -1, "-210")], "managed", Strategy.SHORT_PUT, Decimal("2.10"), True),
    ],
)
def test_adoption_with_entry_price_from_cost_basis(
    positions: list[BrokerPosition],
    policy: str,
    strategy: Strategy,
    entry: Decimal,
    managed: bool,
) -> None:
    config = EngineConfig(adopt_imported=policy)  # type: ignore[arg-type]
    state, actions = reconcile(positions, [], MirrorState(), config)
    assert kinds(actions) == ["ReplaceMirror", "AdoptSpread"]
    (adopt,) = of(actions, AdoptSpread)
    assert adopt.spread.strategy is strategy
    assert adopt.entry_price == entry
    assert adopt.managed is managed
    assert not adopt.entry_price_suspect
    assert state.watched == frozenset()  # the actor watches it once it has a trade id


def test_ignore_policy_mirrors_only_and_says_so_once() -> None:
    config = EngineConfig(adopt_imported="ignore")
    state, actions = reconcile(CREDIT, [], MirrorState(), config)
    assert kinds(actions) == ["ReplaceMirror", "IgnoreSpread"]
    assert len(of(actions, ReplaceMirror)[0].rows) == 2
    state, actions = reconcile(CREDIT, [], state, config)
    assert kinds(actions) == ["ReplaceMirror"]


def test_entry_sign_contradicting_the_strategy_is_adopted_unmanaged() -> None:
    # A bull put credit spread whose legs cost a net debit.
    positions = [pos(SP500, -1, "-100"), pos(LP495, 1, "150")]
    _, actions = reconcile(positions, [], MirrorState(), CFG)
    (adopt,) = of(actions, AdoptSpread)
    assert adopt.entry_price_suspect and not adopt.managed
    assert adopt.entry_price == Decimal("0.50")


def test_custom_spreads_are_adopted_unmanaged() -> None:
    # A 1x2 ratio spread: custom, never auto-exited.
    positions = [pos(SP500, -1, "-300"), pos(LP495, 2, "260")]
    _, actions = reconcile(positions, [], MirrorState(), CFG)
    (adopt,) = of(actions, AdoptSpread)
    assert adopt.spread.strategy is Strategy.CUSTOM and not adopt.managed
    assert adopt.entry_price == Decimal("0.40")


def test_legs_group_by_root_and_expiration() -> None:
    positions = [*CREDIT, pos(QQQ_P, -1, "-120"), pos("SPY240628P00500000", 1, "80")]
    _, actions = reconcile(positions, [], MirrorState(), CFG)
    spreads = sorted((a.spread.root, a.spread.strategy) for a in of(actions, AdoptSpread))
    assert spreads == [
        ("QQQ", Strategy.SHORT_PUT),
        ("SPY", Strategy.BULL_PUT_CREDIT),
        ("SPY", Strategy.LONG_PUT),
    ]


def test_entry_price_from_cost_basis() -> None:
    spread = Spread.from_legs([Leg.from_position(SP500, -3), Leg.from_position(LP495, 3)])
    assert entry_price_from_cost_basis(spread, Decimal("-100")) == (Decimal("0.3333"), False)
    assert entry_price_from_cost_basis(spread, Decimal("30")) == (Decimal("0.1"), True)


def test_stock_is_mirrored_never_adopted() -> None:
    _, actions = reconcile([pos("SPY", 100, "50000")], [], MirrorState(), CFG)
    assert kinds(actions) == ["ReplaceMirror"]
    (row,) = of(actions, ReplaceMirror)[0].rows
    assert (row.symbol, row.underlying, row.option_type, row.expiration, row.strike) == (
        "SPY",
        "SPY",
        None,
        None,
        None,
    )
    assert (row.side, row.quantity) == (Side.LONG, 100)


def test_mirror_rows_sum_duplicates_and_describe_options() -> None:
    positions = [pos(SP500, -1, "-100"), pos(SP500, -1, "-110")]
    _, actions = reconcile(positions, [], MirrorState(), EngineConfig(adopt_imported="ignore"))
    (row,) = of(actions, ReplaceMirror)[0].rows
    assert (row.side, row.quantity, row.cost_basis) == (Side.SHORT, 2, Decimal("-210"))
    assert (row.underlying, row.option_type, row.strike) == ("SPY", "put", Decimal(500))
    assert row.expiration == dt.date(2024, 6, 21)


# ---------------------------------------------------------------------------------------------
# Watching: cold start, closed elsewhere
# ---------------------------------------------------------------------------------------------


def test_cold_start_watches_held_managed_trades_only() -> None:
    trades = [bull_put(1), trade(2, {SC520: -1, LC525: 1}, managed=False), bull_put(3)]
    # Trade 3 shares trade 1's strikes; the broker holds one: 3 (newest) is the missing one.
    state, actions = reconcile(HELD, trades, MirrorState(), CFG)
    assert [w.trade.trade_id for w in of(actions, WatchTrade)] == [1]
    assert state.watched == frozenset({1})


def test_cold_start_on_an_unbelieved_answer_watches_what_the_database_says() -> None:
    trades = [bull_put(1), trade(2, {SC520: -1, LC525: 1}, managed=False)]
    for answer in (None, []):
        state, actions = reconcile(answer, trades, MirrorState(), CFG)
        assert [w.trade.trade_id for w in of(actions, WatchTrade)] == [1]
        assert state.watched == frozenset({1})


def test_first_sight_of_a_reduced_trade_announces_it_at_the_new_quantity() -> None:
    _, actions = reconcile([pos(SP500, -1), pos(LP495, 1)], [bull_put(1, 2)], MirrorState(), CFG)
    assert kinds(actions) == ["ReplaceMirror", "ChangeQuantity", "WatchTrade"]
    assert not of(actions, ChangeQuantity)[0].notify  # the pool hears of it through WatchTrade
    assert of(actions, WatchTrade)[0].trade.quantity == 1


def test_first_sight_out_of_sync_is_announced_then_flagged() -> None:
    _, actions = reconcile([pos(SP500, -1)], [bull_put(1)], MirrorState(), CFG)
    assert kinds(actions) == ["ReplaceMirror", "WatchTrade", "MarkOutOfSync"]
    assert of(actions, MarkOutOfSync)[0].notify


def test_unmanaged_trades_are_never_announced() -> None:
    _, actions = reconcile([pos(SP500, -1)], [bull_put(1, managed=False)], MirrorState(), CFG)
    assert kinds(actions) == ["ReplaceMirror", "MarkOutOfSync"]
    assert not of(actions, MarkOutOfSync)[0].notify


def test_a_watched_trade_closed_elsewhere_is_forgotten() -> None:
    state = MirrorState(missing={9: 1}, watched=frozenset({1, 9}))
    new, actions = reconcile(HELD, [bull_put(1)], state, EngineConfig(adopt_imported="ignore"))
    assert of(actions, ForgetTrade) == [ForgetTrade(trade_id=9, notify=True)]
    assert new.watched == frozenset({1}) and new.missing == {}


def test_watching_adds_one_trade() -> None:
    assert watching(MirrorState(), 4).watched == frozenset({4})


def test_state_is_never_mutated_in_place() -> None:
    state = MirrorState(missing={7: 1}, watched=frozenset({7}))
    before = msgspec.json.encode(state)
    reconcile(GONE, [bull_put(7)], state, CFG)
    assert msgspec.json.encode(state) == before


def test_ignore_spread_carries_the_cost_basis() -> None:
    _, actions = reconcile(CREDIT, [], MirrorState(), EngineConfig(adopt_imported="ignore"))
    (ignored,) = of(actions, IgnoreSpread)
    assert ignored.cost_basis == Decimal("-90.00")
