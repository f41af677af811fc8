"""The indicator index keeps each feed's listing: one feed withdrawing a value leaves the others."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime

import msgspec

from vigil.detect.intel import IntelIndex, normalise
from vigil.events.addresses import other_spellings
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


def _stix(
    value: str, modified: str, *, stix_id: str = "indicator--1", revoked: bool = False
) -> IntelIndicator:
    return IntelIndicator(
        event_id=f"{stix_id}-{value}-{modified}",
        source="taxii",
        occurred_at=AT,
        ingested_at=AT,
        payload=IntelIndicatorPayload(
            indicator_type="eth_address", value=value, category="sanctioned",  # type: ignore[arg-type]
            feed="taxii", list_version=modified, revoked=revoked, stix_id=stix_id,
        ),
    )  # fmt: skip


A, B, C = ("0x" + c * 40 for c in "abc")
V1, V2 = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00.250000+00:00"


def test_a_newer_stix_version_withdraws_the_values_it_no_longer_lists() -> None:
    # A corrected pattern (A -> B): A stayed listed for ever, on the compacted topic too.
    index = IntelIndex()
    index.apply(_stix(A, V1))
    index.apply(_stix(C, V1))  # the same version's other value (a pattern with OR)
    assert A in index
    assert C in index
    index.apply(_stix(B, V2))
    assert A not in index
    assert C not in index
    assert B in index


def test_an_older_stix_version_applied_after_a_newer_one_changes_nothing() -> None:
    # Replaying the compacted topic, partitions interleave in any order.
    index = IntelIndex()
    index.apply(_stix(B, V2))
    index.apply(_stix(A, V1))
    assert A not in index
    assert B in index
    index.apply(_stix(B, "2026-03-01T00:00:00Z", revoked=True))
    index.apply(_stix(B, V2))  # an older listing again: stays withdrawn
    assert B not in index


def test_a_newer_version_leaves_what_another_indicator_or_feed_lists() -> None:
    index = IntelIndex()
    index.apply(_stix(A, V1))
    index.apply(_stix(A, V1, stix_id="indicator--2"))  # the feed's listing now from indicator 2
    index.apply(_ind("ofac", "sanctioned"))
    index.apply(_stix(B, V2))
    assert A in index  # indicator 2 still lists it
    assert index.lookup(ADDR) is not None  # and another feed's value is untouched


def test_two_stix_indicators_listing_one_value_are_withdrawn_one_at_a_time() -> None:
    # Two campaigns in one feed list the same address: they shared one compacted key and one
    # listing, so revoking the first unlisted the address the second still lists.
    first = _stix(A, V1, stix_id="indicator--1b4c1d9e-2f3a-4b5c-8d7e-9f0a1b2c3d4e")
    second = _stix(A, V1, stix_id="indicator--2b4c1d9e-2f3a-4b5c-8d7e-9f0a1b2c3d4e")
    assert first.key() != second.key()
    index = IntelIndex()
    index.apply(first)
    index.apply(second)
    index.apply(_stix(A, V2, stix_id=first.payload.stix_id or "", revoked=True))
    entry = index.lookup(A)
    assert entry is not None
    assert entry.stix_id == second.payload.stix_id
    # A tombstone of one indicator's key withdraws that listing; of the feed's, all of them.
    index.apply(first)  # older than its revocation: not applied again
    assert index.lookup(A).stix_id == second.payload.stix_id  # type: ignore[union-attr]
    assert not index.remove(A, "taxii", first.payload.stix_id)
    index.apply(_stix(A, V2, stix_id="indicator--3b4c1d9e-2f3a-4b5c-8d7e-9f0a1b2c3d4e"))
    assert index.remove(A, "taxii", second.payload.stix_id)
    assert A in index
    assert index.remove(A, "taxii")
    assert A not in index


def test_a_rule_finds_the_listing_in_its_own_categories_behind_a_more_severe_one() -> None:
    # A drainer also on a sanctions list: the sanctions listing (more severe) hid the drainer one
    # from a drainer rule, which then raised nothing on an approval to it.
    index = IntelIndex()
    index.apply(_ind("scamsniffer", "drainer"))
    index.apply(_ind("ofac", "sanctioned"))
    assert index.lookup(ADDR).category == "sanctioned"  # type: ignore[union-attr]
    drainer = index.lookup(ADDR, AT, {"drainer", "scam", "phishing"})
    assert (drainer.category, drainer.feed) == ("drainer", "scamsniffer")  # type: ignore[union-attr]
    assert index.lookup(ADDR, AT, {"mixer"}) is None
    index.apply(_ind("scamsniffer", "drainer", revoked=True))
    assert index.lookup(ADDR, AT, {"drainer"}) is None
    assert index.lookup(ADDR, AT, {"sanctioned"}).feed == "ofac"  # type: ignore[union-attr]


def _ip_indicator(value: str, feed: str = "stix:apt1", *, revoked: bool = False) -> IntelIndicator:
    return IntelIndicator(
        event_id=f"{feed}-{value}-{revoked}",
        source=feed,
        occurred_at=AT,
        ingested_at=AT,
        entities=Entities(),
        payload=IntelIndicatorPayload(
            indicator_type="ipv6" if ":" in value else "ipv4", value=value, category="c2",
            feed=feed, list_version="v1", revoked=revoked,
        ),
    )  # fmt: skip


def test_an_ip_inside_a_listed_network_matches_it_the_smallest_network_first() -> None:
    # APT1's bundle lists /15 ranges: indexed as strings, only the string '223.166.0.0/15' matched.
    index = IntelIndex()
    index.apply(_ip_indicator("223.166.0.0/15"))
    index.apply(_ip_indicator("223.167.4.0/24", feed="stix:other"))
    assert index.lookup("223.166.0.1").feed == "stix:apt1"  # type: ignore[union-attr]
    assert index.lookup("223.167.255.254").feed == "stix:apt1"  # type: ignore[union-attr]
    assert index.lookup("223.167.4.9").feed == "stix:other"  # type: ignore[union-attr]
    assert index.lookup("223.168.0.1") is None
    assert index.lookup("223.166.0.1", AT, {"sanctioned"}) is None
    index.apply(_ip_indicator("223.166.0.0/15", revoked=True))
    assert index.lookup("223.166.0.1") is None
    assert index.lookup("223.167.4.9") is not None
    index.apply(_ip_indicator("223.167.4.0/24", feed="stix:other", revoked=True))
    assert index.lookup("223.167.4.9") is None
    assert len(index) == 0


def test_ipv6_is_matched_whatever_its_spelling() -> None:
    index = IntelIndex()
    index.apply(_ip_indicator("2001:DB8:0:0::1"))
    index.apply(_ip_indicator("2001:db8:aa::/48"))
    assert index.lookup("2001:db8::1") is not None
    assert index.lookup("2001:0DB8::0001") is not None
    assert index.lookup("2001:db8:aa:1::5") is not None
    assert index.lookup("2001:db8:ab::5") is None


def test_a_network_written_with_host_bits_matches_the_addresses_in_it() -> None:
    index = IntelIndex()
    index.add(["10.1.2.3/8"], indicator_type="ipv4", category="c2", feed="list", list_version="v")
    assert index.lookup("10.200.0.1") is not None
    assert index.lookup("11.0.0.1") is None


def test_an_ipv4_address_written_as_ipv6_matches_its_listing_and_networks() -> None:
    # ::ffff:1.2.3.4 is 1.2.3.4 (a dual-stack server logs it so): it matched neither.
    index = IntelIndex()
    index.apply(_ip_indicator("1.2.3.4"))
    index.apply(_ip_indicator("223.166.0.0/15", feed="stix:other"))
    assert index.lookup("::ffff:1.2.3.4") is not None
    assert index.lookup("::FFFF:0102:0304") is not None
    assert index.lookup("::ffff:223.166.0.9").feed == "stix:other"  # type: ignore[union-attr]
    assert index.lookup("::1.2.3.4") is None  # IPv4-compatible (deprecated) is another address


def test_an_email_address_with_a_unicode_domain_matches_its_ascii_form() -> None:
    # A homograph sender listed in Unicode missed the punycode address a mail carries.
    index = IntelIndex()
    index.add(
        ["Support@unisw\u0430p.org"],
        indicator_type="email",
        category="phishing",
        feed="stix",
        list_version="v",
    )
    assert index.lookup("support@xn--uniswp-7nf.org") is not None
    assert index.lookup("SUPPORT@UNISW\u0410P.ORG") is not None
    assert index.lookup("support@uniswap.org") is None


def test_a_domain_is_the_same_with_the_roots_trailing_dot_and_in_unicode() -> None:
    # "evil.example.com." (fully qualified, as DNS logs write it) missed a listing of
    # "evil.example.com", which the list parsers keep without the dot.
    index = IntelIndex()
    index.add(
        ["EVIL.example.com."], indicator_type="domain", category="phishing", feed="list", list_version="v"
    )
    assert index.lookup("evil.example.com") is not None
    assert index.lookup("Evil.Example.Com.") is not None
    assert index.lookup("example.com") is None
    # A homograph listed in Unicode ("unisw\u0430p.org", its a Cyrillic) matched no click,
    # whose host the Mailchimp normaliser gives in punycode, and the other way round.
    index.add(
        ["unisw\u0430p.org"], indicator_type="domain", category="phishing", feed="stix", list_version="v"
    )
    assert index.lookup("xn--uniswp-7nf.org") is not None
    assert index.lookup("UNISW\u0410P.org.") is not None
    assert index.lookup("uniswap.org") is None
    index.add(
        ["xn--bcher-kva.example"], indicator_type="domain", category="phishing", feed="l", list_version="v"
    )
    assert index.lookup("b\u00fccher.example") is not None


def test_a_lookup_s_listings_are_never_changed_under_it() -> None:
    # Detection looks values up while the feed's thread applies changes, without a lock: the
    # listings a lookup is reading must not change in place.  They did, and a lookup of a value
    # listed by two feeds, while a third listed or withdrew it, raised "dictionary changed size
    # during iteration" in the detection thread, stopping the stage.
    index = IntelIndex()
    index.apply(_ind("ofac", "sanctioned"))
    index.apply(_ind("scamsniffer", "drainer"))
    held = index._entries[ADDR.lower()]  # what a lookup in progress reads
    before = dict(held)

    index.apply(_ind("third", "scam"))
    index.apply(_ind("third", "scam", revoked=True))
    index.apply(_ind("scamsniffer", "drainer", revoked=True))
    index.remove(ADDR, "ofac")

    assert held == before
    assert index.lookup(ADDR) is None
    assert len(index) == 0


def test_lookups_while_another_thread_lists_and_withdraws_the_value_do_not_fail() -> None:
    index = IntelIndex()
    index.apply(_ind("ofac", "sanctioned"))
    index.apply(_ind("scamsniffer", "drainer"))
    changes = [_ind(f"feed-{i}", "scam", revoked=revoked) for revoked in (False, True) for i in range(50)]
    done = threading.Event()
    failures: list[BaseException] = []

    def feed() -> None:
        while not done.is_set():
            for change in changes:
                index.apply(change)

    follower = threading.Thread(target=feed, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # switch threads often: the reviewer's failure came in ~800 lookups
    follower.start()
    try:
        for _ in range(50_000):
            entry = index.lookup(ADDR, AT)
            assert entry is not None
            assert entry.category == "sanctioned"
            list(index.items())
    except BaseException as exc:  # (whatever the lookup raised is the failure)
        failures.append(exc)
    finally:
        done.set()
        follower.join()
        sys.setswitchinterval(interval)
    assert failures == []


def test_an_indicator_matches_no_event_before_its_valid_from() -> None:
    # valid_from was carried but never read: an indicator announced ahead (or a backfill of
    # events from before it took effect) matched events it says nothing of.
    start, until = AT.replace(month=6), AT.replace(month=7)
    ofac = _ind("ofac", "sanctioned")
    index = IntelIndex()
    index.apply(
        msgspec.structs.replace(
            ofac, payload=msgspec.structs.replace(ofac.payload, valid_from=start, valid_until=until)
        )
    )
    assert index.lookup(ADDR, start.replace(month=1)) is None
    assert index.lookup(ADDR, start) is not None  # from valid_from on
    assert index.lookup(ADDR, until) is None
    assert index.lookup(ADDR) is not None  # no time given: as listed
    # Beside another listing: only the one in force at the event's time.
    index.apply(_ind("scamsniffer", "drainer"))
    assert index.lookup(ADDR, start.replace(month=1)).category == "drainer"  # type: ignore[union-attr]
    assert index.lookup(ADDR, start).category == "sanctioned"  # type: ignore[union-attr]


def test_a_domain_starting_with_0x_is_a_domain() -> None:
    # Any value starting with "0x" was taken for a hex one: '0xmons.art.' kept its trailing dot.
    assert normalise("0xmons.art.") == "0xmons.art"
    assert normalise("0XMons.Art") == "0xmons.art"
    assert normalise("0xABCDEF") == "0xabcdef"  # a hex value (a hash, a token id) as before
    index = IntelIndex()
    index.add(["0xmons.art"], indicator_type="domain", category="phishing", feed="f", list_version="v1")
    assert index.lookup("0xmons.art.") is not None
    assert index.lookup("0XMONS.ART") is not None


def _marker(modified: str) -> IntelIndicator:
    """What the normaliser sends for a version of indicator--1 whose pattern lists no value."""
    return IntelIndicator(
        event_id=f"marker-{modified}",
        source="taxii",
        occurred_at=AT,
        payload=IntelIndicatorPayload(
            indicator_type="stix_withdrawal", value="indicator--1", category="sanctioned",
            feed="taxii", list_version=modified, revoked=True, stix_id="indicator--1",
        ),
    )  # fmt: skip


def test_a_withdrawal_marker_withdraws_older_versions_in_either_order() -> None:
    for records in ([_stix(A, V1), _marker(V2)], [_marker(V2), _stix(A, V1)]):
        index = IntelIndex.from_events(records)
        assert A not in index
        assert "indicator--1" not in index
        assert len(index) == 0
    # A newer version listing a value again is listed whatever the order.
    for records in ([_marker(V1), _stix(B, V2)], [_stix(B, V2), _marker(V1)]):
        assert B in IntelIndex.from_events(records)
    # A marker and a value of one version: the value stays listed (ties as before).
    assert A in IntelIndex.from_events([_marker(V1), _stix(A, V1), _stix(C, V1)])
    # ... and a newer version withdraws them all.
    assert C not in IntelIndex.from_events([_marker(V1), _stix(A, V1), _stix(C, V1), _stix(B, V2)])


#: A Bitcoin Cash address in its two spellings (the CashAddr specification's example).
BCH_LEGACY = "1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggu"
BCH_CASHADDR = "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"


def _listing(feed: str, category: str) -> dict[str, str]:
    return {"indicator_type": "crypto_address", "category": category, "feed": feed, "list_version": "v1"}


def test_a_bitcoin_cash_address_listed_in_one_spelling_matches_in_the_other() -> None:
    index = IntelIndex()
    index.add([BCH_CASHADDR], **_listing("ofac", "sanctioned"))
    entry = index.lookup(BCH_LEGACY)
    assert entry is not None
    assert entry.category == "sanctioned"
    assert entry.listed_as == BCH_CASHADDR
    assert BCH_LEGACY in index
    direct = index.lookup(f"BITCOINCASH:{BCH_CASHADDR.upper()}")
    assert direct is not None
    assert direct.listed_as is None
    assert index.lookup("1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggv") is None  # (not an address: no spelling)
    assert len(index) == 1  # the other spelling is not an indicator of its own
    # Withdrawn, neither spelling matches any more.
    assert index.withdraw(BCH_CASHADDR, "ofac")
    assert index.lookup(BCH_LEGACY) is None
    assert BCH_LEGACY not in index


def test_a_legacy_listing_matches_its_cashaddr_spelling() -> None:
    index = IntelIndex()
    index.add([BCH_LEGACY], **_listing("ofac", "sanctioned"))
    entry = index.lookup(f"bitcoincash:{BCH_CASHADDR}")
    assert entry is not None
    assert entry.listed_as == BCH_LEGACY
    index.clear()
    assert index.lookup(BCH_CASHADDR) is None


def test_listed_in_both_spellings_the_more_severe_listing_wins_and_categories_still_count() -> None:
    index = IntelIndex()
    index.add([BCH_LEGACY], **_listing("scamsniffer", "scam"))
    index.add([BCH_CASHADDR], **_listing("ofac", "sanctioned"))
    entry = index.lookup(BCH_LEGACY)
    assert entry is not None
    assert (entry.category, entry.listed_as) == ("sanctioned", BCH_CASHADDR)
    # A scam rule asks for its own categories: the legacy spelling's own listing, as given.
    scam = index.lookup(BCH_LEGACY, categories=["scam"])
    assert scam is not None
    assert (scam.feed, scam.listed_as) == ("scamsniffer", None)
    scam = index.lookup(BCH_CASHADDR, categories=["scam"])
    assert scam is not None
    assert scam.listed_as == BCH_LEGACY
    # The CashAddr listing withdrawn: the legacy one stays, in both spellings.
    assert index.withdraw(BCH_CASHADDR, "ofac")
    left = index.lookup(BCH_CASHADDR)
    assert left is not None
    assert (left.category, left.listed_as) == ("scam", BCH_LEGACY)


def test_a_revoked_indicator_record_withdraws_its_other_spelling_too() -> None:
    def record(revoked: bool) -> IntelIndicator:
        return IntelIndicator(
            event_id=f"bch-{revoked}",
            source="ofac",
            occurred_at=AT,
            ingested_at=AT,
            entities=Entities(wallet=BCH_CASHADDR),
            payload=IntelIndicatorPayload(
                indicator_type="crypto_address", value=f"bitcoincash:{BCH_CASHADDR}",
                category="sanctioned", feed="ofac", list_version="v1", revoked=revoked,
            ),
        )  # fmt: skip

    index = IntelIndex()
    index.apply(record(False))
    assert index.lookup(BCH_LEGACY) is not None
    index.apply(record(True))
    assert index.lookup(BCH_LEGACY) is None


def test_a_listing_matches_the_token_aware_spelling_of_its_script() -> None:
    # CashTokens wallets show a z (or r) address for the q (or p) one's script.
    tokens = other_spellings(BCH_CASHADDR)[1]
    assert tokens.startswith("z")
    index = IntelIndex()
    index.add([BCH_LEGACY], **_listing("ofac", "sanctioned"))
    entry = index.lookup(f"bitcoincash:{tokens}")
    assert entry is not None
    assert entry.listed_as == BCH_LEGACY


def test_testnet_and_regtest_spellings_of_one_address_are_kept_apart() -> None:
    # Both spell the same legacy testnet address: one withdrawn left the other unmatched (review).
    testnet = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
    on_test, _, on_reg, _ = other_spellings(testnet)
    index = IntelIndex()
    index.add([on_test], **_listing("test-a", "sanctioned"))
    index.add([on_reg], **_listing("test-b", "scam"))
    assert index.withdraw(on_reg, "test-b")
    entry = index.lookup(testnet)
    assert entry is not None
    assert (entry.feed, entry.listed_as) == ("test-a", on_test)


def test_items_give_each_key_its_own_listing() -> None:
    index = IntelIndex()
    index.add([BCH_LEGACY], **_listing("scamsniffer", "scam"))
    index.add([BCH_CASHADDR], **_listing("ofac", "sanctioned"))
    assert {key: (e.feed, e.listed_as) for key, e in index.items()} == {
        BCH_LEGACY: ("scamsniffer", None),
        BCH_CASHADDR: ("ofac", None),
    }
