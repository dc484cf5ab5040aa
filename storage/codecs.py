"""How values cross the wire: jsonb and json as Python values, through msgspec.

``Decimal`` is written as a JSON number (PostgreSQL keeps it exact), and JSON numbers with a
fraction decode to ``Decimal``, never ``float``: money lives in those documents. Integers stay
``int``.
"""

from __future__ import annotations

import decimal
from typing import Any

import msgspec

__all__ = ["init_connection"]

_json_encoder = msgspec.json.Encoder(decimal_format="number")
_json_decoder = msgspec.json.Decoder(float_hook=decimal.Decimal)


async def init_connection(conn: Any) -> None:
    # Binary codecs: COPY (the audit writer's batches) only speaks the binary format. jsonb's
    # binary form is a version byte (1) followed by the JSON text; json's is the text alone.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=_json_encoder.encode,
        decoder=_json_decoder.decode,
        format="binary",
    )


_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: object) -> bytes:
    return _JSONB_VERSION + _json_encoder.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unknown jsonb binary format version {data[:1]!r}")
    return _json_decoder.decode(data[1:])
