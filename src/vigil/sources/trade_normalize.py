"""What the exchange trade normalisers (Coinbase, Binance) share: which raw records carry
market data, and reading the decimal strings exchanges send prices and sizes as."""

from __future__ import annotations

import math
import re

from vigil.errors import ContractError, DecodeError
from vigil.hub.raw import RawRecord
from vigil.sources.websocket import WS_GAP, WS_MESSAGE


def message_where(source: str, record: RawRecord) -> str | None:
    """Where errors about ``record`` happened, or ``None`` for a ``ws_gap`` record: a connector
    note about missing data, not market data, so it yields no event.  Any other kind than
    ``ws_message`` breaks the raw topic's contract."""
    if record.kind == WS_GAP:
        return None
    where = f"raw.{source} ({record.kind})"
    if record.kind != WS_MESSAGE:
        msg = f"{where}: expected kind {WS_MESSAGE!r} or {WS_GAP!r}, got {record.kind!r}"
        raise ContractError(msg)
    return where


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)")


def positive_decimal(value: str, path: str, where: str) -> float:
    """``value`` (a price or a size, at JSON ``path``) as a positive finite float.

    Plain decimals only (``"0.001"``, ``"1e-8"``): ``float()`` alone also took ``"1_000"``,
    blanks around the number, ``"infinity"``, and read them as numbers."""
    try:
        if not _DECIMAL.fullmatch(value):
            raise ValueError(value)
        number = float(value)
    except ValueError:
        msg = f"expected a decimal string at {path}, got {value[:40]!r}"
        raise DecodeError(msg, where=where, path=path) from None
    if not math.isfinite(number) or number <= 0:
        msg = f"expected a positive finite number at {path}, got {value[:40]!r}"
        raise DecodeError(msg, where=where, path=path)
    return number
