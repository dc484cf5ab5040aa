"""Tradier's JSON shapes, quirks included.

- Lists collapse: one element is a bare object, none is ``"null"`` (positions, orders) or
  JSON null (chains, expirations), see :func:`collapse`.
- REST prices and quantities are JSON numbers (quantities as floats: ``2.0``); dates are ISO-8601
  UTC with milliseconds; quote dates are epoch milliseconds (numbers in REST, strings in the
  stream).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec

from engine.domain.occ import OptionRight
from sim.broker import Broker, Holding, Order, OrderLeg
from sim.market import Market, Quote
from sim.pricing import greeks, implied_vol
from sim.scenario import EASTERN

__all__ = [
    "account_event",
    "balances_record",
    "collapse",
    "encode_text",
    "iso",
    "order_record",
    "position_record",
    "quote_record",
]


_ENCODER = msgspec.json.Encoder(decimal_format="number")


def encode_text(payload: Any) -> str:
    """``payload`` as compact JSON text (Decimals as numbers)."""
    return _ENCODER.encode(payload).decode()


def collapse(items: list[Any], empty: Any) -> Any:
    """Tradier's list quirk: ``[]`` -> ``empty``, ``[x]`` -> ``x``, else the list."""
    if not items:
        return empty
    return items[0] if len(items) == 1 else items


def iso(moment: dt.datetime) -> str:
    """``2025-12-09T12:05:35.277Z``."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _money(cents: int | None) -> Decimal | None:
    return None if cents is None else (Decimal(cents) / 100).quantize(Decimal("0.01"))


def quote_record(market: Market, symbol: str, with_greeks: bool) -> dict[str, Any] | None:
    quote = market.quote(symbol)
    if quote is None:
        return None
    last = market.last_trade(symbol)
    day = market.day_range(symbol)
    record: dict[str, Any] = {
        "symbol": symbol,
        "description": symbol,
        "exch": "Q",
        "type": "option",
        "last": _money(last),
        "change": None,
        "volume": market.volume(symbol),
        "open": _money(day[0]) if day else None,
        "high": _money(day[1]) if day else None,
        "low": _money(day[2]) if day else None,
        "close": None,
        "bid": _money(quote.bid),
        "ask": _money(quote.ask),
        "change_percentage": None,
        "average_volume": 0,
        "last_volume": 0,
        "trade_date": market.now_ms if last is not None else 0,
        "prevclose": _money(day[0]) if day else None,
        "week_52_high": 0.0,
        "week_52_low": 0.0,
        "bidsize": quote.bid_size,
        "bidexch": quote.bid_exch,
        "bid_date": quote.at_ms,
        "asksize": quote.ask_size,
        "askexch": quote.ask_exch,
        "ask_date": quote.at_ms,
    }
    underlying = market.underlying(symbol)
    if underlying is not None:
        record.update(description=underlying.description or symbol, type=underlying.type,
                      root_symbols=underlying.option_root)
        return record
    contract = market.contract(symbol)
    assert contract is not None
    option = contract.option
    record.update(
        description=f"{contract.underlying.symbol} {option.expiration:%b %d %Y} "
                    f"${option.strike} {option.right.value.capitalize()}",
        underlying=contract.underlying.symbol,
        strike=option.strike,
        open_interest=1000,
        contract_size=100,
        expiration_date=option.expiration.isoformat(),
        expiration_type="standard",
        option_type=option.right.value,
        root_symbol=option.root,
    )
    if with_greeks:
        record["greeks"] = _greeks(market, symbol, quote)
    return record


def _greeks(market: Market, symbol: str, quote: Quote) -> dict[str, Any]:
    contract = market.contract(symbol)
    assert contract is not None
    spot = market.spot(contract.underlying.symbol)
    strike = float(contract.option.strike)
    years = market.years_to_expiry(contract)
    vol = market.model_vol(contract)
    rate = market.config.rate
    call = contract.option.right is OptionRight.CALL
    g = greeks(spot, strike, years, vol, rate, call)

    def iv(cents: float) -> float | None:
        return implied_vol(cents / 100, spot, strike, years, rate, call)

    now = dt.datetime.fromtimestamp(market.now_ms / 1000, EASTERN)
    return {
        "delta": g.delta, "gamma": g.gamma, "theta": g.theta, "vega": g.vega, "rho": g.rho,
        "phi": g.phi, "bid_iv": iv(quote.bid), "mid_iv": iv(quote.mid_cents),
        "ask_iv": iv(quote.ask), "smv_vol": vol,
        "updated_at": now.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


def _leg_record(order: Order, leg: OrderLeg, include_tags: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": leg.id,
        "type": order.type if order.type in {"market", "limit"} else "limit",
        "symbol": order.symbol,
        "side": leg.side,
        "quantity": float(leg.quantity),
        "status": leg.status,
        "duration": order.duration,
        "avg_fill_price": float(leg.avg_fill_price),
        "exec_quantity": float(leg.exec_quantity),
        "last_fill_price": float(leg.last_fill_price),
        "last_fill_quantity": float(leg.last_fill_quantity),
        "remaining_quantity": float(leg.quantity - leg.exec_quantity),
        "create_date": iso(order.create_date),
        "transaction_date": iso(order.transaction_date),
        "class": "option",
        "option_symbol": leg.option_symbol,
    }
    if include_tags and order.tag:
        record["tag"] = order.tag
    return record


def order_record(order: Order, include_tags: bool) -> dict[str, Any]:
    """One order as ``GET /orders`` shows it (multileg with its ``leg`` list)."""
    if order.order_class == "option":
        record = _leg_record(order, order.legs[0], include_tags)
        record["id"] = order.id
        record["type"] = order.type
        record["status"] = order.status
    else:
        record = {
            "id": order.id,
            "type": order.type,
            "symbol": order.symbol,
            "side": "sell" if order.type == "credit" else "buy",
            "quantity": float(order.quantity),
            "status": order.status,
            "duration": order.duration,
            "avg_fill_price": float(order.avg_fill_price),
            "exec_quantity": float(order.exec_quantity),
            "last_fill_price": float(order.last_fill_price),
            "last_fill_quantity": float(order.last_fill_quantity),
            "remaining_quantity": float(order.remaining),
            "create_date": iso(order.create_date),
            "transaction_date": iso(order.transaction_date),
            "class": "multileg",
            "num_legs": len(order.legs),
            "strategy": _strategy(order),
            "leg": [_leg_record(order, leg, include_tags) for leg in order.legs],
        }
        if include_tags and order.tag:
            record["tag"] = order.tag
    if order.price is not None and order.type != "market":
        record["price"] = order.price
    if order.stop is not None:
        record["stop_price"] = order.stop
    if order.reason_description:
        record["reason_description"] = order.reason_description
    return record


def _strategy(order: Order) -> str:
    return {2: "spread", 3: "custom", 4: "condor"}.get(len(order.legs), "custom")


def account_event(order: Order, leg: OrderLeg | None, account: str) -> dict[str, Any]:
    """One account-stream order event (numbers are JSON numbers, dates ISO-8601 UTC)."""
    exec_quantity = leg.exec_quantity if leg else order.exec_quantity
    quantity = leg.quantity if leg else order.quantity
    event: dict[str, Any] = {
        "id": leg.id if leg else order.id,
        "event": "order",
        "status": leg.status if leg else order.status,
        "type": order.type,
        "price": float(order.price or 0),
        "stop_price": float(order.stop or 0),
        "avg_fill_price": float(leg.avg_fill_price if leg else order.avg_fill_price),
        "exec_quantity": float(exec_quantity),
        "last_fill_quantity": float(leg.last_fill_quantity if leg else order.last_fill_quantity),
        "remaining_quantity": float(quantity - exec_quantity),
        "transaction_date": iso(order.transaction_date),
        "create_date": iso(order.create_date),
        "account": account,
    }
    if leg is not None:
        event["parent_id"] = order.id
    if order.tag:
        event["tag"] = order.tag
    return event


def position_record(holding: Holding) -> dict[str, Any]:
    return {
        "cost_basis": holding.cost_basis,
        "date_acquired": iso(holding.date_acquired),
        "id": holding.id,
        "quantity": float(holding.quantity),
        "symbol": holding.symbol,
    }


def balances_record(broker: Broker) -> dict[str, Any]:
    long_value = Decimal(0)
    short_value = Decimal(0)
    for holding in broker.holdings.values():
        quote = broker.market.true_quote(holding.symbol)
        mark = Decimal(round(quote.mid_cents)) / 100 if quote else Decimal(0)
        value = mark * 100 * holding.quantity
        if holding.quantity > 0:
            long_value += value
        else:
            short_value += value
    cash = broker.cash
    equity = cash + long_value + short_value
    return {
        "option_short_value": short_value,
        "total_equity": equity,
        "account_number": broker.account_id,
        "account_type": broker.scenario.broker.account_type,
        "close_pl": broker.realized_pnl,
        "current_requirement": Decimal(0),
        "equity": 0,
        "long_market_value": long_value,
        "market_value": long_value + short_value,
        "open_pl": Decimal(0),
        "option_long_value": long_value,
        "option_requirement": Decimal(0),
        "pending_orders_count": len(broker.open_orders()),
        "short_market_value": short_value,
        "stock_long_value": Decimal(0),
        "total_cash": cash,
        "uncleared_funds": 0,
        "pending_cash": 0,
        "margin": {"fed_call": 0, "maintenance_call": 0, "option_buying_power": cash,
                   "stock_buying_power": cash * 2, "stock_short_value": 0, "sweep": 0},
    }
