"""TradierBroker: Tradier's positions as broker-neutral BrokerPositions (httpx.MockTransport)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import httpx
import pytest

from engine.brokers import BrokerPosition
from engine.brokers.tradier.broker import TradierBroker
from engine.brokers.tradier.rest import TradierRest
from engine.errors import BrokerAnswerInvalid


def _broker(body: Any) -> TradierBroker:
    rest = TradierRest(
        base_url="https://api.example/v1",
        token="tok",
        account_id="VA1",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)),
    )
    return TradierBroker(rest)


async def test_positions_translate_with_signed_quantity_and_cost_basis() -> None:
    body = {
        "positions": {
            "position": [
                {
                    "cost_basis": -290.0,
                    "date_acquired": "2024-06-03T14:41:11.405Z",
                    "id": 1,
                    "quantity": -2.00000000,
                    "symbol": "SPY240621P00500000",
                },
                {"cost_basis": "200.00", "quantity": "2", "symbol": "SPY240621P00495000"},
            ]
        }
    }
    positions = await _broker(body).get_positions()
    assert positions == [
        BrokerPosition(
            symbol="SPY240621P00500000",
            quantity=-2,
            cost_basis=Decimal("-290.0"),
            acquired_at=dt.datetime(2024, 6, 3, 14, 41, 11, 405000, tzinfo=dt.UTC),
        ),
        BrokerPosition(symbol="SPY240621P00495000", quantity=2, cost_basis=Decimal("200.00")),
    ]
    assert all(type(p.quantity) is int for p in positions)


async def test_null_positions_are_an_empty_list() -> None:
    assert await _broker({"positions": "null"}).get_positions() == []


@pytest.mark.parametrize(
    "body",
    [
        {"positions": {"position": {"cost_basis": 10, "quantity": 1.5, "symbol": "SPY"}}},
        {"accounts": {}},  # no positions key: a broken answer, never "no positions"
    ],
)
async def test_fractional_or_broken_answers_are_invalid(body: Any) -> None:
    with pytest.raises(BrokerAnswerInvalid):
        await _broker(body).get_positions()


async def test_unreadable_acquired_date_is_only_a_missing_hint() -> None:
    body = {
        "positions": {
            "position": {"cost_basis": 1, "quantity": 1, "symbol": "SPY", "date_acquired": "x"}
        }
    }
    (position,) = await _broker(body).get_positions()
    assert position.acquired_at is None
