"""The indicator index detection matches against: O(1) lookups, hot-reloaded.

Indicators arrive as :class:`~vigil.events.types.IntelIndicator` records (the compacted
``intel.indicators`` topic, read whole by every detection process as a global table; or,
in memory, inline in the event stream).  Each record replaces the previous version of
that indicator *from its feed*, a revoked one removes that feed's listing (for a STIX feed,
that indicator's: two indicators may list one value; a STIX withdrawal marker withdraws what
that indicator's older versions listed, and is never matched itself): the index is always the
latest lists, without a restart.  A value several feeds list stays indexed
until every one of them has withdrawn it.  Every match reports the ``feed@list_version``
it was made against, which the alert records as ``intel_version``.

Values are normalised the way events carry them: EVM and bech32 addresses and domains
lower-case, other values (base58 addresses, IPs) as given.  Millions of indicators are one
dict each (a few hundred bytes per entry).  A Bitcoin Cash address matches in any of its
spellings, CashAddr (with token support or without) or legacy, whichever the list gives
(:func:`~vigil.events.addresses.other_spellings`): the OFAC list gives most as CashAddr, a
customer's wallet may show the legacy one.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vigil.events.addresses import canonical_address, other_spellings
from vigil.events.base import Entities
from vigil.events.domains import domain_to_ascii, email_to_ascii
from vigil.events.ids import stable_id
from vigil.events.types import STIX_WITHDRAWAL, IntelIndicator, IntelIndicatorPayload


@dataclass(frozen=True, slots=True)
class IndicatorEntry:
    indicator_type: str
    category: str
    feed: str
    list_version: str
    description: str | None = None
    #: The indicator's end (STIX ``valid_until``): no event after it matches (see lookup).
    valid_until: datetime | None = None
    #: The STIX indicator that listed it (a newer version listing other values withdraws it).
    stix_id: str | None = None
    #: The indicator's start (STIX ``valid_from``): no event before it matches (see lookup).
    valid_from: datetime | None = None
    #: Set on a match made through another spelling of the value looked up: the spelling the
    #: list gives (a Bitcoin Cash address listed as CashAddr, looked up in its legacy spelling,
    #: or the other way round; see lookup).
    listed_as: str | None = None

    @property
    def version(self) -> str:
        return f"{self.feed}@{self.list_version}"


#: Values shaped like an IPv6 address or network, and like an IPv4 network: only these are
#: parsed as IPs (a lookup of every other value pays one regular expression, not an exception).
_IPV6_SHAPED = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:/[0-9]{1,3})?")
_IPV4_SHAPED = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?")
#: ``0x`` and hex digits (an address, a hash, a token id); ``0xmons.art`` is a domain.
_HEX = re.compile(r"0[xX][0-9A-Fa-f]*")


def normalise(value: str) -> str:
    """The spelling values are indexed and looked up in: addresses as
    :func:`~vigil.events.addresses.canonical_address` spells them (EVM and bech32 lower-case,
    CashAddr lower-case without its prefix), other values of ``0x`` and hex digits and domains
    lower-case (case-insensitive; a domain without the root's trailing dot, ``evil.example.`` is
    ``evil.example``, as the list parsers keep it, ``0xmons.art.`` too: a domain, not a hex
    value; one in Unicode in its ASCII form, ``xn--...``, an e-mail address's too), IPs and
    networks as :mod:`ipaddress` spells them (IPv6 compressed and lower-case: ``2001:DB8:0::1``
    is ``2001:db8::1``; an IPv4-mapped IPv6 address, ``::ffff:1.2.3.4``, is the IPv4 address; a
    network by its first address, ``10.1.2.3/8`` is ``10.0.0.0/8``), the rest as given."""
    value = canonical_address(value)
    if (":" in value and _IPV6_SHAPED.fullmatch(value)) or ("/" in value and _IPV4_SHAPED.fullmatch(value)):
        return _canonical_ip(value)
    if value.startswith(("0x", "0X")) and _HEX.fullmatch(value):
        return value.lower()
    if "@" in value and not value.isascii():
        # An e-mail address with a domain in Unicode: its domain in the ASCII form, as listed
        # (one no browser could open: lower-cased, as before).
        return email_to_ascii(value) or value.lower()
    if "." in value and not value.replace(".", "").isdigit():
        if not value.isascii():
            # A domain in Unicode is keyed in the ASCII form clicks carry (xn--...), as the
            # intel normalisers store it: a homograph listed one way matched no click the other.
            ascii_form = domain_to_ascii(value)
            if ascii_form is not None:
                return ascii_form
        return (value[:-1] if value.endswith(".") and len(value) > 1 else value).lower()
    return value


@functools.lru_cache(maxsize=1 << 16)
def _canonical_ip(value: str) -> str:
    """``value`` as :mod:`ipaddress` spells it, if it is an IP or a network (parsing one costs
    microseconds; events repeat their IPs, so the answers are kept)."""
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(address if mapped is None else mapped)


@functools.lru_cache(maxsize=1 << 16)
def _ip_number(key: str) -> tuple[int, int, int] | None:
    """(IP version, the address as an integer, its bits) of an IP ``key``; None otherwise."""
    try:
        address = ipaddress.ip_address(key)
    except ValueError:
        return None
    return address.version, int(address), address.max_prefixlen


def _network(key: str) -> tuple[int, int, int] | None:
    """(IP version, prefix length, first address as an integer) of an indexed network, e.g.
    ``223.166.0.0/15``; None for anything else."""
    if "/" not in key or not (_IPV4_SHAPED.fullmatch(key) or _IPV6_SHAPED.fullmatch(key)):
        return None
    try:
        network = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return None
    return network.version, network.prefixlen, int(network.network_address)


class IntelIndex:
    """Indicators by value, for lookups in detection.

    Detection threads look values up while the feed's thread (:class:`vigil.detect.app.IntelFeed`)
    applies the list's changes, with no lock: a value's listings are never changed in place, but
    replaced by a changed copy (one dict store, atomic), so a lookup reads either the old listings
    or the new ones.  (Changed in place, a lookup of a value listed by two feeds, while a third
    listed or withdrew it, raised "dictionary changed size during iteration" and stopped the
    detection stage.)"""

    def __init__(self) -> None:
        # value -> listing (see _listing) -> entry: one feed, or one STIX indicator, withdrawing
        # a value leaves the others' listings.  The inner dicts are replaced, never changed.
        self._entries: dict[str, dict[str, IndicatorEntry]] = {}
        self._feeds: dict[str, str] = {}
        #: Per (feed, STIX id): the newest version applied (its ``modified``) and the values it
        #: lists, None for none (see _stix_version: a feed may have a million file-hash
        #: indicators, each a withdrawal marker, and an empty set is 200 bytes).
        self._stix: dict[tuple[str, str], tuple[datetime, set[str] | None]] = {}
        #: (IP version, prefix length, first address) -> the network's key, for the networks
        #: listed (a /15 from a STIX bundle holds 131,072 addresses): an IP is looked up at each
        #: prefix length listed, most specific first (``_sizes``), by masking its integer.
        self._networks: dict[tuple[int, int, int], str] = {}
        #: How many networks of each (version, prefix length) are listed, and those sizes in order.
        self._size_counts: dict[tuple[int, int], int] = {}
        self._sizes: list[tuple[int, int]] = []
        #: Another spelling of a listed Bitcoin Cash address -> the listed keys it spells (see
        #: lookup; a testnet legacy address is two networks' CashAddr ones).  Tuples, replaced
        #: and never changed, as the listings are (see the class).
        self._spellings: dict[str, tuple[str, ...]] = {}
        self.updates = 0

    def clear(self) -> None:
        """Forget every indicator (before reading the whole list again)."""
        self._entries.clear()
        self._feeds.clear()
        self._stix.clear()
        self._networks.clear()
        self._size_counts.clear()
        self._sizes = []
        self._spellings.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, value: str) -> bool:
        key = normalise(value)
        return key in self._entries or key in self._spellings

    @property
    def version(self) -> str:
        """Every feed's current list version, e.g. ``ofac@2024-09-27,scamsniffer@2024-10-01``."""
        return ",".join(f"{feed}@{ver}" for feed, ver in sorted(self._feeds.items()))

    def _put(self, key: str, entry: IndicatorEntry) -> None:
        listings = self._entries.get(key)
        if listings is None:
            self._entries[key] = {_listing(entry.feed, entry.stix_id): entry}
            network = _network(key)
            if network is not None:
                self._networks[network] = key
                self._count_size(network[:2], 1)
            for other in other_spellings(key):
                self._spellings[other] = (*self._spellings.get(other, ()), key)
            return
        # A copy (see the class).
        self._entries[key] = {**listings, _listing(entry.feed, entry.stix_id): entry}

    def _count_size(self, size: tuple[int, int], change: int) -> None:
        # The order is rebuilt only when a size comes or goes (a list of 10,000 networks loads
        # in one pass, not in 10,000 passes over what is loaded).
        count = self._size_counts.get(size, 0) + change
        if count > 0:
            self._size_counts[size] = count
        else:
            self._size_counts.pop(size, None)
        if (count > 0) != (count - change > 0):
            self._sizes = sorted(self._size_counts, key=lambda s: -s[1])

    def _drop(self, key: str, listing: str | None) -> bool:
        """Withdraw one listing of ``key`` (every listing: None); True if it was there."""
        listings = self._entries.get(key)
        if listings is None:
            return False
        if listing is not None and listing not in listings:
            return False
        left = {} if listing is None else {name: e for name, e in listings.items() if name != listing}
        if left:
            self._entries[key] = left  # (a copy: see the class)
            return True
        del self._entries[key]
        network = _network(key)
        if network is not None and self._networks.pop(network, None) is not None:
            self._count_size(network[:2], -1)
        for other in other_spellings(key) if self._spellings else ():
            keys = self._spellings.get(other, ())
            if key in keys:
                rest = tuple(k for k in keys if k != key)
                if rest:
                    self._spellings[other] = rest
                else:
                    del self._spellings[other]
        return True

    def apply(self, indicator: IntelIndicator, now: datetime | None = None) -> None:
        """Take one indicator record: add or replace its feed's listing, or remove that listing
        when revoked or expired.  A STIX withdrawal marker only withdraws its indicator's older
        versions (see _stix_version): it lists nothing, whatever it says."""
        p = indicator.payload
        marker = p.indicator_type == STIX_WITHDRAWAL
        key = normalise(p.value)
        self.updates += 1
        if p.stix_id and not self._stix_version(p.feed, p.stix_id, p.list_version, None if marker else key):
            return  # an older version of an indicator already applied
        self._feeds[p.feed] = p.list_version
        if marker:
            return
        expired = now is not None and p.valid_until is not None and p.valid_until <= now
        if p.revoked or expired:
            self._drop(key, _listing(p.feed, p.stix_id))
            return
        self._put(
            key,
            IndicatorEntry(
                p.indicator_type,
                p.category,
                p.feed,
                p.list_version,
                p.description,
                p.valid_until,
                p.stix_id,
                p.valid_from,
            ),
        )

    def _stix_version(self, feed: str, stix_id: str, version: str, key: str | None) -> bool:
        """Whether a STIX indicator's record at ``version`` (its ``modified``) is current.

        A newer version replaces the old one whole: values the old one listed and the new one
        does not (a corrected pattern) are withdrawn; before, they stayed listed for ever, on the
        compacted topic too (they are keyed by value).  An older version arriving after a newer
        one (replaying the topic: its partitions interleave in any order) is not applied.
        ``key`` None: a withdrawal marker, a version that lists no value (its pattern became a
        file hash ...): the older versions' values go, and nothing takes their place.  Read
        before them (a restart on the compacted topic, where their records outlive it under
        keys of their own), it is held as the newer version, and they are not applied."""
        try:
            modified = datetime.fromisoformat(version)
        except ValueError:
            return True  # no version to order by: each record stands alone, as before
        if modified.tzinfo is None:  # (the STIX normaliser writes UTC; others may not say)
            modified = modified.replace(tzinfo=UTC)
        ident = (feed, stix_id)
        held = self._stix.get(ident)
        if held is not None and modified < held[0]:
            return False
        if held is None or modified > held[0]:
            if held is not None and held[1] is not None:
                listing = _listing(feed, stix_id)
                for old in held[1]:
                    if old != key:
                        self._drop(old, listing)
            self._stix[ident] = (modified, None if key is None else {key})
        elif key is not None:
            # The same version's other values (a pattern with OR).
            if held[1] is None:
                self._stix[ident] = (modified, {key})
            else:
                held[1].add(key)
        return True

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
        entry = IndicatorEntry(indicator_type, category, feed, list_version)
        for value in values:
            self._put(normalise(value), entry)
            n += 1
        self._feeds[feed] = list_version
        self.updates += n
        return n

    def remove(self, value: str, feed: str | None = None, stix_id: str | None = None) -> bool:
        """Withdraw a value: every listing of it, or one feed's (with ``stix_id``, only that STIX
        indicator's listing from the feed); True if it was there."""
        self.updates += 1
        key = normalise(value)
        if feed is None:
            return self._drop(key, None)
        if stix_id is not None:
            return self._drop(key, _listing(feed, stix_id))
        mine = [name for name, e in self._entries.get(key, {}).items() if e.feed == feed]
        for name in mine:
            self._drop(key, name)
        return bool(mine)

    def withdraw(self, value: str, feed: str, stix_id: str | None = None) -> bool:
        """Withdraw one listing of a value: its feed's own (a list's), or with ``stix_id`` that
        STIX indicator's; the feed's other listings of it stay.  True if it was there."""
        self.updates += 1
        return self._drop(normalise(value), _listing(feed, stix_id))

    def lookup(
        self, value: str | None, at: datetime | None = None, categories: Collection[str] | None = None
    ) -> IndicatorEntry | None:
        """The value's listing; with several feeds, the most severe category wins
        (sanctioned before drainer/scam before the rest), then the feed name and the STIX id, for
        determinism.

        ``at``: the event's time; a listing whose ``valid_until`` is not after it does not match
        (an expired indicator went on raising alerts for ever; judged in event time, a replay
        matches what matched then), nor one whose ``valid_from`` is after it (an indicator
        announced ahead, or a backfill of events from before it took effect).  ``categories``:
        only listings in these count (a rule's own: an address both sanctioned and a drainer is
        a drainer to a drainer rule, where the sanctions listing, the more severe, hid it).

        A Bitcoin Cash address listed in one spelling (CashAddr or legacy) matches in the others,
        the entry's ``listed_as`` naming the list's; listed in several, the more severe listing
        wins as among feeds."""
        if not value:
            return None
        key = normalise(value)
        listings = self._entries.get(key)
        entry = self._pick(listings, at, categories) if listings else None
        for listed in self._spellings.get(key, ()) if self._spellings else ():
            others = self._entries.get(listed)
            other = self._pick(others, at, categories) if others else None
            if other is not None and (entry is None or _rank(other) < _rank(entry)):
                entry = dataclasses.replace(other, listed_as=listed)
        if entry is None and self._networks:
            entry = self._in_network(key, at, categories)
        return entry

    def _pick(
        self, listings: dict[str, IndicatorEntry], at: datetime | None, categories: Collection[str] | None
    ) -> IndicatorEntry | None:
        if len(listings) == 1:
            entry = next(iter(listings.values()))
            if at is not None and not _in_force(entry, at):
                return None
            if categories is not None and entry.category not in categories:
                return None
            return entry
        valid = [
            e
            for e in listings.values()
            if (at is None or _in_force(e, at)) and (categories is None or e.category in categories)
        ]
        if not valid:
            return None
        return min(valid, key=_rank)

    def _in_network(
        self, key: str, at: datetime | None, categories: Collection[str] | None
    ) -> IndicatorEntry | None:
        """The listing of the smallest listed network holding the IP ``key`` (None: not an IP)."""
        if "/" in key or not (key[:1].isdigit() or ":" in key) or key.startswith(("0x", "0X")):
            return None
        if not (_IPV4_SHAPED.fullmatch(key) or _IPV6_SHAPED.fullmatch(key)):
            return None
        ip = _ip_number(key)
        if ip is None:
            return None
        kind, number, bits = ip
        for version, prefix in self._sizes:
            if version != kind:
                continue
            first = number & (((1 << prefix) - 1) << (bits - prefix))
            network = self._networks.get((version, prefix, first))
            listings = self._entries.get(network) if network is not None else None
            entry = self._pick(listings, at, categories) if listings else None
            if entry is not None:
                return entry
        return None

    def items(self) -> Iterator[tuple[str, IndicatorEntry]]:
        # Over a copy: values come and go meanwhile (see the class).
        # Each key's own listings (a lookup would give another spelling's, more severe, listing).
        for key, listings in list(self._entries.items()):
            entry = self._pick(listings, None, None) if listings else None
            if entry is not None:
                yield key, entry


def _in_force(entry: IndicatorEntry, at: datetime) -> bool:
    """Whether ``entry`` is valid at ``at``: from its ``valid_from`` on, until its ``valid_until``
    (STIX's bounds: "valid_until ... no longer considered valid", so not at that instant)."""
    return (entry.valid_from is None or entry.valid_from <= at) and (
        entry.valid_until is None or entry.valid_until > at
    )


def _rank(entry: IndicatorEntry) -> tuple[int, str, str]:
    """Which of several listings of a value a lookup gives: the most severe category, then the
    feed name and the STIX id, for determinism."""
    return (_SEVERITY.get(entry.category, 9), entry.feed, entry.stix_id or "")


def _listing(feed: str, stix_id: str | None) -> str:
    """Where one listing of a value is kept: a list feed lists a value once; a STIX feed may
    list it in several indicators (two campaigns, one IP), each revoked on its own."""
    return feed if stix_id is None else f"{feed}#{stix_id}"


_SEVERITY = {"sanctioned": 0, "drainer": 1, "scam": 2, "phishing": 3, "mixer": 4}


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
    # The published combined.json lists "" as a domain (as the list source, scamlists, skips it):
    # an indicator of nothing, which the contract refuses.
    return [i for i in out if i.payload.value]


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
