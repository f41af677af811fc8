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

KIND = "vigil.kind"
RECEIVED_AT = "vigil.received_at"
META = "vigil.meta"


@dataclass(frozen=True)
class RawRecord:
    """One raw record, as a normaliser sees it."""

    source: str
    kind: str
    value: bytes
    received_at: datetime
    key: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> list[tuple[str, bytes]]:
        hdrs = [(KIND, self.kind.encode()), (RECEIVED_AT, self.received_at.isoformat().encode())]
        if self.meta:
            hdrs.append((META, json.dumps(self.meta, separators=(",", ":")).encode()))
        return hdrs

    @classmethod
    def from_headers(
        cls, source: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> RawRecord:
        found = dict(headers or [])
        kind = found.get(KIND, b"").decode() or "unknown"
        received = found.get(RECEIVED_AT)
        received_at = (
            datetime.fromisoformat(received.decode()) if received else datetime.fromtimestamp(0, UTC)
        )
        meta = json.loads(found[META]) if META in found else {}
        return cls(source=source, kind=kind, value=value, received_at=received_at, key=key, meta=meta)
