"""STIX 2.x bundles -> intel_indicator events, on the OASIS example bundles and hand-written cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from stix2patterns.v21.pattern import Pattern  # type: ignore[import-untyped]
from tests.unit.sources.test_normalize import ListContext

from vigil.config import shared_data_dir
from vigil.errors import ContractError
from vigil.events.codec import decode_event, encode
from vigil.events.types import STIX_WITHDRAWAL as MARKER
from vigil.events.types import IntelIndicator
from vigil.hub.raw import RawRecord
from vigil.sources.base import PartlyRefused
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.intel.stix import parse_objects, pattern_values
from vigil.sources.normalize import NormalizeOperator
from vigil.stream.app import clipped_reason
from vigil.stream.base import Record

STIX = shared_data_dir() / "intel" / "stix"
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def normalize(doc: dict[str, Any] | bytes, kind: str = "stix_bundle") -> list[IntelIndicator]:
    value = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    events = IntelNormalizer().normalize(RawRecord("intel", kind, value, NOW, meta={"feed": "oasis"}))
    for e in events:
        assert isinstance(e, IntelIndicator)
        assert decode_event(encode(e)) == e
    return events  # type: ignore[return-value]


def partly(doc: dict[str, Any] | bytes) -> tuple[list[IntelIndicator], str]:
    """The indicators taken from a bundle some of whose objects are left out, and the reason
    its record is dead-lettered with."""
    value = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(PartlyRefused) as refused:
        IntelNormalizer().normalize(RawRecord("intel", "stix_bundle", value, NOW, meta={"feed": "oasis"}))
    return refused.value.taken, str(refused.value)  # type: ignore[return-value]


def indicator(pattern: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-02-01T00:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z",
        **extra,
    }


def bundle(*objects: dict[str, Any]) -> dict[str, Any]:
    return {"type": "bundle", "id": "bundle--0a7c3a02-7b4b-4a1a-8d0e-1c0f5a9b3c11", "objects": list(objects)}


def expected_values(path: Path) -> set[tuple[str, str]]:
    """Independently of the connector: every `ipv4-addr`/`domain-name` value of every simple
    (OR-only) indicator pattern in the file, via the reference pattern parser; but a domain
    with a blank in it (poisonivy.json's 'domain autuo.xicp.net'), which names no host a
    click could go to, so is left out of its pattern's alternatives."""
    names = {"ipv4-addr": "ipv4", "domain-name": "domain"}
    out = set()
    for obj in json.loads(path.read_text())["objects"]:
        if obj["type"] != "indicator" or " AND " in obj["pattern"]:
            continue
        comparisons = Pattern(obj["pattern"]).inspect().comparisons
        if set(comparisons) <= set(names):
            for kind, items in comparisons.items():
                values = (v.strip("'").lower() for _, _, v in items)
                out |= {(names[kind], v) for v in values if not (kind == "domain-name" and " " in v)}
    return out


@pytest.mark.parametrize("name", ["poisonivy.json", "apt1.json"])
def test_oasis_bundles_yield_every_ip_and_domain(name: str) -> None:
    events = normalize((STIX / name).read_bytes())
    # (An indicator with no such value, AND patterns among them, is sent as a withdrawal marker.)
    got = {(e.payload.indicator_type, e.payload.value) for e in events if e.payload.indicator_type != MARKER}
    assert got == expected_values(STIX / name)
    assert all(e.payload.stix_id and e.payload.stix_id.startswith("indicator--") for e in events)
    assert all(e.payload.list_version for e in events)


def test_c2_indicator_is_categorised_and_keeps_validity() -> None:
    (event,) = normalize((STIX / "indicator-for-c2-ip-address.json").read_bytes())
    assert (event.payload.indicator_type, event.payload.value) == ("ipv4", "10.0.0.0")
    assert event.payload.category == "c2"
    assert event.payload.valid_from is not None
    assert event.key() == f"ipv4:10.0.0.0@{event.payload.feed}#{event.payload.stix_id}"


def test_file_hash_and_email_subject_patterns_are_skipped_not_errors() -> None:
    # Nothing to match; a later version would withdraw what an older one listed, and these are
    # first versions (created == modified): nothing is sent.
    assert normalize((STIX / "malicious-email-indicator-with-attachment.json").read_bytes()) == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[ipv6-addr:value = '2001:db8::1']", [("ipv6", "2001:db8::1")]),
        ("[url:value = 'http://x4z9arb.cn/4712']", [("url", "http://x4z9arb.cn/4712")]),
        ("[email-addr:value = 'Support@Evil.example']", [("email", "support@evil.example")]),
        (
            "[x-crypto-address:value = '0x098B716B8Aaf21512996dC57EB0615e2383E2f96']",
            [("eth_address", "0x098b716b8aaf21512996dc57eb0615e2383e2f96")],
        ),
        (
            "[cryptocurrency-wallet:address = '1Ez69SnzzmePmZX3WpEzMKTrcBF2gpNQ55']",
            [("btc_address", "1Ez69SnzzmePmZX3WpEzMKTrcBF2gpNQ55")],
        ),
        (
            "[x-crypto-address:value = 'TX3dXxHcDoEiaRMCRXDJLvGL6vSPDMnLkd']",
            [("crypto_address", "TX3dXxHcDoEiaRMCRXDJLvGL6vSPDMnLkd")],
        ),
        ("[domain-name:value = 'o\\'reilly.example']", [("domain", "o'reilly.example")]),
        ("[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']", None),
        ("[ipv4-addr:value = '192.0.2.1'] FOLLOWEDBY [url:value = 'http://a.example/']", None),
        ("[ipv4-addr:value != '192.0.2.1']", None),
        ("[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']", None),
    ],
)
def test_pattern_values(pattern: str, expected: list[tuple[str, str]] | None) -> None:
    assert pattern_values(pattern, where="t") == expected


def test_revoked_and_valid_until_are_carried() -> None:
    (event,) = normalize(
        bundle(
            indicator(
                "[domain-name:value = 'drainer.example']",
                revoked=True,
                valid_until="2026-06-01T00:00:00Z",
                indicator_types=["malicious-activity"],
                name="wallet drainer kit",
                confidence=80,
            )
        )
    )
    assert event.payload.revoked is True
    assert event.payload.valid_until == datetime(2026, 6, 1, tzinfo=UTC)
    assert event.payload.category == "drainer"
    assert event.payload.confidence == 80
    assert event.payload.list_version == "2026-02-01T00:00:00+00:00"


def test_versions_get_distinct_ids_and_same_version_same_id() -> None:
    a = normalize(bundle(indicator("[ipv4-addr:value = '192.0.2.7']")))[0]
    b = normalize(bundle(indicator("[ipv4-addr:value = '192.0.2.7']", modified="2026-03-01T00:00:00Z")))[0]
    again = normalize(bundle(indicator("[ipv4-addr:value = '192.0.2.7']")))[0]
    assert a.event_id == again.event_id != b.event_id
    assert a.key() == b.key()


def test_two_indicators_listing_one_value_get_distinct_ids() -> None:
    # Two campaigns' indicators naming one IP are two listings (two record keys): with one id,
    # deduplicating by id kept one of them (poisonivy.json lists 113.10.246.30 four times).
    first = indicator("[ipv4-addr:value = '192.0.2.7']")
    second = dict(first, id="indicator--1d5a8c0e-5b4f-4b8e-9f7a-2c3d4e5f6a7b")
    a, b = normalize(bundle(first, second))
    assert a.key() != b.key()
    assert a.event_id != b.event_id
    events = normalize((STIX / "poisonivy.json").read_bytes())
    assert len({e.event_id for e in events}) == len({e.key() for e in events}) == len(events)


def test_taxii_envelope_is_normalised_like_a_bundle() -> None:
    events = normalize(
        {"more": False, "objects": [indicator("[url:value = 'http://a.example/x']")]}, "taxii_objects"
    )
    assert [(e.payload.indicator_type, e.payload.feed) for e in events] == [("url", "oasis")]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"type": "campaign"}).encode(), "expected a STIX bundle"),
        (
            json.dumps(bundle(indicator("[ipv4-addr:value = "))).encode(),
            "not a valid STIX indicator|does not parse",
        ),
        (
            json.dumps({"type": "bundle", "id": "bundle--x", "objects": {}}).encode(),
            "'objects' must be an array",
        ),
        (
            json.dumps(bundle({**indicator("[ipv4-addr:value = '1.2.3.4']"), "valid_from": "soon"})).encode(),
            "valid",
        ),
        (
            json.dumps(
                bundle({**indicator("[ipv4-addr:value = '1.2.3.4']"), "spec_version": ["2.1"]})
            ).encode(),
            "not a valid STIX indicator",
        ),
        (json.dumps(bundle(indicator(""))).encode(), "pattern must be a non-empty string"),
        (json.dumps(bundle({**indicator("x"), "pattern": 7})).encode(), "pattern must be a non-empty string"),
    ],
)
def test_bad_bundles_raise_contract_error(doc: bytes, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        normalize(doc)


def test_one_bad_indicator_leaves_out_only_itself() -> None:
    # One bad indicator dead-lettered its whole bundle (or TAXII page, whose cursor had moved
    # past it): the good ones were lost with it.  Then it was only logged, and lost once the
    # raw topic's retention passed: the record is dead-lettered naming it, the others taken.
    doc = json.loads((STIX / "poisonivy.json").read_bytes())
    good = len(normalize((STIX / "poisonivy.json").read_bytes()))
    bad = indicator("[domain-name:value = 'evil.example' OR ]")
    doc["objects"].append(bad)
    events, reason = partly(json.dumps(doc).encode())
    assert len(events) == good > 0
    assert reason.startswith(f"left out 1 of {len(doc['objects'])} objects: intel stix bundle: {bad['id']}: ")
    assert reason.endswith(f"; the other {good} indicators taken")


@pytest.mark.parametrize(
    ("extra", "spec"),
    [
        ({"confidence": 150}, "2.1"),
        ({"confidence": -5}, "2.0"),
        ({"confidence": "sure"}, "2.0"),
        ({"confidence": 10**400}, "2.0"),  # float() of it raised OverflowError: the whole bundle
        ({"confidence": 40.5}, "2.0"),
    ],
)
def test_a_confidence_out_of_range_leaves_out_its_indicator_only(extra: dict[str, Any], spec: str) -> None:
    # stix2 leaves a 2.0 custom confidence (and a 2.1 one past 100) as given: "sure" raised a
    # ValueError that dead-lettered the whole bundle, 150 made an event the contract refuses.
    good = indicator("[ipv4-addr:value = '192.0.2.7']", confidence="40" if spec == "2.0" else 40)
    bad = {
        **indicator("[ipv4-addr:value = '192.0.2.8']"),
        "id": "indicator--0c9b2f2e-0000-4000-8000-000000000001",
    }
    if spec == "2.0":
        for obj in (good, bad):
            obj.pop("spec_version")
            obj.pop("pattern_type")
            obj["labels"] = ["malicious-activity"]
    events, reason = partly(bundle(good, {**bad, **extra}))
    assert [(e.payload.value, e.payload.confidence) for e in events] == [("192.0.2.7", 40)]
    assert f"{bad['id']}: confidence must be an integer from 0 to 100" in reason


def test_a_confidence_in_words_of_the_stix_scale_is_its_number() -> None:
    # STIX 2.1 Appendix A: None / Low / Med / High are 0 / 15 / 50 / 85.
    bad = indicator("[ipv4-addr:value = '192.0.2.9']", confidence=0)
    bad.pop("spec_version")
    bad.pop("pattern_type")
    bad["labels"] = ["malicious-activity"]
    words = ("High", "Med", "low", "none", " 40 ")
    got = [normalize(bundle({**bad, "confidence": word}))[0].payload.confidence for word in words]
    assert got == [85, 50, 15, 0, 40]


@pytest.mark.parametrize("value", [40.5, True])
def test_a_stix_2_1_confidence_is_read_as_given_not_as_stix2_cut_it(value: object) -> None:
    # stix2 turns a 2.1 confidence of 40.5 into 40 and true into 1 before Vigil reads it.
    good = indicator("[ipv4-addr:value = '192.0.2.7']")
    bad = {
        **indicator("[ipv4-addr:value = '192.0.2.8']", confidence=value),
        "id": "indicator--0c9b2f2e-0000-4000-8000-000000000003",
    }
    events, reason = partly(bundle(good, bad))
    assert [e.payload.value for e in events] == ["192.0.2.7"]
    assert "confidence must be an integer" in reason


def test_an_indicator_of_another_pattern_language_is_skipped_whatever_its_pattern() -> None:
    # Skipped (not ours to read), not rejected: an empty pattern is only refused in STIX's language.
    sigma = {**indicator("x"), "pattern_type": "sigma", "pattern": ""}
    result = parse_objects([sigma], where="t")
    assert (result.skipped, result.rejected, result.indicators) == ([sigma["id"]], [], [])


def test_a_rejected_indicators_id_is_dead_lettered_inert() -> None:
    forged = {**indicator("[ipv4-addr:value = "), "id": "indicator--x\nCRITICAL all clear"}
    good = {
        **indicator("[ipv4-addr:value = '192.0.2.7']"),
        "id": "indicator--0c9b2f2e-0000-4000-8000-000000000005",
    }
    # Through the normalise stage: the good one emitted, the record dead-lettered naming the
    # other, its reason made inert as the runtime writes every letter's.
    value = json.dumps(bundle(forged, good)).encode()
    raw = RawRecord("intel", "stix_bundle", value, NOW, meta={"feed": "oasis"})
    ctx = ListContext()
    rec = Record(event=raw, topic="raw.intel", partition=0, offset=7, key=None, timestamp_ms=0, value=value)
    NormalizeOperator({"intel": IntelNormalizer()}).process([rec], ctx)  # type: ignore[arg-type]
    assert [(t, e.payload.value) for t, e in ctx.emitted] == [("intel.indicators", "192.0.2.7")]  # type: ignore[attr-defined]
    ((letter, reason),) = ctx.dead
    assert (letter.offset, bytes(letter.event)) == (7, value)
    assert reason.startswith(
        "intel/stix_bundle: left out 1 of 2 objects: intel stix bundle: indicator--x\\nCRITICAL"
    )
    assert "indicator--x\\nCRITICAL" in clipped_reason(reason)
    assert "\n" not in clipped_reason(reason)


def test_a_domain_in_unicode_is_listed_in_the_ascii_form_clicks_carry() -> None:
    # STIX allows a domain-name's value in Unicode; the click's host comes in punycode.
    events = normalize(bundle(indicator("[domain-name:value = 'Unisw\u0430p.org']")))
    assert [e.payload.value for e in events] == ["xn--uniswp-7nf.org"]
    assert events[0].entities.domain == "xn--uniswp-7nf.org"


def test_an_email_address_in_unicode_is_listed_with_its_domain_in_ascii() -> None:
    events = normalize(bundle(indicator("[email-addr:value = 'Support@Unisw\u0430p.org.']")))
    assert [e.payload.value for e in events] == ["support@xn--uniswp-7nf.org"]


def test_a_value_that_normalises_to_nothing_is_skipped() -> None:
    # '.' is a domain name of nothing once its trailing dot goes: no event the contract refuses.
    events = normalize(
        bundle(
            indicator("[domain-name:value = '.']"),
            {
                **indicator("[domain-name:value = 'Evil.Example.']"),
                "id": "indicator--0c9b2f2e-0000-4000-8000-000000000002",
            },
        )
    )
    assert [e.payload.value for e in events if e.payload.indicator_type != MARKER] == ["evil.example"]


def test_taxii_from_settings_takes_urls_and_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from vigil.config import Settings
    from vigil.errors import SourceError
    from vigil.sources.intel.taxii import TaxiiSource

    env_value = f"from-env-{id(monkeypatch)}"  # a test value, not a secret
    monkeypatch.setenv("VIGIL_TAXII_PASSWORD", env_value)
    source = TaxiiSource.from_settings(
        Settings(), url="http://127.0.0.1:1/r/collections/a, http://127.0.0.1:1/r/collections/b/", user="u"
    )
    assert source.collection_urls == [
        "http://127.0.0.1:1/r/collections/a/",
        "http://127.0.0.1:1/r/collections/b/",
    ]
    assert source.feed_for(source.collection_urls[0]) == "taxii:a"
    assert source._password == env_value
    with pytest.raises(SourceError, match="'url'"):
        TaxiiSource.from_settings(Settings())


def test_taxii_credentials_come_from_the_settings_it_is_given() -> None:
    # The password was read from os.environ whatever the Settings said, and the user could only
    # be an option: neither could be in vigil.toml.
    from vigil.config import Settings
    from vigil.sources.intel.taxii import TaxiiSource

    configured = Settings(taxii_user="analyst", taxii_password="from-settings")  # noqa: S106 - a test value
    source = TaxiiSource.from_settings(configured, url="http://127.0.0.1:1/r/collections/a/")
    assert (source.user, source._password) == ("analyst", "from-settings")
    # The option user, given, goes first.
    source = TaxiiSource.from_settings(configured, url="http://127.0.0.1:1/r/collections/a/", user="u")
    assert (source.user, source._password) == ("u", "from-settings")


def test_taxii_response_headers_are_read_whatever_their_case() -> None:
    # Go servers and proxies send X-Taxii-Date-Added-Last, Envoy lower-case: looked up as
    # spelled in the spec, it was missing, and every poll of that collection failed.
    import requests
    from requests.structures import CaseInsensitiveDict

    from vigil.sources.intel.taxii import TaxiiSource, _LastResponse

    last = _LastResponse()
    collection = TaxiiSource("http://127.0.0.1:9/api/collections/c/")._collection(
        "http://127.0.0.1:9/api/collections/c/", last
    )
    for name in ("X-Taxii-Date-Added-Last", "x-taxii-date-added-last", "X-TAXII-Date-Added-Last"):
        resp = requests.Response()
        resp.headers = CaseInsensitiveDict({name: "2026-01-01T00:00:00Z"})
        resp._content = b"{}"
        collection._conn.session.hooks["response"][-1](resp)
        assert last.headers.get("x-taxii-date-added-last") == "2026-01-01T00:00:00Z"
