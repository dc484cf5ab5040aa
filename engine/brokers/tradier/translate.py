"""Tradier wire views -> engine messages (the one place that knows both vocabularies).

The wire layer (:mod:`engine.brokers.tradier.wire`) has already made Tradier's mixed types
regular (prices as ``Decimal`` whether they came as JSON numbers or strings, epoch milliseconds
as ``int`` whether they came as strings or numbers). What is left here is naming and the
engine's conventions: an unquoted side is None (a zero bid stays a real zero), sizes default to
0, broker timestamps stay epoch milliseconds, ``received_at`` is ``trio.current_time()`` taken
once per frame by the caller.

These functions sit on the quote hot path (tens of thousands of events per second): no logging,
no validation beyond what decoding did, one message built per call.
"""

from __future__ import annotations

from engine.brokers.tradier import wire
from engine.messages import Quote, TradePrint

__all__ = ["quote_from_event", "quote_from_rest", "trade_from_event"]


def quote_from_event(event: wire.QuoteEvent, received_at: float) -> Quote:
    """A stream ``quote`` event as a :class:`Quote`."""
    return Quote(
        symbol=event.symbol,
        bid=event.bid,
        ask=event.ask,
        bid_size=event.bidsz or 0,
        ask_size=event.asksz or 0,
        bid_at=event.biddate,
        ask_at=event.askdate,
        received_at=received_at,
    )


def trade_from_event(
    event: wire.TradeEvent | wire.TradexEvent, received_at: float
) -> TradePrint | None:
    """A stream ``trade`` / ``tradex`` event as a :class:`TradePrint`; None when it carries no
    price at all (nothing a watcher could use). ``price`` is the print's own price; ``last``
    is only a fallback (Tradier sends both, normally equal). A ``size`` of 0 is a real print."""
    price = event.price if event.price is not None else event.last
    if price is None:
        return None
    return TradePrint(
        symbol=event.symbol,
        last=price,
        size=event.size or 0,
        traded_at=event.date,
        received_at=received_at,
    )


def quote_from_rest(quote: wire.RestQuote, received_at: float) -> Quote:
    """A REST ``/markets/quotes`` answer row as a :class:`Quote` (the polling fallback)."""
    return Quote(
        symbol=quote.symbol,
        bid=quote.bid,
        ask=quote.ask,
        bid_size=quote.bidsize or 0,
        ask_size=quote.asksize or 0,
        bid_at=quote.bid_date,
        ask_at=quote.ask_date,
        received_at=received_at,
    )
