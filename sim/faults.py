"""Injected faults: scheduled at scenario times, or injected now through ``/sim/faults``.

Fault times and durations are market time. Latency is real time (it is a network delay).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from typing import Any

import msgspec

from sim.broker import Broker
from sim.market import Market
from sim.scenario import (
    BrokerCancel,
    CrossedQuote,
    DropAccountSocket,
    DropMarketSocket,
    Fault,
    HttpErrors,
    Latency,
    LoseAccountEvents,
    ManualClose,
    NullPositions,
    RejectOrders,
    Scenario,
    StaleQuotes,
    ZeroBid,
    parse_duration,
)
from sim.streams import AccountHub, MarketHub

__all__ = ["FaultRecord", "Faults", "HttpFault"]


class FaultRecord(msgspec.Struct, frozen=True):
    at: dt.datetime
    kind: str
    detail: dict[str, Any]


class HttpFault(msgspec.Struct, frozen=True):
    status: int
    apply: bool


class _Burst(msgspec.Struct):
    fault: HttpErrors
    left: int


class _Slow(msgspec.Struct, frozen=True):
    fault: Latency
    until: float  # market offset


class Faults:
    """Owner of fault state. The tick loop calls :meth:`on_tick`; the HTTP layer asks
    :meth:`http_fault`, :meth:`latency` and :meth:`take_null_positions` per request."""

    def __init__(self, scenario: Scenario, market: Market, broker: Broker,
                 market_hub: MarketHub, account_hub: AccountHub) -> None:
        self.market = market
        self.broker = broker
        self.market_hub = market_hub
        self.account_hub = account_hub
        self._due = sorted(
            ((scenario.offset_of(f.at), i, f) for i, f in enumerate(scenario.faults)),
            key=lambda item: (item[0], item[1]),
        )
        self._bursts: list[_Burst] = []
        self._slow: list[_Slow] = []
        self._null_positions = 0
        self.log: list[FaultRecord] = []

    def on_tick(self) -> None:
        while self._due and self._due[0][0] <= self.market.offset:
            _, _, fault = self._due.pop(0)
            self.inject(fault)

    def inject(self, fault: Fault) -> dict[str, Any]:
        """Apply ``fault`` now; returns what it did (also kept in :attr:`log`)."""
        detail = self._apply(fault)
        kind = msgspec.inspect.type_info(type(fault))
        tag = getattr(kind, "tag", None) or type(fault).__name__
        self.log.append(FaultRecord(self.market.clock.now(), str(tag), detail))
        return detail

    def _apply(self, fault: Fault) -> dict[str, Any]:
        offset = self.market.offset
        match fault:
            case DropMarketSocket():
                return {"dropped": self.market_hub.drop_all()}
            case DropAccountSocket():
                return {"dropped": self.account_hub.drop_all()}
            case HttpErrors():
                self._bursts.append(_Burst(fault, fault.count))
                return {"status": fault.status, "path": fault.path, "count": fault.count}
            case Latency():
                until = offset + parse_duration(fault.duration)
                self._slow.append(_Slow(fault, until))
                return {"ms": fault.ms, "path": fault.path}
            case LoseAccountEvents():
                self.account_hub.lose_until = offset + parse_duration(fault.duration)
                return {"until_offset": self.account_hub.lose_until}
            case NullPositions():
                self._null_positions += fault.count
                return {"count": fault.count}
            case StaleQuotes():
                self.market.set_override(fault.symbol, "stale", parse_duration(fault.duration))
                return {"symbol": fault.symbol}
            case CrossedQuote():
                self.market.set_override(fault.symbol, "crossed", parse_duration(fault.duration))
                return {"symbol": fault.symbol}
            case ZeroBid():
                self.market.set_override(fault.symbol, "zero_bid", parse_duration(fault.duration))
                return {"symbol": fault.symbol}
            case RejectOrders():
                self.broker.reject_next(fault.count, fault.reason, fault.after_accept)
                return {"count": fault.count, "after_accept": fault.after_accept}
            case ManualClose():
                return {"order_id": self.broker.manual_close(fault.symbols, fault.quantity)}
            case BrokerCancel():
                return {"canceled": self.broker.broker_cancel(fault.order_id, fault.tag)}
        raise AssertionError(f"unhandled fault {fault!r}")  # pragma: no cover

    # -- per request ------------------------------------------------------------------------

    def http_fault(self, method: str, path: str) -> HttpFault | None:
        for burst in self._bursts:
            fault = burst.fault
            if fault.method and fault.method.upper() != method:
                continue
            if not fnmatch.fnmatchcase(path, fault.path):
                continue
            burst.left -= 1
            if burst.left <= 0:
                self._bursts.remove(burst)
            return HttpFault(fault.status, fault.apply)
        return None

    def latency(self, path: str) -> float:
        """Real seconds to delay the answer to ``path``."""
        offset = self.market.offset
        self._slow = [s for s in self._slow if s.until > offset]
        delays = [s.fault.ms for s in self._slow if fnmatch.fnmatchcase(path, s.fault.path)]
        return max(delays, default=0) / 1000

    def take_null_positions(self) -> bool:
        if self._null_positions > 0:
            self._null_positions -= 1
            return True
        return False
