"""The raw-topic convention shared by connectors, the simulator and the normalisers.

A record on ``raw.<source>`` carries the bytes exactly as the source delivered them
(a JSON-RPC ``result``, a websocket message, a webhook body, a syslog line).  What the
bytes are is said in headers, so nothing is re-encoded on the way in:

- ``vigil.kind``: what was received (``eth_block``, ``eth_logs``, ``btc_block``,
  ``ws_message``, ``webhook``, ``syslog``, ``cloudtrail_record``, ``stix_bundle``,
  ``address_list``, ``canonical``, ...), one vocabulary per source;
- ``vigil.received_at``: RFC 3339 UTC time the connector received it;
- optional ``vigil.meta``: a small JSON object of connector facts (e.g. the list name,
  the HTTP path, the websocket URL) that the bytes themselves do not carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

KIND = "vigil.kind"
RECEIVED_AT = "vigil.received_at"
META = "vigil.meta"

_EPOCH = datetime.fromtimestamp(0, UTC)
#: ``received_at`` of a record whose header is missing or empty (a reader refuses it).
NO_RECEIVED_AT = _EPOCH


#: Nesting up to which msgspec decodes ``vigil.meta``, far below the recursion limit.
_FAST_JSON_MAX_NESTING = 32
_UNDECODED = object()


def _fast_json(raw: Any) -> Any:
    """``raw`` decoded by msgspec, which gives the same values as ``json.loads`` for the JSON
    it accepts, or ``_UNDECODED`` for what it refuses (NaN, out-of-range floats, lone
    surrogates, non-UTF-8 encodings, not JSON at all, not bytes, deep nesting): the caller
    then calls ``json.loads`` itself, which decodes it or raises its own error."""
    if type(raw) is bytes and raw.count(b"{") + raw.count(b"[") <= _FAST_JSON_MAX_NESTING:
        try:
            return msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            pass
    return _UNDECODED


@dataclass(frozen=True)
class RawRecord:
    """One raw record, as a normaliser sees it."""

    source: str
    kind: str
    value: bytes
    received_at: datetime
    key: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: The headers exactly as read from Kafka (:meth:`from_headers`; None for a record made here):
    #: a dead letter keeps them whole, trace headers and ``vigil.redriven_from`` included, which
    #: :meth:`headers` (rebuilt from the fields) does not.
    received_headers: list[tuple[str, bytes]] | None = field(default=None, compare=False, repr=False)

    def headers(self) -> list[tuple[str, bytes]]:
        hdrs = [(KIND, self.kind.encode()), (RECEIVED_AT, self.received_at.isoformat().encode())]
        if self.meta:
            hdrs.append((META, json.dumps(self.meta, separators=(",", ":")).encode()))
        return hdrs

    def size(self, headers: list[tuple[str, bytes]] | None = None) -> int:
        """The record's bytes as the broker's limit counts them: value, key and headers
        (``headers``: this record's, when already built)."""
        hdrs = self.headers() if headers is None else headers
        return len(self.value) + len(self.key or b"") + sum(len(k) + len(v) for k, v in hdrs)

    @classmethod
    def from_headers(
        cls, source: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> RawRecord:
        found = dict(headers or [])
        kind = found.get(KIND, b"").decode() or "unknown"
        received = found.get(RECEIVED_AT)
        received_at = datetime.fromisoformat(received.decode()) if received else _EPOCH
        if META in found:
            meta = _fast_json(found[META])
            if meta is _UNDECODED:
                meta = json.loads(found[META])
        else:
            meta = {}
        # The fields exactly as __init__ sets them, without a frozen dataclass's object.__setattr__
        # per field (half the cost of this method).  A field added to the class must be added here.
        record = object.__new__(cls)
        record.__dict__.update(
            source=source,
            kind=kind,
            value=value,
            received_at=received_at,
            key=key,
            meta=meta,
            received_headers=list(headers or ()),
        )
        return record
