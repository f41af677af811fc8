"""The indicator index keeps each feed's listing: one feed withdrawing a value leaves the others."""

from __future__ import annotations

from datetime import UTC, datetime

from vigil.detect.intel import IntelIndex
from vigil.events.base import Entities
from vigil.events.types import IntelIndicator, IntelIndicatorPayload

AT = datetime(2026, 11, 1, tzinfo=UTC)
ADDR = "0x8589427373D6D84E98730D7795D8f6f8731FDA16"


def _ind(feed: str, category: str, *, revoked: bool = False) -> IntelIndicator:
    return IntelIndicator(
        event_id=f"{feed}-{revoked}",
        source=feed,
        occurred_at=AT,
        ingested_at=AT,
        entities=Entities(wallet=ADDR.lower()),
        payload=IntelIndicatorPayload(
            indicator_type="eth_address", value=ADDR, category=category,  # type: ignore[arg-type]
            feed=feed, list_version="v1", revoked=revoked,
        ),
    )  # fmt: skip


def test_keys_on_the_compacted_topic_are_per_feed() -> None:
    assert _ind("ofac", "sanctioned").key() != _ind("scamsniffer", "drainer").key()


def test_one_feed_revoking_leaves_the_other_listing() -> None:
    index = IntelIndex()
    index.apply(_ind("scamsniffer", "drainer"))
    index.apply(_ind("ofac", "sanctioned"))
    entry = index.lookup(ADDR)
    assert entry is not None
    assert entry.category == "sanctioned"  # the most severe listing wins
    index.apply(_ind("ofac", "sanctioned", revoked=True))
    entry = index.lookup(ADDR.lower())
    assert entry is not None
    assert entry.feed == "scamsniffer"
    index.apply(_ind("scamsniffer", "drainer", revoked=True))
    assert index.lookup(ADDR) is None
    assert len(index) == 0


def test_tombstone_removal_is_per_feed() -> None:
    index = IntelIndex()
    index.apply(_ind("scamsniffer", "drainer"))
    index.apply(_ind("ofac", "sanctioned"))
    assert index.remove(ADDR, "ofac")
    assert index.lookup(ADDR) is not None
    assert not index.remove(ADDR, "ofac")


def test_an_indicator_past_its_valid_until_no_longer_matches_events_after_it() -> None:
    # valid_until was checked only when an indicator was applied with a time, which no
    # production caller gave: an expired phishing domain raised alerts for ever.
    import msgspec

    index = IntelIndex()
    until = AT.replace(month=12)
    ofac = _ind("ofac", "sanctioned")
    index.apply(
        msgspec.structs.replace(ofac, payload=msgspec.structs.replace(ofac.payload, valid_until=until))
    )
    index.apply(_ind("scamsniffer", "drainer"))
    assert index.lookup(ADDR, AT).category == "sanctioned"  # type: ignore[union-attr]
    assert index.lookup(ADDR, until).category == "drainer"  # type: ignore[union-attr]
    index.apply(_ind("scamsniffer", "drainer", revoked=True))
    assert index.lookup(ADDR, until) is None
    assert index.lookup(ADDR) is not None  # no time given: as listed
