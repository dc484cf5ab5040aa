"""The scenario report: what the simulator saw, in a shape tests outside the project read.

Keep the names stable::

    {"scenario": str,
     "orders": [{"id", "received_at", "class", "type", "price", "duration", "tag",
                 "legs": [{"option_symbol", "side", "quantity"}], "status",
                 "modifications": [{"at", "price"}], "fills": [{"at", "quantity", "price"}]}],
     "positions_end": [{"symbol", "quantity"}],
     "trades": [{"id", "status", "strategy", "quantity", "close_reason", "realized_pnl",
                 "origin", "managed"}],
     "decisions": int}

Times are the simulator's market time in ISO-8601 (with the scenario's UTC offset).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sim.broker import Order
from sim.scenario import EASTERN
from sim.state import Simulator

__all__ = ["build_report", "order_summary"]


def _at(moment: dt.datetime) -> str:
    return moment.astimezone(EASTERN).isoformat(timespec="milliseconds")


def order_summary(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "received_at": _at(order.create_date),
        "class": order.order_class,
        "type": order.type,
        "price": order.price,
        "duration": order.duration,
        "tag": order.tag,
        "legs": [{"option_symbol": leg.option_symbol, "side": leg.side,
                  "quantity": leg.quantity} for leg in order.legs],
        "status": order.status,
        "modifications": [{"at": _at(m.at), "price": m.price} for m in order.modifications],
        "fills": [{"at": _at(f.at), "quantity": f.quantity, "price": f.price}
                  for f in order.fills],
    }


def build_report(sim: Simulator, *, decisions: int = 0,
                 trades: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report as of now. Without an engine, ``trades`` are the scenario's pre-seeded trades
    as seeded (status OPEN) and ``decisions`` is 0."""
    orders = sorted([*sim.broker.orders.values(), *sim.broker.rejected],
                    key=lambda o: (o.create_date, o.id or 0))
    if trades is None:
        trades = [
            {
                "id": trade.id or f"T{i + 1}",
                "status": "OPEN",
                "strategy": trade.strategy,
                "quantity": trade.quantity,
                "close_reason": None,
                "realized_pnl": None,
                "origin": trade.origin,
                "managed": trade.managed,
            }
            for i, trade in enumerate(sim.scenario.trades)
        ]
    return {
        "scenario": sim.scenario.name,
        "orders": [order_summary(o) for o in orders],
        "positions_end": [{"symbol": h.symbol, "quantity": h.quantity}
                          for h in sorted(sim.broker.holdings.values(), key=lambda h: h.symbol)],
        "trades": trades,
        "decisions": decisions,
    }
