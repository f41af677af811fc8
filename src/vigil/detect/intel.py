"""The indicator index detection matches against: O(1) lookups, hot-reloaded.

Indicators arrive as :class:`~vigil.events.types.IntelIndicator` records (the compacted
``intel.indicators`` topic, read whole by every detection process as a global table; or,
in memory, inline in the event stream).  Each record replaces the previous version of
that indicator, a revoked one removes it: the index is always the latest list, without a
restart.  Every match reports the ``feed@list_version`` it was made against, which the
alert records as ``intel_version``.

Values are normalised the way events carry them: EVM addresses and domains lower-case,
other values as given.  Millions of indicators are one dict each (a few hundred bytes per
entry).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vigil.events.base import Entities
from vigil.events.ids import stable_id
from vigil.events.types import IntelIndicator, IntelIndicatorPayload


@dataclass(frozen=True, slots=True)
class IndicatorEntry:
    indicator_type: str
    category: str
    feed: str
    list_version: str
    description: str | None = None

    @property
    def version(self) -> str:
        return f"{self.feed}@{self.list_version}"


def normalise(value: str) -> str:
    value = value.strip()
    # EVM addresses and domains are case-insensitive; IPs and other values stay as given.
    if value.startswith(("0x", "0X")) or ("." in value and not value.replace(".", "").isdigit()):
        return value.lower()
    return value


class IntelIndex:
    def __init__(self) -> None:
        self._entries: dict[str, IndicatorEntry] = {}
        self._feeds: dict[str, str] = {}
        self.updates = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, value: str) -> bool:
        return normalise(value) in self._entries

    @property
    def version(self) -> str:
        """Every feed's current list version, e.g. ``ofac@2024-09-27,scamsniffer@2024-10-01``."""
        return ",".join(f"{feed}@{ver}" for feed, ver in sorted(self._feeds.items()))

    def apply(self, indicator: IntelIndicator, now: datetime | None = None) -> None:
        """Take one indicator record: add or replace it, or remove it when revoked or expired."""
        p = indicator.payload
        key = normalise(p.value)
        self.updates += 1
        self._feeds[p.feed] = p.list_version
        expired = now is not None and p.valid_until is not None and p.valid_until <= now
        if p.revoked or expired:
            self._entries.pop(key, None)
            return
        self._entries[key] = IndicatorEntry(
            p.indicator_type, p.category, p.feed, p.list_version, p.description
        )

    @classmethod
    def from_events(cls, events: Iterable[object]) -> IntelIndex:
        """An index built from the indicator records among ``events``."""
        index = cls()
        for event in events:
            if isinstance(event, IntelIndicator):
                index.apply(event)
        return index

    def add(
        self, values: Iterable[str], *, indicator_type: str, category: str, feed: str, list_version: str
    ) -> int:
        """Bulk load (a list file); returns how many values were added."""
        n = 0
        for value in values:
            self._entries[normalise(value)] = IndicatorEntry(indicator_type, category, feed, list_version)
            n += 1
        self._feeds[feed] = list_version
        self.updates += n
        return n

    def remove(self, value: str) -> bool:
        """Withdraw an indicator (a tombstone on the compacted topic); True if it was there."""
        self.updates += 1
        return self._entries.pop(normalise(value), None) is not None

    def lookup(self, value: str | None) -> IndicatorEntry | None:
        if not value:
            return None
        return self._entries.get(normalise(value))

    def items(self) -> Iterator[tuple[str, IndicatorEntry]]:
        return iter(self._entries.items())


# --------------------------------------------------------------------------- the public list files


def indicators_from_files(intel_dir: Path, at: datetime) -> list[IntelIndicator]:
    """The OFAC and ScamSniffer lists under ``intel_dir`` as indicator records.

    The list version is a content digest, so a changed file is a new version.  Used by the
    tests and the evaluation; production reads them from ``intel.indicators``.
    """
    out: list[IntelIndicator] = []
    ofac_dir = intel_dir / "ofac"
    ofac_files = sorted(ofac_dir.glob("sanctioned_addresses_*.txt"))
    ofac_version = stable_id(*(f.read_bytes() for f in ofac_files))[:12]
    for path in ofac_files:
        asset = path.stem.rsplit("_", 1)[-1]
        kind = "eth_address" if asset in ("ETH", "ARB", "BSC", "ETC", "USDC", "USDT") else "crypto_address"
        kind = "btc_address" if asset == "XBT" else kind
        for line in path.read_text().splitlines():
            value = line.strip()
            if value:
                out.append(
                    _indicator(kind, value, "sanctioned", "ofac", ofac_version, at, f"OFAC SDN {asset}")
                )
    scam_file = intel_dir / "scamsniffer" / "address.json"
    if scam_file.exists():
        raw = scam_file.read_bytes()
        version = stable_id(raw)[:12]
        for value in json.loads(raw):
            out.append(_indicator("eth_address", str(value), "drainer", "scamsniffer", version, at, None))
    domains_file = intel_dir / "scamsniffer" / "combined.json"
    if domains_file.exists():
        raw = domains_file.read_bytes()
        version = stable_id(raw)[:12]
        for domain in json.loads(raw):
            out.append(
                _indicator("domain", str(domain), "phishing", "scamsniffer-domains", version, at, None)
            )
    return out


def _indicator(
    kind: str, value: str, category: str, feed: str, version: str, at: datetime, description: str | None
) -> IntelIndicator:
    value = normalise(value)
    return IntelIndicator(
        event_id=stable_id("intel", feed, version, kind, value),
        source=feed,
        occurred_at=at,
        entities=Entities(),
        payload=IntelIndicatorPayload(
            indicator_type=kind,  # type: ignore[arg-type]
            value=value,
            category=category,  # type: ignore[arg-type]
            feed=feed,
            list_version=version,
            description=description,
        ),
    )
