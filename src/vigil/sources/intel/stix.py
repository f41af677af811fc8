"""STIX 2.1 (and 2.0) objects -> indicator values.

Objects are parsed with :mod:`stix2` (which validates them, patterns included) and
each ``indicator`` whose pattern is a simple IOC -- one or more ``=`` comparisons joined
by ``OR`` on a supported observable, or an ``IN`` list of values (STIX 2.1 section 9.5: the
same as equalities joined by ``OR``) -- yields one :class:`ParsedIndicator` per value.
Patterns that need several observations together (``AND``, ``FOLLOWEDBY``) describe a
behaviour, not a value to match, and are skipped on purpose (named in ``skipped``), as are
patterns with no supported observable (a file hash) and other pattern languages.

A skipped indicator still yields a withdrawal marker (:data:`~vigil.events.types.STIX_WITHDRAWAL`,
revoked, carrying its STIX id and ``modified``): the values an older version of it listed are on
the compacted topic under keys of their own, which this version writes nothing to, and without
the marker an indicator corrected to a file hash went on matching its old IP for ever.  The
index orders a STIX id's records by ``modified``, so the marker withdraws them whatever order
they are read in.

Of the versions of one STIX id in one list of objects (a bundle, a TAXII page), only the newest
is taken (several of that version all are): written after a newer one under the same key, an
older version was what the compacted topic kept, and a restarted detector matched an indicator
its feed had revoked.

Alternatives joined by ``OR`` that are not such comparisons (a file hash beside an IP) are
left out, the supported ones kept.  IPs are spelt as events spell them (IPv6 compressed), and
a network (CIDR in ``ipv4-addr:value``, or ``ISSUBSET``) as ``<address>/<prefix>``: the
indicator index matches an event's IP inside it.

Supported observables: ``ipv4-addr``, ``ipv6-addr``, ``domain-name``, ``url``,
``email-addr`` and crypto addresses, which STIX 2.1 has no standard object for:
``x-crypto-address:value``, ``cryptocurrency-wallet:address`` / ``:value`` and
``x-cryptocurrency-wallet:address`` / ``:value`` (the names in use in the wild).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import stix2
from stix2patterns.exceptions import ParseException  # type: ignore[import-untyped]
from stix2patterns.v21.pattern import Pattern  # type: ignore[import-untyped]

from vigil.errors import ContractError
from vigil.events.addresses import canonical_address, is_bech32
from vigil.events.codec import inert
from vigil.events.domains import domain_to_ascii, email_to_ascii
from vigil.events.types import STIX_WITHDRAWAL

#: (object type, property) -> our indicator type (crypto types refined by address shape)
OBSERVABLES: dict[tuple[str, str], str] = {
    ("ipv4-addr", "value"): "ipv4",
    ("ipv6-addr", "value"): "ipv6",
    ("domain-name", "value"): "domain",
    ("url", "value"): "url",
    ("email-addr", "value"): "email",
    ("x-crypto-address", "value"): "crypto_address",
    ("cryptocurrency-wallet", "address"): "crypto_address",
    ("cryptocurrency-wallet", "value"): "crypto_address",
    ("x-cryptocurrency-wallet", "address"): "crypto_address",
    ("x-cryptocurrency-wallet", "value"): "crypto_address",
}

_EVM = re.compile(r"^0x[0-9a-fA-F]{40}$")
#: Legacy (base58) Bitcoin addresses; segwit ones are bech32 (vigil.events.addresses).
_BASE58_BTC = re.compile(r"^[13][1-9A-HJ-NP-Za-km-z]{25,34}$")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")
_COMPOUND = re.compile(r"\b(?:AND|FOLLOWEDBY)\b")

#: Words in an indicator's types, labels or name -> our category (first match wins).
_CATEGORY_WORDS: tuple[tuple[str, str], ...] = (
    ("sanction", "sanctioned"),
    ("drainer", "drainer"),
    ("phish", "phishing"),
    ("scam", "scam"),
    ("mixer", "mixer"),
    ("c2", "c2"),
    ("command-and-control", "c2"),
    ("command and control", "c2"),
    ("compromised", "compromised_vendor"),
    ("malicious-activity", "malware"),
    ("malware", "malware"),
    ("watchlist", "malware"),
)


def classify_address(value: str) -> tuple[str, str]:
    """(indicator type, normalised value) of a crypto address, spelt as events spell it
    (:func:`vigil.events.addresses.canonical_address`: EVM and bech32 lower-cased, base58 as
    written, since it is case-sensitive)."""
    value = canonical_address(value)
    if _EVM.match(value):
        return "eth_address", value
    if is_bech32(value) or _BASE58_BTC.match(value):
        return "btc_address", value
    return "crypto_address", value


def normalise_value(indicator_type: str, value: str) -> tuple[str, str]:
    value = value.strip()
    if indicator_type == "crypto_address":
        return classify_address(value)
    if indicator_type == "domain":
        # In the ASCII form clicks carry (a Unicode spelling, a homograph's, matched no click);
        # "" when no browser could open it (as '.' is: a name of nothing), so it is left out.
        return indicator_type, domain_to_ascii(value) or ""
    if indicator_type == "email":
        # Its domain in the ASCII form too (a homograph sender's), "" (left out) when none.
        return indicator_type, email_to_ascii(value) or ""
    if indicator_type in ("ipv4", "ipv6"):
        return indicator_type, canonical_ip(value)
    return indicator_type, value


def canonical_ip(value: str) -> str:
    """An IP as events spell it (``str(ipaddress.ip_address(...))``: IPv6 compressed, lower-case),
    and a network (STIX allows CIDR in ``ipv4-addr:value``) as ``<address>/<prefix>``, a
    single-host one as its address; anything else as given."""
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


@dataclass(frozen=True)
class ParsedIndicator:
    indicator_type: str
    value: str
    category: str
    stix_id: str
    version: str
    valid_from: datetime | None
    valid_until: datetime | None
    revoked: bool
    confidence: int
    description: str | None


@dataclass
class StixResult:
    indicators: list[ParsedIndicator] = field(default_factory=list)
    #: indicator ids whose pattern carried no supported simple IOC (file hashes, AND ...)
    skipped: list[str] = field(default_factory=list)
    #: a withdrawal marker (see the module) per skipped indicator that has a version
    withdrawals: list[ParsedIndicator] = field(default_factory=list)
    #: older versions of a STIX id left out for a newer one among the same objects
    superseded: int = 0
    #: objects that are not valid indicators, each with why (the others are still taken: one
    #: bad indicator lost its whole bundle or TAXII page, whose cursor had moved past it)
    rejected: list[str] = field(default_factory=list)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    dt: datetime = value.astimezone(UTC)
    # stix2 returns its own datetime subclass; the codec encodes only plain datetimes.
    return datetime(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, tzinfo=UTC)


def _category(ind: Any) -> str:
    words = " ".join(
        [*(ind.get("indicator_types") or []), *(ind.get("labels") or []), str(ind.get("name") or "")]
    ).lower()
    for word, category in _CATEGORY_WORDS:
        if word in words:
            return category
    return "other"


def _unquote(literal: str) -> str:
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        return literal[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return literal


def pattern_values(pattern: str, *, where: str) -> list[tuple[str, str]] | None:
    """(type, value) pairs of a simple IOC pattern; None if the pattern is compound or has
    no supported observable.  Raises ContractError if the pattern does not parse."""
    try:
        inspected = Pattern(pattern).inspect()
    except ParseException as exc:
        msg = f"{where}: STIX pattern does not parse: {exc}"
        raise ContractError(msg) from None
    if _COMPOUND.search(_QUOTED.sub("''", pattern)):
        return None
    # Alternatives (OR): each supported one is a value to match; the others (a file hash, a
    # comparison other than equality) are left out, not the whole indicator with them.
    out: list[tuple[str, str]] = []
    for obj_type, comparisons in inspected.comparisons.items():
        for path, op, literal in comparisons:
            kind = OBSERVABLES.get((obj_type, ".".join(str(p) for p in path)))
            if kind is None or not isinstance(literal, str):
                continue
            if op == "=" or (op == "ISSUBSET" and kind in ("ipv4", "ipv6")):
                out.append(normalise_value(kind, _unquote(literal)))
            elif op == "IN":
                # "('a','b')": each quoted item is a value (a number in the list is none).
                out.extend(normalise_value(kind, _unquote(item)) for item in _QUOTED.findall(literal))
    return out or None


#: STIX 2.1 Appendix A, the None / Low / Med / High scale, as numbers.
_CONFIDENCE_WORDS = {"none": 0, "low": 15, "med": 50, "medium": 50, "high": 85}
_CONFIDENCE_DIGITS = re.compile(r"[0-9]{1,3}")


def _confidence(value: Any, where: str) -> int:
    """STIX confidence, 0-100 (100 when absent); a 2.0 custom property may say it in words of
    the 2.1 scale (Appendix A's other scales, 0-10 among them, cannot be told from it: not
    read).  stix2 leaves such a property (and a 2.1 value out of range) as given: "high" stopped
    the whole bundle, 150 made an event the contract refuses."""
    if value is None:
        return 100
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        number = int(text) if _CONFIDENCE_DIGITS.fullmatch(text) else _CONFIDENCE_WORDS.get(text)
    if number is None or not 0 <= number <= 100:
        msg = (
            f"{where}: confidence must be an integer from 0 to 100 (or none/low/med/high), got {value!r:.40}"
        )
        raise ContractError(msg)
    return number


def parse_objects(objects: list[dict[str, Any]], *, where: str) -> StixResult:
    """Indicators of a list of STIX objects (a bundle's or a TAXII envelope's ``objects``)."""
    result = StixResult()
    for n, raw in enumerate(objects):
        try:
            _parse_object(n, raw, where, result)
        except ContractError as exc:
            result.rejected.append(str(exc))
    _newest_only(result)
    return result


def _modified(parsed: ParsedIndicator) -> datetime | None:
    return datetime.fromisoformat(parsed.version) if parsed.version else None


def _newest_only(result: StixResult) -> None:
    """Leave out of ``result`` every version of a STIX id older than its newest one there (see
    the module).  Records with no version are all kept: there is nothing to order them by."""
    newest: dict[str, datetime] = {}
    for parsed in (*result.indicators, *result.withdrawals):
        modified = _modified(parsed)
        if modified is not None and (parsed.stix_id not in newest or modified > newest[parsed.stix_id]):
            newest[parsed.stix_id] = modified
    before = len(result.indicators) + len(result.withdrawals)

    def current(parsed: ParsedIndicator) -> bool:
        modified = _modified(parsed)
        return modified is None or modified == newest[parsed.stix_id]

    result.indicators = [p for p in result.indicators if current(p)]
    result.withdrawals = [p for p in result.withdrawals if current(p)]
    result.superseded = before - len(result.indicators) - len(result.withdrawals)


def _version(ind: Any) -> str:
    """A parsed indicator's version: its ``modified``, in UTC ("" if it has none)."""
    modified = _utc(ind.get("modified"))
    return modified.isoformat() if modified is not None else ""


def _skip(ind: Any, result: StixResult) -> None:
    """Name ``ind`` as skipped, and add its withdrawal marker if it is a later version (see the
    module)."""
    stix_id = str(ind.id)
    result.skipped.append(stix_id)
    version = _version(ind)
    if not version:
        return  # (stix2 requires ``modified``: a marker without it could withdraw nothing)
    created = _utc(ind.get("created"))
    if created is not None and _utc(ind.get("modified")) == created:
        # A first version has no older one to withdraw: a marker for each would add a record
        # to the compacted topic, and an entry to every detector's index, for every file hash
        # of a feed (a million in some), to withdraw nothing.
        return
    result.withdrawals.append(
        ParsedIndicator(
            indicator_type=STIX_WITHDRAWAL,
            value=stix_id,
            category=_category(ind),
            stix_id=stix_id,
            version=version,
            valid_from=None,
            valid_until=None,
            revoked=True,
            confidence=100,
            description="this version lists no value Vigil matches; earlier versions' values withdrawn",
        )
    )


def _parse_object(n: int, raw: Any, where: str, result: StixResult) -> None:
    """Add the indicators of ``objects[n]`` to ``result``; raises ContractError naming it."""
    if not isinstance(raw, dict):
        msg = f"{where}: objects[{n}] must be a JSON object, got {type(raw).__name__}"
        raise ContractError(msg)
    if raw.get("type") != "indicator":
        return
    here = f"{where}: {inert(str(raw.get('id', f'objects[{n}]')))[:120]}"
    pattern = raw.get("pattern")
    if raw.get("pattern_type", "stix") == "stix" and (not isinstance(pattern, str) or not pattern.strip()):
        # (stix2's pattern validator fails on "" with an UnboundLocalError of its own.)
        msg = f"{here}: an indicator's pattern must be a non-empty string, got {pattern!r:.40}"
        raise ContractError(msg)
    try:
        ind = stix2.parse(raw, allow_custom=True)
    # (TypeError: stix2 looks a spec_version of [...] up in a dict, and the bundle was lost.)
    except (stix2.exceptions.STIXError, ValueError, TypeError) as exc:
        msg = f"{here}: not a valid STIX indicator: {exc}"
        raise ContractError(msg) from None
    if isinstance(ind, dict):
        # stix2 hands back a plain dict when it cannot tell the spec version.
        msg = f"{here}: not a STIX 2.0/2.1 indicator (spec_version {raw.get('spec_version')!r:.20})"
        raise ContractError(msg)
    if ind.get("pattern_type", "stix") != "stix":
        _skip(ind, result)
        return
    # A value that normalises to nothing ('.', blanks) indicates nothing, and would match nothing.
    values = [(t, v) for t, v in pattern_values(str(ind.pattern), where=here) or () if v]
    if not values:
        _skip(ind, result)
        return
    category = _category(ind)
    # As given: stix2 has already cut a 2.1 value to an int (40.5 -> 40, true -> 1).
    confidence = _confidence(raw.get("confidence"), here)
    version = _version(ind)
    for indicator_type, value in dict.fromkeys(values):
        result.indicators.append(
            ParsedIndicator(
                indicator_type=indicator_type,
                value=value,
                category=category,
                stix_id=str(ind.id),
                version=version,
                valid_from=_utc(ind.get("valid_from")),
                valid_until=_utc(ind.get("valid_until")),
                revoked=bool(ind.get("revoked", False)),
                confidence=confidence,
                description=ind.get("description") or ind.get("name"),
            )
        )
