"""The trade store contract, run against PgTradeStore on a real PostgreSQL and against the
in-memory twin the actor tests use (tests/fakes/trade_store.py): the same assertions for both,
so the fake cannot drift from the database on what matters. Real clock (DESIGN section 4)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from engine.domain.reconcile import PositionRow
from engine.domain.spread import Leg, Side, Spread
from engine.messages import CloseReason, TradeOrigin
from storage import Database, IntegrityError, apply_migrations, open_database
from storage.queries import insert_exit_order
from storage.trades import PgTradeStore
from tests.fakes.trade_store import InMemoryTradeStore
from tests.storage.conftest import with_database

pytestmark = pytest.mark.storage

SP500 = "SPY240621P00500000"
LP495 = "SPY240621P00495000"
SC520 = "SPY240621C00520000"
LC525 = "SPY240621C00525000"
AT = dt.datetime(2024, 6, 10, 15, 0, tzinfo=dt.UTC)


def bull_put(quantity: int) -> Spread:
    return Spread.from_legs(
        [Leg.from_position(SP500, -quantity), Leg.from_position(LP495, quantity)]
    )


def row(symbol: str, quantity: int, side: Side = Side.SHORT, cost: str = "-100") -> PositionRow:
    return PositionRow(
        symbol=symbol,
        underlying="SPY",
        expiration=dt.date(2024, 6, 21),
        option_type="put" if "P0" in symbol else "call",
        strike=Decimal(int(symbol[-8:]) // 1000),
        side=side,
        quantity=quantity,
        cost_basis=Decimal(cost),
    )


@dataclasses.dataclass
class Harness:
    """One store plus the few things a test must do outside the store's interface."""

    store: PgTradeStore | InMemoryTradeStore
    db: Database | None

    async def start_exit(self, trade_id: int) -> None:
        if isinstance(self.store, InMemoryTradeStore):
            self.store.set_exit_in_flight(trade_id, True)
            return
        assert self.db is not None
        await insert_exit_order(
            self.db,
            client_order_id=f"coid-{uuid.uuid4().hex[:8]}",
            account="VA1",
            trade_id=trade_id,
            exit_action="FULL",
            quantity=1,
            legs=[{"symbol": SP500, "side": "buy_to_close", "quantity": 1}],
            order_type="debit",
            limit_price=Decimal("0.50"),
        )

    async def end_exit(self, trade_id: int) -> None:
        if isinstance(self.store, InMemoryTradeStore):
            self.store.set_exit_in_flight(trade_id, False)
            return
        assert self.db is not None
        await self.db.execute(
            "UPDATE orders SET status = 'CANCELLED', finalized_at = now() WHERE trade_id = $1",
            trade_id,
        )

    async def set_closing(self, trade_id: int) -> None:
        if isinstance(self.store, InMemoryTradeStore):
            self.store.set_status(trade_id, "CLOSING")
            return
        assert self.db is not None
        await self.db.execute("UPDATE trades SET status = 'CLOSING' WHERE trade_id = $1", trade_id)


@pytest.fixture(params=["postgres", "memory"])
async def h(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield Harness(InMemoryTradeStore(), None)
        return
    # pytest-trio cannot hand out its async fixtures (db) through getfixturevalue: make the
    # fresh database here, as conftest's database_url does.
    server_url: str = request.getfixturevalue("server_url")
    name = f"spreadwatch_test_{uuid.uuid4().hex[:16]}"
    async with open_database(server_url, data_dir=tmp_path, max_size=1) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(server_url, name)
        async with open_database(url, data_dir=tmp_path, max_size=4) as db:
            await apply_migrations(db)
            yield Harness(PgTradeStore(db), db)
    finally:
        async with open_database(server_url, data_dir=tmp_path, max_size=1) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _insert(h: Harness, quantity: int = 2, **kw: object) -> int:
    snapshot = await h.store.insert_trade(
        account_id="VA1",
        spread=bull_put(quantity),
        entry_price=Decimal("0.45"),
        origin=TradeOrigin.IMPORTED,
        managed=True,
        **kw,  # type: ignore[arg-type]
    )
    return snapshot.trade_id


# ---------------------------------------------------------------------------------------------
# Trades
# ---------------------------------------------------------------------------------------------


async def test_inserted_trade_loads_as_a_snapshot_at_its_whole_quantity(h: Harness) -> None:
    snapshot = await h.store.insert_trade(
        account_id="VA1",
        spread=bull_put(3),
        entry_price=Decimal("0.45"),
        origin=TradeOrigin.IMPORTED,
        managed=False,
        opened_at=AT,
        exit_plan={"profit_target": Decimal("0.4")},
    )
    (loaded,) = await h.store.load_open_trades("VA1")
    assert loaded.snapshot == snapshot
    assert not loaded.exit_in_flight
    assert {(leg.occ, leg.signed_quantity) for leg in snapshot.legs} == {(SP500, -3), (LP495, 3)}
    assert (snapshot.quantity, snapshot.opening_quantity) == (3, 3)
    assert snapshot.origin is TradeOrigin.IMPORTED and not snapshot.managed
    assert snapshot.opened_at == AT
    assert snapshot.exit_plan == {"profit_target": Decimal("0.4")}
    assert snapshot.spread().strategy.value == "bull_put_credit"
    assert await h.store.load_open_trades("OTHER") == []


async def test_two_trades_on_the_same_strikes_are_stored_separately(h: Harness) -> None:
    a = await _insert(h, 2)
    b = await _insert(h, 1)
    assert a != b
    loaded = await h.store.load_open_trades("VA1")
    assert [(t.trade_id, t.snapshot.quantity) for t in loaded] == [(a, 2), (b, 1)]
    assert await h.store.update_trade_quantity(a, 1)
    loaded = await h.store.load_open_trades("VA1")
    assert [(t.trade_id, t.snapshot.quantity) for t in loaded] == [(a, 1), (b, 1)]
    assert [leg.quantity for leg in loaded[0].snapshot.legs] == [1, 1]


async def test_quantity_stays_within_the_opening_quantity(h: Harness) -> None:
    trade_id = await _insert(h, 2)
    for bad in (0, 3):
        with pytest.raises(IntegrityError):
            await h.store.update_trade_quantity(trade_id, bad)
    stored = await h.store.get_trade(trade_id)
    assert stored is not None and stored.quantity == 2
    assert not await h.store.update_trade_quantity(999_999, 1)


async def test_phantom_close_leaves_realized_pnl_null(h: Harness) -> None:
    trade_id = await _insert(h, 2)
    assert await h.store.close_phantom(trade_id, at=AT)
    stored = await h.store.get_trade(trade_id)
    assert stored is not None
    assert (stored.status, stored.quantity, stored.close_reason) == (
        "CLOSED",
        0,
        CloseReason.PHANTOM,
    )
    assert stored.realized_pnl is None
    assert stored.closed_at == AT
    assert stored.opening_quantity == 2
    assert await h.store.load_open_trades("VA1") == []
    # Closing twice writes nothing; a closed trade's quantity cannot change.
    assert not await h.store.close_phantom(trade_id, at=AT + dt.timedelta(hours=1))
    assert not await h.store.update_trade_quantity(trade_id, 1)
    again = await h.store.get_trade(trade_id)
    assert again is not None and again.closed_at == AT


async def test_no_phantom_close_while_an_exit_is_in_flight(h: Harness) -> None:
    trade_id = await _insert(h, 1)
    await h.start_exit(trade_id)
    (loaded,) = await h.store.load_open_trades("VA1")
    assert loaded.exit_in_flight
    assert not await h.store.close_phantom(trade_id, at=AT)
    stored = await h.store.get_trade(trade_id)
    assert stored is not None and stored.status == "OPEN"
    await h.end_exit(trade_id)
    (loaded,) = await h.store.load_open_trades("VA1")
    assert not loaded.exit_in_flight
    assert await h.store.close_phantom(trade_id, at=AT)


async def test_a_closing_trade_has_an_exit_in_flight(h: Harness) -> None:
    trade_id = await _insert(h, 1)
    await h.set_closing(trade_id)
    (loaded,) = await h.store.load_open_trades("VA1")
    assert loaded.exit_in_flight
    assert not await h.store.close_phantom(trade_id, at=AT)


async def test_watch_state_round_trips_and_tiers_never_unfire(h: Harness) -> None:
    trade_id = await _insert(h, 2)
    await h.store.save_watch_state(trade_id, Decimal("0.42"), [0], Decimal("0.25"))
    (loaded,) = await h.store.load_open_trades("VA1")
    snap = loaded.snapshot
    assert (snap.high_water_mark, snap.fired_tiers, snap.entry_iv) == (
        Decimal("0.42"),
        (0,),
        Decimal("0.25"),
    )
    # A later save that forgot tier 0 and the entry IV loses neither.
    await h.store.save_watch_state(trade_id, Decimal("0.5"), [2, 1], None)
    (loaded,) = await h.store.load_open_trades("VA1")
    snap = loaded.snapshot
    assert (snap.high_water_mark, snap.fired_tiers, snap.entry_iv) == (
        Decimal("0.5"),
        (0, 1, 2),
        Decimal("0.25"),
    )
    await h.store.save_watch_state(trade_id, None, [1], None)
    stored = await h.store.get_trade(trade_id)
    assert stored is not None
    assert (stored.high_water_mark, stored.fired_tiers) == (None, (0, 1, 2))
    with pytest.raises(IntegrityError):
        await h.store.save_watch_state(trade_id, None, [], Decimal("0"))


# ---------------------------------------------------------------------------------------------
# The position mirror
# ---------------------------------------------------------------------------------------------


async def test_mirror_replace_is_pure(h: Harness) -> None:
    await h.store.replace_positions("VA1", [row(SP500, 2), row(LP495, 2, Side.LONG, "200")])
    await h.store.replace_positions("VA2", [row(SC520, 1)])
    # LP495 gone, SP500 changed, SC520 new; the other account untouched.
    await h.store.replace_positions("VA1", [row(SP500, 1, cost="-50"), row(SC520, 3)])
    mirror = await h.store.load_positions("VA1")
    assert [(r.symbol, r.side, r.quantity, r.cost_basis) for r in mirror] == [
        (SC520, Side.SHORT, 3, Decimal("-100")),
        (SP500, Side.SHORT, 1, Decimal("-50")),
    ]
    assert mirror[1].expiration == dt.date(2024, 6, 21) and mirror[1].strike == Decimal(500)
    # A leg that flips side is one row, on its new side.
    await h.store.replace_positions("VA1", [row(SP500, 1, Side.LONG, "80")])
    mirror = await h.store.load_positions("VA1")
    assert [(r.symbol, r.side) for r in mirror] == [(SP500, Side.LONG)]
    await h.store.replace_positions("VA1", [])
    assert await h.store.load_positions("VA1") == []
    assert [r.symbol for r in await h.store.load_positions("VA2")] == [SC520]


async def test_mirror_replace_is_all_or_nothing(h: Harness) -> None:
    before = [row(SP500, 2), row(LP495, 2, Side.LONG, "200")]
    await h.store.replace_positions("VA1", before)
    # The first row is fine, the second breaks a constraint: nothing of it may land, and the
    # rows the new answer lacks (all of the old ones) are not deleted either.
    with pytest.raises(IntegrityError):
        await h.store.replace_positions("VA1", [row(SC520, 1), row(LC525, 0)])
    mirror = await h.store.load_positions("VA1")
    assert [(r.symbol, r.side, r.quantity) for r in mirror] == [
        (LP495, Side.LONG, 2),
        (SP500, Side.SHORT, 2),
    ]


async def test_stock_rows_have_no_option_fields(h: Harness) -> None:
    stock = PositionRow(
        symbol="SPY",
        underlying="SPY",
        expiration=None,
        option_type=None,
        strike=None,
        side=Side.LONG,
        quantity=100,
        cost_basis=Decimal("50000"),
        acquired_at=AT,
    )
    await h.store.replace_positions("VA1", [stock])
    await h.store.replace_positions("VA1", [stock])  # the NULL option fields still match
    assert await h.store.load_positions("VA1") == [stock]


# ---------------------------------------------------------------------------------------------
# PostgreSQL only: what the columns hold
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def pg(db: Database) -> PgTradeStore:
    await apply_migrations(db)
    return PgTradeStore(db)


async def test_pg_phantom_row_and_tier_documents(db: Database, pg: PgTradeStore) -> None:
    h = Harness(pg, db)
    trade_id = await _insert(h, 1)
    await pg.save_watch_state(trade_id, Decimal("0.3"), [1], None)
    first = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
    assert first is not None and first["high_water_at"] is not None
    assert [t["tier"] for t in first["fired_tiers"]] == [1]
    assert "fired_at" in first["fired_tiers"][0]
    assert first["legs"] == [
        {"symbol": LP495, "side": "long", "quantity": 1},
        {"symbol": SP500, "side": "short", "quantity": 1},
    ]
    assert first["expiration"] == dt.date(2024, 6, 21)
    # The same peak again keeps its time; tier 1 is not added twice.
    await pg.save_watch_state(trade_id, Decimal("0.3"), [1], None)
    second = await db.fetchrow("SELECT * FROM trades WHERE trade_id = $1", trade_id)
    assert second is not None
    assert second["high_water_at"] == first["high_water_at"]
    assert second["fired_tiers"] == first["fired_tiers"]
    assert await pg.close_phantom(trade_id, at=AT)
    closed = await db.fetchrow(
        "SELECT status, close_reason, realized_pnl IS NULL AS pnl_null FROM trades"
        " WHERE trade_id = $1",
        trade_id,
    )
    assert closed is not None and dict(closed.items()) == {
        "status": "CLOSED",
        "close_reason": "PHANTOM",
        "pnl_null": True,
    }


async def test_a_trade_loads_with_the_open_trades_sharing_its_symbols_only(h: Harness) -> None:
    """What the router attributes an exit with: the trade and the open trades with a leg on
    one of its symbols, nothing else; the same rows as load_open_trades gives for them."""

    def spread(short: str, long: str) -> Spread:
        return Spread.from_legs([Leg.from_position(short, -1), Leg.from_position(long, 1)])

    async def insert(s: Spread, account: str = "VA1") -> int:
        snapshot = await h.store.insert_trade(
            account_id=account,
            spread=s,
            entry_price=Decimal("1"),
            origin=TradeOrigin.ENGINE,
            managed=True,
            opened_at=AT,
        )
        return snapshot.trade_id

    a = await insert(spread(SP500, LP495))
    b = await insert(spread(LP495, SC520))  # shares LP495 with a
    c = await insert(spread(SC520, LC525))  # shares SC520 with b
    await insert(spread(SP500, LP495), account="VA2")  # same symbols, another account

    async def ids(trade_id: int) -> list[int]:
        return [t.trade_id for t in await h.store.load_trade_and_sharers("VA1", trade_id)]

    assert await ids(a) == [a, b]
    assert await ids(b) == [a, b, c]
    assert await ids(c) == [b, c]
    assert await h.store.load_trade_and_sharers("VA1", b) == await h.store.load_open_trades("VA1")
    assert await h.store.close_phantom(b, at=AT)
    assert await ids(a) == [a]
    assert await ids(b) == []
