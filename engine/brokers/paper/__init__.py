"""The built-in paper broker: an :class:`~engine.brokers.OrderBroker` kept in memory that fills
against live quotes by the simulator's fill rules (:mod:`engine.brokers.paper.book`)."""

from __future__ import annotations

from engine.brokers.paper.broker import EVENT_BUFFER, PaperBroker, PaperOrderEvents

__all__ = ["EVENT_BUFFER", "PaperBroker", "PaperOrderEvents"]
