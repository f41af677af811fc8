"""Versions of a STIX indicator on the compacted ``intel.indicators`` topic: what the normaliser
writes for each, and what a running detector and one started afresh on the compacted topic
(the last record of each key, read in any order) then match."""

from __future__ import annotations

import itertools
import json
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from vigil.detect.intel import IntelIndex
from vigil.events.types import STIX_WITHDRAWAL, IntelIndicator
from vigil.hub.raw import RawRecord
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.intel.stix import parse_objects, pattern_values

NOW = datetime(2026, 11, 29, tzinfo=UTC)
AT = datetime(2026, 6, 1, tzinfo=UTC)
STIX_ID = "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
IP = "203.0.113.7"
WALLET = "0x" + "22" * 20
V1, V2, V3 = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00.500Z"


def indicator(pattern: str, modified: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": STIX_ID,
        "created": "2026-01-01T00:00:00Z",
        "modified": modified,
        "valid_from": "2026-01-01T00:00:00Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "indicator_types": ["malicious-activity"],
        **extra,
    }


def record(*objects: dict[str, Any]) -> RawRecord:
    doc = {"type": "bundle", "id": "bundle--0a7c3a02-7b4b-4a1a-8d0e-1c0f5a9b3c11", "objects": list(objects)}
    return RawRecord("intel", "stix_bundle", json.dumps(doc).encode(), NOW, meta={"feed": "stix:f"})


def topic(*records: RawRecord) -> list[IntelIndicator]:
    """What the normaliser writes to the topic for ``records``, in order."""
    out = []
    for raw in records:
        for event in IntelNormalizer().normalize(raw):
            assert isinstance(event, IntelIndicator)
            out.append(event)
    return out


def running(events: list[IntelIndicator]) -> IntelIndex:
    return IntelIndex.from_events(events)


def restarted(events: list[IntelIndicator]) -> list[IntelIndex]:
    """Detectors started on the compacted topic, one per order its records may be read in."""
    compacted = {e.key(): e for e in events}
    return [IntelIndex.from_events(order) for order in itertools.permutations(compacted.values())]


CORRECTIONS = {
    "a file hash": {"pattern": "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']"},
    "an AND": {"pattern": f"[ipv4-addr:value = '{IP}' AND network-traffic:dst_port = 4444]"},
    "another pattern language": {"pattern": "title: x", "pattern_type": "sigma"},
    "a value of nothing": {"pattern": "[domain-name:value = '.']"},
}


@pytest.mark.parametrize("correction", CORRECTIONS.values(), ids=list(CORRECTIONS))
def test_a_version_with_no_value_to_match_withdraws_what_the_older_one_listed(
    correction: dict[str, str],
) -> None:
    # It sent nothing, and the old version's IP matched for ever, running or restarted.
    v1 = record(indicator(f"[ipv4-addr:value = '{IP}']", V1))
    v2 = record({**indicator("", V2), **correction})
    events = topic(v1, v2)
    marker = events[-1]
    assert (marker.payload.indicator_type, marker.payload.value) == (STIX_WITHDRAWAL, STIX_ID)
    assert (marker.payload.stix_id, marker.payload.revoked) == (STIX_ID, True)
    assert marker.payload.list_version == "2026-02-01T00:00:00+00:00"
    assert running(events).lookup(IP, AT) is None
    assert all(index.lookup(IP, AT) is None for index in restarted(events))


def test_a_later_version_listing_values_again_matches_them_whatever_the_order_read() -> None:
    events = topic(
        record(indicator(f"[ipv4-addr:value = '{IP}']", V1)),
        record(indicator("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", V2)),
        record(indicator(f"[x-crypto-address:value = '{WALLET}']", V3)),
    )
    for index in [running(events), *restarted(events)]:
        assert index.lookup(IP, AT) is None
        assert index.lookup(WALLET, AT) is not None


def test_a_marker_is_never_matched_as_an_indicator() -> None:
    assert topic(record(indicator("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", V1))) == []
    (marker,) = topic(record(indicator("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", V2)))
    # Even one that says it is not revoked (no normaliser writes it; a rule case could).
    unrevoked = msgspec.structs.replace(
        marker, payload=msgspec.structs.replace(marker.payload, revoked=False)
    )
    index = running([marker, unrevoked])
    assert index.lookup(STIX_ID) is None
    assert len(index) == 0
    assert marker.entities.wallet is None


@pytest.mark.parametrize("newest_first", [True, False])
def test_of_several_versions_in_one_record_only_the_newest_is_written(newest_first: bool) -> None:
    # Newest first, the older version was written last under the same key: after compaction a
    # restarted detector matched the address its feed had revoked.
    pattern = f"[x-crypto-address:value = '{WALLET}']"
    versions = [indicator(pattern, V2, revoked=True), indicator(pattern, V1)]
    events = topic(record(*(versions if newest_first else versions[::-1])))
    assert [(e.payload.list_version, e.payload.revoked) for e in events] == [
        ("2026-02-01T00:00:00+00:00", True)
    ]
    assert running(events).lookup(WALLET) is None
    assert all(index.lookup(WALLET) is None for index in restarted(events))


def test_an_older_version_listing_values_is_left_out_for_a_newer_marker_in_the_same_record() -> None:
    events = topic(
        record(
            indicator("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", V2),
            indicator(f"[ipv4-addr:value = '{IP}']", V1),
        )
    )
    assert [e.payload.indicator_type for e in events] == [STIX_WITHDRAWAL]


def test_versions_are_ordered_as_times_not_as_text() -> None:
    # "...00:00.500+00:00" is later than "...00:01+00:00" read as text, not as a time.
    early = indicator(f"[ipv4-addr:value = '{IP}']", "2026-03-01T00:00:00.500Z")
    late = indicator(f"[x-crypto-address:value = '{WALLET}']", "2026-03-01T00:00:01Z")
    result = parse_objects([late, early], where="t")
    assert [p.value for p in result.indicators] == [WALLET]
    assert result.superseded == 1


def test_indicators_of_one_version_and_other_ids_are_all_kept() -> None:
    other = {
        **indicator(f"[ipv4-addr:value = '{IP}']", V1),
        "id": "indicator--1d5a8c0e-5b4f-4b8e-9f7a-2c3d4e5f6a7b",
    }
    same = indicator(f"[x-crypto-address:value = '{WALLET}']", V1)
    again = indicator(f"[ipv4-addr:value = '{IP}']", V1)
    result = parse_objects([other, same, again], where="t")
    assert sorted(p.value for p in result.indicators) == sorted([IP, WALLET, IP])
    assert result.superseded == 0


A, B = "0x" + "33" * 20, "0x" + "44" * 20


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (f"[x-crypto-address:value IN ('{A}', '{B}')]", [("eth_address", A), ("eth_address", B)]),
        ("[ipv4-addr:value IN ('192.0.2.1')]", [("ipv4", "192.0.2.1")]),
        (
            "[domain-name:value IN ('a,b.example', 'o\\'reilly.example')]",
            [("domain", "a,b.example"), ("domain", "o'reilly.example")],
        ),
        (
            "[ipv4-addr:value IN ('192.0.2.0/24', '192.0.2.9')]",
            [("ipv4", "192.0.2.0/24"), ("ipv4", "192.0.2.9")],
        ),
        ("[ipv4-addr:value NOT IN ('192.0.2.1', '192.0.2.2')]", None),
        ("[file:name IN ('a.exe', 'b.exe')]", None),
    ],
)  # fmt: skip
def test_an_in_list_is_its_values_as_equalities_joined_by_or_are(
    pattern: str, expected: list[tuple[str, str]] | None
) -> None:
    # STIX 2.1 section 9.5; the indicator was skipped, silently.
    assert pattern_values(pattern, where="t") == expected


def test_skipped_indicators_are_counted_and_logged_by_id_made_inert(caplog: pytest.LogCaptureFixture) -> None:
    normalizer = IntelNormalizer()
    file_hash = "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']"
    skipped = [
        {**indicator(file_hash, V1), "id": f"indicator--{n:08x}-0000-4000-8000-000000000000"}
        for n in range(25)
    ]
    later = {**skipped[24], "modified": V2}  # the only later version: the only marker
    raw = record(indicator(f"[ipv4-addr:value = '{IP}']", V1), *skipped[:24], later)
    raw = RawRecord(
        raw.source, raw.kind, raw.value, NOW, meta={"feed": "stix:f", "list": "stix.evil\nCRITICAL all clear"}
    )
    with caplog.at_level(logging.INFO, logger="vigil.sources.intel.normalize"):
        events = normalizer.normalize(raw)
    assert normalizer.skipped == 25
    # The IP, and a marker for the later version alone: a first version has nothing to withdraw
    # (a marker for each of a feed's million file hashes grew the topic and every index).
    assert [e.payload.indicator_type for e in events] == ["ipv4", STIX_WITHDRAWAL]
    (message,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert message.startswith(
        "intel stix.evil\\nCRITICAL all clear: skipped 25 STIX indicators of 26 objects (no IP, domain, "
        "URL, e-mail or crypto address to match in their patterns); 1 later versions among them sent as "
        "withdrawal markers, 0 older versions left out for a newer one: "
    )
    assert "\n" not in message
    assert skipped[0]["id"] in message
    assert skipped[19]["id"] in message
    assert skipped[20]["id"] not in message
    assert message.endswith(" (and 5 more)")
