"""``raw.intel`` -> ``intel_indicator`` events (for the compacted ``intel.indicators`` topic).

Kinds handled:

- ``address_list``: a whole list (OFAC lines, ScamSniffer JSON); ``meta`` names the list,
  its format, feed and version (content hash).  One indicator per entry, each carrying the
  list version it came from, so an alert can say which version it matched.
- ``address_list_removed``: entries that left a list; each becomes a ``revoked`` indicator
  (the compacted topic then keeps the revocation as the latest value for that key).
- ``stix_bundle``: a STIX 2.x bundle; ``taxii_objects``: a TAXII 2.1 envelope.  Indicators
  carry their STIX id, ``modified`` as version, validity and ``revoked``; only the newest
  version of each STIX id in the record is sent, and an indicator whose pattern holds no value
  to match is sent as a withdrawal marker (see :mod:`vigil.sources.intel.stix`), its id logged.

Event ids hash feed, type, value, version and revocation, so re-publishing the same list
version yields the same ids (exact deduplication downstream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import msgspec

from vigil.errors import ContractError
from vigil.events.base import Entities, Event, Id
from vigil.events.codec import escaped, inert
from vigil.events.ids import stable_id
from vigil.events.types import (
    STIX_WITHDRAWAL,
    IndicatorCategory,
    IndicatorType,
    IntelIndicator,
    IntelIndicatorPayload,
)
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer, PartlyRefused
from vigil.sources.intel import ofac, scamlists, stix

log = logging.getLogger(__name__)

NAME = "intel"
STIX_FORMAT = "stix_bundle"
#: Skipped indicators' ids named in one log line at most (a bundle of file hashes has thousands).
SKIPPED_LOGGED = 20


@dataclass(frozen=True)
class ListFormat:
    parse: Callable[..., list[tuple[str, str, str]]]
    #: indicator type -> category for this format (used for revocations of removed entries)
    categories: Callable[[str], str]


LIST_FORMATS: dict[str, ListFormat] = {
    ofac.FORMAT: ListFormat(ofac.parse, lambda _t: ofac.CATEGORY),
    scamlists.ADDRESSES: ListFormat(scamlists.parse_addresses, lambda _t: "drainer"),
    scamlists.DOMAIN_MAP: ListFormat(
        scamlists.parse_domain_map, lambda t: "phishing" if t == "domain" else "drainer"
    ),
}


def parse_list(
    fmt: str, data: bytes, *, where: str, meta: dict[str, Any] | None = None
) -> list[tuple[str, str, str]]:
    """(type, value, category) entries of a list in format ``fmt``; ContractError if malformed."""
    del meta  # the formats so far need nothing beyond the bytes
    try:
        parser = LIST_FORMATS[fmt]
    except KeyError:
        msg = f"{where}: unknown list format {fmt!r}; expected one of: {', '.join(sorted(LIST_FORMATS))}"
        raise ContractError(msg) from None
    return parser.parse(data, where=where)


def _entities(indicator_type: str, value: str) -> Entities:
    if indicator_type in ("eth_address", "btc_address", "crypto_address"):
        return Entities(wallet=value)
    if indicator_type in ("ipv4", "ipv6"):
        return Entities(ip=value)
    if indicator_type == "domain":
        return Entities(domain=value)
    if indicator_type == "email":
        return Entities(email=value)
    return Entities()


def _meta(record: RawRecord, *names: str) -> list[str]:
    out = []
    for name in names:
        value = record.meta.get(name)
        if not isinstance(value, str) or not value:
            msg = f"raw.intel {record.kind} record: meta.{name} missing (the list source always sets it)"
            raise ContractError(msg)
        out.append(value)
    return out


class _Removed(msgspec.Struct):
    """What the list source publishes when entries leave a list.  Feed and version are checked
    as the contract checks the indicators they go into; entries one by one (see ``_removed``)."""

    list_name: str = msgspec.field(name="list")
    feed: Id
    version: Id
    removed: list[tuple[str, str, str]]
    previous_version: str | None = None


#: (A STIX withdrawal marker is no list entry.)
_TYPES: frozenset[str] = frozenset(get_args(IndicatorType)) - {STIX_WITHDRAWAL}
_CATEGORIES: frozenset[str] = frozenset(get_args(IndicatorCategory))


def _admissible(entry: tuple[str, str, str]) -> bool:
    """A removed entry the contract takes as an indicator: a known type and category, a value."""
    kind, value, category = entry
    return kind in _TYPES and bool(value) and category in _CATEGORIES


class IntelNormalizer(Normalizer):
    source = NAME

    def __init__(self) -> None:
        #: STIX indicators skipped since start: no value Vigil matches in their patterns.
        self.skipped = 0

    def normalize(self, record: RawRecord) -> list[Event]:
        handler = {
            "address_list": self._list,
            "address_list_removed": self._removed,
            "stix_bundle": self._bundle,
            "taxii_objects": self._envelope,
        }.get(record.kind)
        if handler is None:
            msg = (
                f"raw.intel record of kind {record.kind!r}; expected address_list, "
                "address_list_removed, stix_bundle or taxii_objects"
            )
            raise ContractError(msg)
        return handler(record)

    @staticmethod
    def _indicator(
        *,
        feed: str,
        indicator_type: str,
        value: str,
        category: str,
        version: str,
        occurred_at: datetime,
        ingested_at: datetime,
        revoked: bool = False,
        **extra: Any,
    ) -> IntelIndicator:
        # Two STIX indicators of one feed may list the same value (two campaigns naming one IP):
        # they are two listings (the record key tells them apart), so their ids must differ too,
        # or deduplication by id keeps one of them.  Ids without a STIX id are unchanged.
        stix_id = extra.get("stix_id")
        parts = (feed, indicator_type, value, version, revoked, *((stix_id,) if stix_id else ()))
        return IntelIndicator(
            event_id=stable_id(*parts, prefix="intel-"),
            source=NAME,
            occurred_at=occurred_at,
            ingested_at=ingested_at,
            entities=_entities(indicator_type, value),
            payload=IntelIndicatorPayload(
                indicator_type=indicator_type,  # type: ignore[arg-type]
                value=value,
                category=category,  # type: ignore[arg-type]
                feed=feed,
                list_version=version,
                revoked=revoked,
                **extra,
            ),
        )

    def _list(self, record: RawRecord) -> list[Event]:
        name, fmt, feed, version = _meta(record, "list", "format", "feed", "version")
        entries = parse_list(fmt, record.value, where=f"intel list {name}", meta=record.meta)
        return [
            self._indicator(
                feed=feed,
                indicator_type=t,
                value=v,
                category=c,
                version=version,
                occurred_at=record.received_at,
                ingested_at=record.received_at,
                description=f"list {name}",
            )
            for t, v, c in entries
        ]

    def _removed(self, record: RawRecord) -> list[Event]:
        try:
            doc = msgspec.json.decode(record.value, type=_Removed)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"raw.intel address_list_removed record: {exc}"
            raise ContractError(msg) from None
        # An entry the contract would refuse (an empty value, an unknown type or category: a list
        # source's cursor from before a fix may hold one) is left out, not the whole record: that
        # would leave every other entry of the version listed.  The record is dead-lettered too,
        # naming them (PartlyRefused).
        # (An entry of another shape refuses the record whole, above: only the list source
        # writes these.)
        kept: list[tuple[str, str, str]] = []
        bad: list[tuple[str, str, str]] = []
        for entry in doc.removed:
            (kept if _admissible(entry) else bad).append(entry)
        revoked: list[Event] = [
            self._indicator(
                feed=doc.feed,
                indicator_type=t,
                value=v,
                category=c,
                version=doc.version,
                occurred_at=record.received_at,
                ingested_at=record.received_at,
                revoked=True,
                description=f"removed from list {doc.list_name} in version {doc.version}",
            )
            for t, v, c in kept
        ]
        if bad:
            shown = ", ".join(repr(e) for e in bad[:3]) + (
                f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            )
            msg = (
                f"raw.intel removals of list {doc.list_name!r} version {doc.version!r}: left out "
                f"{len(bad)} of {len(doc.removed)} entries the contract refuses (expected a type of "
                f"{', '.join(sorted(_TYPES))}, a value and a category of {', '.join(sorted(_CATEGORIES))}): "
                f"{shown}; the other {len(kept)} revoked"
            )
            raise PartlyRefused(msg, revoked)
        return revoked

    def _objects(self, record: RawRecord, objects: Any, feed: str, where: str) -> list[Event]:
        if not isinstance(objects, list):
            msg = f"{where}: 'objects' must be an array, got {type(objects).__name__}"
            raise ContractError(msg)
        result = stix.parse_objects(objects, where=where)
        if result.skipped:
            self._log_skipped(result, len(objects), where)
        indicators: list[Event] = [
            self._indicator(
                feed=feed,
                indicator_type=ind.indicator_type,
                value=ind.value,
                category=ind.category,
                version=ind.version,
                occurred_at=record.received_at,
                ingested_at=record.received_at,
                revoked=ind.revoked,
                valid_from=ind.valid_from,
                valid_until=ind.valid_until,
                confidence=ind.confidence,
                description=ind.description,
                stix_id=ind.stix_id,
            )
            for ind in (*result.indicators, *result.withdrawals)
        ]
        if result.rejected:
            # Dead-lettered, naming what was wrong; with anything usable in it, the others go on.
            shown = "; ".join(result.rejected[:3])
            more = f" (and {len(result.rejected) - 3} more)" if len(result.rejected) > 3 else ""
            if not result.indicators and not result.skipped:
                raise ContractError(shown + more)
            msg = (
                f"left out {len(result.rejected)} of {len(objects)} objects: {shown}{more}; "
                f"the other {len(indicators)} indicators taken"
            )
            raise PartlyRefused(msg, indicators)
        return indicators

    def _log_skipped(self, result: stix.StixResult, objects: int, where: str) -> None:
        # Not dead-lettered: a feed's file hashes and behaviour patterns are no error, and come
        # again in every bundle.  Logged, so an indicator that was expected to match can be found
        # (the ids escaped and bounded: stix2 checked their shape, but they are the feed's text).
        skipped = result.skipped
        self.skipped += len(skipped)
        more = len(skipped) - SKIPPED_LOGGED
        log.info(
            "%s: skipped %d STIX indicators of %d objects (no IP, domain, URL, e-mail or crypto address "
            "to match in their patterns); %d later versions among them sent as withdrawal markers, "
            "%d older versions left out for a newer one: %s%s",
            inert(where),
            len(skipped),
            objects,
            len(result.withdrawals),
            result.superseded,
            ", ".join(escaped(stix_id[:100]) for stix_id in skipped[:SKIPPED_LOGGED]),
            f" (and {more} more)" if more > 0 else "",
        )

    @staticmethod
    def _json(record: RawRecord, where: str) -> dict[str, Any]:
        try:
            doc = msgspec.json.decode(record.value)
        except msgspec.DecodeError as exc:
            msg = f"{where}: not valid JSON: {exc}"
            raise ContractError(msg) from None
        if not isinstance(doc, dict):
            msg = f"{where}: expected a JSON object, got {type(doc).__name__}"
            raise ContractError(msg)
        return doc

    def _bundle(self, record: RawRecord) -> list[Event]:
        name = str(record.meta.get("list") or "stix bundle")
        where = f"intel {name}"
        doc = self._json(record, where)
        if doc.get("type") != "bundle":
            msg = f"{where}: expected a STIX bundle (type 'bundle'), got type {doc.get('type')!r:.40}"
            raise ContractError(msg)
        return self._objects(record, doc.get("objects", []), str(record.meta.get("feed") or "stix"), where)

    def _envelope(self, record: RawRecord) -> list[Event]:
        feed = str(record.meta.get("feed") or "taxii")
        where = f"intel {feed}"
        doc = self._json(record, where)
        return self._objects(record, doc.get("objects", []), feed, where)
