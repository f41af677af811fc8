"""ScamSniffer lists, and the list source: refresh without restart, revocation of removed entries."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vigil.config import shared_data_dir
from vigil.errors import ContractError, SourceError
from vigil.events.types import IntelIndicator
from vigil.hub.raw import RawRecord
from vigil.sources.base import PartlyRefused
from vigil.sources.intel import scamlists
from vigil.sources.intel.lists import IntelListSource, ListSpec, content_version, shipped_lists
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.sink import MemorySink

DATA = shared_data_dir() / "intel"
SCAM = DATA / "scamsniffer"


def record(fmt: str, data: bytes) -> RawRecord:
    meta = {"list": "t", "format": fmt, "feed": scamlists.FEED, "version": content_version(data)}
    return RawRecord("intel", "address_list", data, datetime(2026, 11, 29, tzinfo=UTC), b"t", meta)


def test_address_list_yields_one_drainer_indicator_per_distinct_address() -> None:
    addresses = json.loads((SCAM / "address.json").read_text())
    events = _normalise_all([record(scamlists.ADDRESSES, (SCAM / "address.json").read_bytes())])
    assert len(events) == len({a.lower() for a in addresses})
    assert {e.payload.category for e in events} == {"drainer"}


def test_domain_map_yields_phishing_domains_and_drainer_addresses() -> None:
    doc = json.loads((SCAM / "combined.json").read_text())
    events = _normalise_all([record(scamlists.DOMAIN_MAP, (SCAM / "combined.json").read_bytes())])
    domains = {e.payload.value for e in events if e.payload.indicator_type == "domain"}
    addresses = {e.payload.value for e in events if e.payload.indicator_type != "domain"}
    assert domains == {d.lower() for d in doc if d}
    assert addresses == {a.lower() for values in doc.values() for a in values}
    assert all(e.payload.category == "phishing" for e in events if e.payload.indicator_type == "domain")


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        (scamlists.ADDRESSES, b'{"a": 1}', "expected a JSON array"),
        (scamlists.ADDRESSES, b'["0xabc", 5]', r"\[1\]: expected an address"),
        (scamlists.DOMAIN_MAP, b'["x"]', "expected a JSON object"),
        (scamlists.DOMAIN_MAP, b'{"evil.example": "0xabc"}', "expected an array of addresses"),
        (scamlists.DOMAIN_MAP, b'{"not a domain": []}', "is not a domain name"),
        (scamlists.ADDRESSES, b"[", "not valid JSON"),
    ],
)
def test_malformed_lists_raise(fmt: str, data: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        IntelNormalizer().normalize(record(fmt, data))


def test_shipped_lists_cover_every_file() -> None:
    specs = shipped_lists(DATA)
    assert len(specs) == len(list((DATA / "ofac").glob("*.txt"))) + 2 + len(
        list((DATA / "stix").glob("*.json"))
    )
    assert {s.name for s in specs} >= {"ofac.ETH", "ofac.XBT", "scamsniffer.address", "scamsniffer.combined"}


def test_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(SourceError, match="unknown format 'csv'"):
        ListSpec("x", "/tmp/x", "csv", "f")


def _normalise_all(records: list[RawRecord]) -> list[IntelIndicator]:
    out: list[IntelIndicator] = []
    for rec in records:
        out += IntelNormalizer().normalize(rec)  # type: ignore[arg-type]
    return out


def test_changed_list_publishes_additions_and_revocations_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "address.json"
    shutil.copy(SCAM / "address.json", path)
    original = json.loads(path.read_text())
    source = IntelListSource([ListSpec("scam", str(path), scamlists.ADDRESSES, scamlists.FEED)])
    sink = MemorySink()
    state: dict[str, object] = {}
    assert source.poll_once(sink, state) == 1
    assert source.poll_once(sink, state) == 0  # unchanged: nothing published
    first = len(sink.records)

    added = "0x00000000000000000000000000000000000dead1"
    path.write_text(json.dumps([*original[2:], added]))
    assert source.poll_once(sink, state) == 1
    new = sink.records[first:]
    assert [r.kind for r in new] == ["address_list", "address_list_removed"]
    events = _normalise_all(new)
    revoked = {e.payload.value for e in events if e.payload.revoked}
    assert revoked == {a.lower() for a in original[:2]}
    live = {e.payload.value for e in events if not e.payload.revoked}
    assert added in live
    assert not revoked & live
    assert {e.payload.list_version for e in events} == {content_version(path.read_bytes())}
    # The cursor holds what a restarted source needs to compute the next diff.
    assert sink.cursors["intel"]["lists"]["scam"]["version"] == content_version(path.read_bytes())


def removal(doc: dict[str, object]) -> RawRecord:
    value = json.dumps({"list": "scam", "version": "v2", **doc}).encode()
    return RawRecord("intel", "address_list_removed", value, datetime(2026, 11, 29, tzinfo=UTC))


def test_a_removal_record_without_a_feed_is_refused_by_field() -> None:
    with pytest.raises(ContractError, match=r"length >= 1 - at `\$\.feed`"):
        IntelNormalizer().normalize(
            removal({"feed": "", "removed": [["domain", "evil.example", "phishing"]]})
        )


def test_a_removal_entry_the_contract_refuses_is_left_out_and_the_others_revoked() -> None:
    # A cursor from before the "." fix holds the key "domain:": its removal became a revocation
    # the contract refuses downstream; refusing the record whole would keep every other entry.
    # Only logged, the entries left out were lost: the record is dead-lettered naming them.
    entries = [
        ["domain", "", "phishing"],
        ["domain", "gone.example", "phishing"],
        ["domain", "x.example", "spam"],
    ]
    with pytest.raises(PartlyRefused) as refused:
        IntelNormalizer().normalize(removal({"feed": "scamsniffer", "removed": entries}))
    events = refused.value.taken
    assert [(e.payload.value, e.payload.revoked) for e in events] == [("gone.example", True)]  # type: ignore[attr-defined]
    reason = str(refused.value)
    assert reason.startswith("raw.intel removals of list 'scam' version 'v2': left out 2 of 3 entries")
    assert "('domain', '', 'phishing'), ('domain', 'x.example', 'spam'); the other 1 revoked" in reason


def test_a_domain_in_unicode_is_listed_in_the_ascii_form_clicks_carry() -> None:
    # Stored as given, a homograph ("unisw\u0430p.org") never met a click's punycode host.
    entries = scamlists.parse_domain_map(
        '{"Unisw\u0430p.org.": [], "b\u00fccher.example": []}'.encode(), where="t"
    )
    assert entries == [
        ("domain", "xn--uniswp-7nf.org", "phishing"),
        ("domain", "xn--bcher-kva.example", "phishing"),
    ]
    with pytest.raises(ContractError, match=r"t: 'evil example' is not a domain name"):
        scamlists.parse_domain_map(b'{"evil example": []}', where="t")


def test_a_list_nested_too_deeply_is_refused_by_name() -> None:
    # msgspec's RecursionError went through the list source's ContractError handler and
    # stopped it for good: no list after it read, OFAC no longer polled.
    with pytest.raises(ContractError, match=r"t: not a list: JSON nested too deeply"):
        scamlists.parse_addresses(b"[" * 100_000 + b"]" * 100_000, where="t")


def test_a_domain_of_dots_is_no_indicator() -> None:
    entries = scamlists.parse_domain_map(b'{".": [], "..": [], "Evil.Example.": []}', where="t")
    assert entries == [("domain", "evil.example", "phishing")]


def test_an_entry_dropped_by_one_list_stays_while_another_list_of_its_feed_has_it(tmp_path: Path) -> None:
    # OFAC's ETH and USDC lists share addresses and one feed, so one indicator key: the USDC list
    # dropping an address revoked it although the ETH list still sanctioned it.
    shared, eth_only = (
        "0x983a81ca6fb1e441266d2fbcb7d8e530ac2e05a2",
        "0x00000000000000000000000000000000000dead1",
    )
    eth, usdc = tmp_path / "eth.json", tmp_path / "usdc.json"
    eth.write_text(json.dumps([shared, eth_only]))
    usdc.write_text(json.dumps([shared]))
    source = IntelListSource(
        [
            ListSpec("eth", str(eth), scamlists.ADDRESSES, scamlists.FEED),
            ListSpec("usdc", str(usdc), scamlists.ADDRESSES, scamlists.FEED),
        ]
    )
    sink = MemorySink()
    state: dict[str, object] = {}
    assert source.poll_once(sink, state) == 2
    first = len(sink.records)
    usdc.write_text(json.dumps(["0x00000000000000000000000000000000000beef2"]))
    eth.write_text(json.dumps([shared]))
    assert source.poll_once(sink, state) == 2
    revoked = {e.payload.value for e in _normalise_all(sink.records[first:]) if e.payload.revoked}
    assert revoked == {eth_only}  # the shared address is still on the ETH list
    first = len(sink.records)
    eth.write_text(json.dumps([eth_only]))
    assert source.poll_once(sink, state) == 1
    revoked = {e.payload.value for e in _normalise_all(sink.records[first:]) if e.payload.revoked}
    assert revoked == {shared}  # on no list of the feed now


def test_a_broken_download_does_not_revoke_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "address.json"
    shutil.copy(SCAM / "address.json", path)
    source = IntelListSource([ListSpec("scam", str(path), scamlists.ADDRESSES, scamlists.FEED)])
    sink = MemorySink()
    state: dict[str, object] = {}
    source.poll_once(sink, state)
    path.write_text("<html>502 Bad Gateway</html>")
    assert source.poll_once(sink, state) == 0
    assert len(sink.records) == 1
    assert "not valid JSON" in source.errors["scam"]
    # Said, not only kept for a status nobody reads: new listings are not loaded meanwhile.
    assert "not published; the previous version stays in force" in caplog.text


def test_an_unreachable_list_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "a.json"
    good.write_text('["0x00000000000000000000000000000000000dead1"]')
    source = IntelListSource(
        [
            ListSpec("gone", str(tmp_path / "missing.json"), scamlists.ADDRESSES, scamlists.FEED),
            ListSpec("good", str(good), scamlists.ADDRESSES, scamlists.FEED),
        ]
    )
    sink = MemorySink()
    assert source.poll_once(sink, {}) == 1
    assert "cannot read" in source.errors["gone"]
    assert "retried at the next poll" in caplog.text


def test_stix_bundle_files_are_published_whole_and_normalised(tmp_path: Path) -> None:
    path = tmp_path / "c2.json"
    shutil.copy(DATA / "stix" / "indicator-for-c2-ip-address.json", path)
    source = IntelListSource([ListSpec("stix.c2", str(path), "stix_bundle", "stix:c2")])
    sink = MemorySink()
    assert source.poll_once(sink, {}) == 1
    (rec,) = sink.records
    assert (rec.kind, rec.value) == ("stix_bundle", path.read_bytes())
    (event,) = _normalise_all([rec])
    assert (event.payload.feed, event.payload.indicator_type) == ("stix:c2", "ipv4")


def test_from_settings_reads_the_shipped_layout() -> None:
    from vigil.config import Settings

    source = IntelListSource.from_settings(Settings(), data_dir=str(DATA), poll_interval="5")
    assert source.poll_interval == 5.0
    assert {s.format for s in source.lists} == {
        "ofac_lines",
        "json_address_array",
        "json_domain_map",
        "stix_bundle",
    }
    with pytest.raises(SourceError, match="'data_dir' is required"):
        IntelListSource.from_settings(Settings())
