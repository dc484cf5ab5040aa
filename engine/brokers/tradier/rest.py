"""Tradier REST over httpx, with every foreign failure translated at this boundary.

=====================  ==========================================================
what Tradier did       what the caller sees
=====================  ==========================================================
401, or a ``fault``    :class:`AuthFailed` (fatal: a supervisor never retries it)
429                    :class:`RateLimited` (``retry_after`` from X-Ratelimit-Expiry)
5xx, 404, timeout,     :class:`BrokerUnavailable`: the outcome is unknown, so an order
dropped connection     call must be resolved by reading the broker's orders, not resent
200 with ``errors``    :class:`OrderRejected` carrying Tradier's reasons
400 "order already     :class:`OrderAlreadyFinal` (a subclass of OrderRejected) on a
in finalized state:    cancel or modify: not an error, the order's outcome (e.g. its
<state>"               fill) is to be read
other 4xx              :class:`OrderRejected` on order calls, else BrokerAnswerInvalid
undecodable body       :class:`BrokerAnswerInvalid`
=====================  ==========================================================

Order writes (place, modify, cancel) are never retried here: after BrokerUnavailable the caller
must read the broker's orders (by tag) to learn whether it took effect, never send again.

Every call has a deadline (``timeout`` seconds, applied by httpx per request).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Literal, overload

import httpx
import msgspec

from engine.brokers.tradier import wire
from engine.errors import (
    AuthFailed,
    BrokerAnswerInvalid,
    BrokerUnavailable,
    OrderAlreadyFinal,
    OrderRejected,
    RateLimited,
)
from engine.messages import OrderLeg

__all__ = ["RateLimitState", "TradierRest"]


class RateLimitState(msgspec.Struct, frozen=True):
    """The last ``X-Ratelimit-*`` headers Tradier sent for one endpoint group."""

    allowed: int
    used: int
    available: int
    expires_at_ms: int


class _Fault(msgspec.Struct):
    faultstring: str = "authentication failed"


_fault_decoder = msgspec.json.Decoder(dict[str, _Fault])


class TradierRest:
    """One account's REST client. Use as ``async with TradierRest(...) as rest``.

    ``transport`` is for tests at the process boundary (``httpx.MockTransport``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        account_id: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.account_id = account_id
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self.rate_limits: dict[str, RateLimitState] = {}

    async def __aenter__(self) -> TradierRest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- market data ------------------------------------------------------------------------

    async def create_market_session(self) -> wire.StreamSession:
        # Tradier wants an empty POST body with an explicit Content-Length: 0.
        data = await self._request("POST", "/markets/events/session", what="market session")
        return wire.decode_session(data)

    async def create_account_session(self) -> wire.StreamSession:
        data = await self._request("POST", "/accounts/events/session", what="account session")
        return wire.decode_session(data)

    async def get_quotes(
        self, symbols: Sequence[str], *, greeks: bool = False
    ) -> list[wire.RestQuote]:
        # POST keeps long symbol lists out of the URL; Tradier accepts both.
        form = {"symbols": ",".join(symbols), "greeks": "true" if greeks else "false"}
        data = await self._request("POST", "/markets/quotes", form=form, what="quotes")
        return wire.decode_quotes(data)

    async def get_clock(self) -> wire.ClockAnswer:
        return wire.decode_clock(await self._request("GET", "/markets/clock", what="clock"))

    # -- account ------------------------------------------------------------------------------

    async def get_profile_accounts(self) -> tuple[str, ...]:
        """The account numbers this token may trade (``/user/profile``)."""
        return wire.decode_profile_accounts(
            await self._request("GET", "/user/profile", what="user profile")
        )

    async def get_positions(self) -> list[wire.Position]:
        path = f"/accounts/{self.account_id}/positions"
        return wire.decode_positions(await self._request("GET", path, what="positions"))

    async def get_orders(self) -> list[wire.OrderView]:
        path = f"/accounts/{self.account_id}/orders"
        data = await self._request("GET", path, params={"includeTags": "true"}, what="orders")
        return wire.decode_orders(data)

    async def get_order(self, broker_order_id: int) -> wire.OrderView:
        path = f"/accounts/{self.account_id}/orders/{broker_order_id}"
        data = await self._request("GET", path, params={"includeTags": "true"}, what="order")
        return wire.decode_order(data)

    # -- order writes (rate-limit group "trading") ---------------------------------------------

    @overload
    async def place_multileg(
        self,
        *,
        symbol: str,
        type: str,
        duration: str,
        price: Decimal | None,
        legs: Sequence[OrderLeg],
        tag: str | None,
        preview: Literal[False] = False,
    ) -> wire.PlacedOrder: ...
    @overload
    async def place_multileg(
        self,
        *,
        symbol: str,
        type: str,
        duration: str,
        price: Decimal | None,
        legs: Sequence[OrderLeg],
        tag: str | None,
        preview: Literal[True],
    ) -> wire.OrderPreview: ...
    async def place_multileg(
        self,
        *,
        symbol: str,
        type: str,
        duration: str,
        price: Decimal | None,
        legs: Sequence[OrderLeg],
        tag: str | None,
        preview: bool = False,
    ) -> wire.PlacedOrder | wire.OrderPreview:
        """``class=multileg``: 2 to 4 legs (``option_symbol[i]``, ``side[i]``,
        ``quantity[i]``) at one net ``price`` (positive; required for debit and credit)."""
        if not 2 <= len(legs) <= 4:
            raise ValueError(f"a multileg order has 2 to 4 legs, got {len(legs)}")
        form = {"class": "multileg", "symbol": symbol, "type": str(type)}
        form.update(_duration_price(duration, price))
        for i, leg in enumerate(legs):
            form[f"option_symbol[{i}]"] = leg.option_symbol
            form[f"side[{i}]"] = str(leg.side)
            form[f"quantity[{i}]"] = str(leg.quantity)
        return await self._place(form, tag=tag, preview=preview)

    @overload
    async def place_option(
        self,
        *,
        symbol: str,
        option_symbol: str,
        side: str,
        quantity: int,
        type: str,
        duration: str,
        price: Decimal | None,
        tag: str | None,
        preview: Literal[False] = False,
    ) -> wire.PlacedOrder: ...
    @overload
    async def place_option(
        self,
        *,
        symbol: str,
        option_symbol: str,
        side: str,
        quantity: int,
        type: str,
        duration: str,
        price: Decimal | None,
        tag: str | None,
        preview: Literal[True],
    ) -> wire.OrderPreview: ...
    async def place_option(
        self,
        *,
        symbol: str,
        option_symbol: str,
        side: str,
        quantity: int,
        type: str,
        duration: str,
        price: Decimal | None,
        tag: str | None,
        preview: bool = False,
    ) -> wire.PlacedOrder | wire.OrderPreview:
        """``class=option``: one leg; ``symbol`` is the underlying."""
        form = {
            "class": "option",
            "symbol": symbol,
            "option_symbol": option_symbol,
            "side": str(side),
            "quantity": str(quantity),
            "type": str(type),
        }
        form.update(_duration_price(duration, price))
        return await self._place(form, tag=tag, preview=preview)

    async def modify_order(self, broker_order_id: int, *, price: Decimal) -> wire.PlacedOrder:
        """Move a working order's limit (Tradier changes type, duration, price, stop only;
        never the quantity). OrderAlreadyFinal when it had already finished."""
        path = f"/accounts/{self.account_id}/orders/{broker_order_id}"
        form = {"price": _price_text(price)}
        data = await self._request("PUT", path, form=form, what="modify order", order_call=True)
        return wire.decode_placed_order(data)

    async def cancel_order(self, broker_order_id: int) -> wire.PlacedOrder:
        """Cancel a working order. OrderAlreadyFinal (``state`` e.g. ``filled``) when it had
        already finished: read the order then, it is not an error."""
        path = f"/accounts/{self.account_id}/orders/{broker_order_id}"
        data = await self._request("DELETE", path, what="cancel order", order_call=True)
        return wire.decode_placed_order(data)

    async def _place(
        self, form: dict[str, str], *, tag: str | None, preview: bool
    ) -> wire.PlacedOrder | wire.OrderPreview:
        if tag is not None:
            form["tag"] = tag
        if preview:
            form["preview"] = "true"
        path = f"/accounts/{self.account_id}/orders"
        what = "preview order" if preview else "place order"
        data = await self._request("POST", path, form=form, what=what, order_call=True)
        return wire.decode_order_preview(data) if preview else wire.decode_placed_order(data)

    # -- the one request path -----------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        order_call: bool = False,
    ) -> bytes:
        try:
            if form is None and method == "POST":
                response = await self._client.request(
                    method, path, params=params, headers={"Content-Length": "0"}
                )
            else:
                response = await self._client.request(method, path, params=params, data=form)
        except httpx.TimeoutException as exc:
            raise BrokerUnavailable(f"{what}: no answer from Tradier in time ({exc!r})") from exc
        except httpx.TransportError as exc:
            raise BrokerUnavailable(f"{what}: connection to Tradier failed ({exc!r})") from exc
        self._note_rate_limit(method, path, response.headers)
        return self._check(response, what=what, order_call=order_call)

    def _check(self, response: httpx.Response, *, what: str, order_call: bool) -> bytes:
        status, body = response.status_code, response.content
        if status == 401 or (400 <= status < 500 and status != 429 and b'"fault"' in body):
            raise AuthFailed(f"{what}: Tradier refused the token: {_fault_text(body)}")
        if status == 429:
            expiry = _int_header(response.headers, "X-Ratelimit-Expiry")
            retry_after = max(0.0, expiry / 1000 - time.time()) if expiry else None
            raise RateLimited(f"{what}: Tradier rate limit reached", retry_after=retry_after)
        if status >= 500 or status == 404:
            raise BrokerUnavailable(f"{what}: Tradier answered HTTP {status}: {body[:120]!r}")
        if status >= 400:
            text = body.decode(errors="replace").strip()[:200]
            if order_call:
                final = _FINALIZED.search(text)
                if final is not None:
                    raise OrderAlreadyFinal(
                        f"{what}: {text}", state=final["state"].lower(), reasons=(text,)
                    )
                raise OrderRejected(f"{what}: HTTP {status}: {text}", reasons=(text,))
            raise BrokerAnswerInvalid(f"{what}: HTTP {status}: {text}")
        reasons = wire.decode_errors(body) if b'"errors"' in body else None
        if reasons is not None:
            raise OrderRejected(f"{what}: rejected: {'; '.join(reasons)}", reasons=reasons)
        return body

    def _note_rate_limit(self, method: str, path: str, headers: httpx.Headers) -> None:
        allowed = _int_header(headers, "X-Ratelimit-Allowed")
        if allowed is None:
            return
        self.rate_limits[_limit_group(method, path)] = RateLimitState(
            allowed=allowed,
            used=_int_header(headers, "X-Ratelimit-Used") or 0,
            available=_int_header(headers, "X-Ratelimit-Available") or 0,
            expires_at_ms=_int_header(headers, "X-Ratelimit-Expiry") or 0,
        )


def _limit_group(method: str, path: str) -> str:
    """Tradier's rate-limit groups: market data, trading (order writes: place, modify,
    cancel), standard (everything else, order reads included)."""
    if path.startswith("/markets"):
        return "market_data"
    if method in _WRITES and _ORDERS_PATH.fullmatch(path):
        return "trading"
    return "standard"


_WRITES = frozenset({"POST", "PUT", "DELETE"})
_ORDERS_PATH = re.compile(r"/accounts/[^/]+/orders(/[^/]+)?")
# Tradier's plain-text 400 for a cancel/modify of a finished order.
_FINALIZED = re.compile(
    r"already in finali[sz]ed state:\s*(?P<state>[A-Za-z_]+)", re.IGNORECASE
)


def _price_text(price: Decimal) -> str:
    """A price as Tradier reads it: plain digits, never an exponent (``Decimal("1E+1")``)."""
    if not price.is_finite():
        raise ValueError(f"not a price: {price}")
    return format(price, "f")


def _duration_price(duration: str, price: Decimal | None) -> dict[str, str]:
    form = {"duration": str(duration)}
    if price is not None:
        form["price"] = _price_text(price)
    return form


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _fault_text(body: bytes) -> str:
    try:
        return _fault_decoder.decode(body)["fault"].faultstring
    except (msgspec.MsgspecError, KeyError):
        return body.decode(errors="replace").strip()[:120] or "HTTP 401"
