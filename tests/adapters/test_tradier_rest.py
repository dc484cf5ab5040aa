"""TradierRest against odd broker answers, mocked at the process boundary (httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from engine.brokers.tradier.rest import TradierRest
from engine.errors import (
    AuthFailed,
    BrokerAnswerInvalid,
    BrokerUnavailable,
    RateLimited,
)

Handler = Callable[[httpx.Request], httpx.Response]


def _rest(handler: Handler) -> TradierRest:
    return TradierRest(
        base_url="https://api.example/v1",
        token="tok-123",
        account_id="VA1",
        transport=httpx.MockTransport(handler),
    )


async def test_requests_carry_bearer_json_accept_and_empty_session_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"stream": {"url": "x", "sessionid": "s-1"}})

    async with _rest(handler) as rest:
        session = await rest.create_market_session()
    assert session.sessionid == "s-1"
    (request,) = seen
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Length"] == "0" and request.content == b""
    assert request.url.path == "/v1/markets/events/session"


async def test_positions_null_string_is_no_positions() -> None:
    async with _rest(lambda r: httpx.Response(200, json={"positions": "null"})) as rest:
        assert await rest.get_positions() == []


@pytest.mark.parametrize(
    ("response", "error", "match"),
    [
        (
            httpx.Response(
                401,
                json={
                    "fault": {"faultstring": "Invalid Access Token", "detail": {"errorcode": "x"}}
                },
            ),
            AuthFailed,
            "Invalid Access Token",
        ),
        (httpx.Response(500, text="Datastore Error"), BrokerUnavailable, "HTTP 500"),
        (httpx.Response(404, text="temporary"), BrokerUnavailable, "HTTP 404"),
        (httpx.Response(429, text="slow down"), RateLimited, "rate limit"),
        (httpx.Response(200, text="<xml/>"), BrokerAnswerInvalid, "not a JSON object"),
        (httpx.Response(200, json={"unexpected": 1}), BrokerAnswerInvalid, "no 'positions'"),
    ],
)
async def test_failures_are_translated_at_the_boundary(
    response: httpx.Response, error: type[Exception], match: str
) -> None:
    async with _rest(lambda r: response) as rest:
        with pytest.raises(error, match=match):
            await rest.get_positions()


async def test_transport_failure_is_broker_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _rest(handler) as rest:
        with pytest.raises(BrokerUnavailable, match="connection to Tradier failed"):
            await rest.get_orders()


async def test_rate_limit_headers_are_remembered_per_group() -> None:
    headers = {
        "X-Ratelimit-Allowed": "120",
        "X-Ratelimit-Used": "7",
        "X-Ratelimit-Available": "113",
        "X-Ratelimit-Expiry": "1795000060000",
    }
    async with _rest(
        lambda r: httpx.Response(200, json={"orders": "null"}, headers=headers)
    ) as rest:
        assert await rest.get_orders() == []
        state = rest.rate_limits["standard"]
    assert (state.allowed, state.used, state.available) == (120, 7, 113)
    assert state.expires_at_ms == 1795000060000


async def test_quotes_are_posted_as_a_form() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"quotes": {"quote": {"symbol": "SPY", "bid": 1.0, "ask": 1.1}}}
        )

    async with _rest(handler) as rest:
        (quote,) = await rest.get_quotes(["SPY", "QQQ"])
    assert quote.symbol == "SPY"
    assert seen[0].content == b"symbols=SPY%2CQQQ&greeks=false"
