"""ScamSniffer scam-database lists (``blacklist/``): ``address.json`` is a JSON array of
drainer/scam addresses; ``combined.json`` maps phishing domains to the drainer addresses
they use.  Domains become ``phishing`` indicators, addresses ``drainer`` ones.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vigil.errors import ContractError
from vigil.events.domains import domain_to_ascii
from vigil.sources.intel.stix import classify_address

FEED = "scamsniffer"
ADDRESSES = "json_address_array"
DOMAIN_MAP = "json_domain_map"


def _decode(data: bytes, where: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"{where}: not valid JSON: {exc}"
        raise ContractError(msg) from None
    except RecursionError:  # (arrays nested 100,000 deep: it stopped the list source for good)
        msg = f"{where}: not a list: JSON nested too deeply"
        raise ContractError(msg) from None


def _address(value: object, where: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        msg = f"{where}: expected an address string, got {value!r:.60}"
        raise ContractError(msg)
    return classify_address(value)


def parse_addresses(data: bytes, *, where: str) -> list[tuple[str, str, str]]:
    doc = _decode(data, where)
    if not isinstance(doc, list):
        msg = f"{where}: expected a JSON array of addresses, got {type(doc).__name__}"
        raise ContractError(msg)
    found = dict.fromkeys(_address(v, f"{where}[{i}]") for i, v in enumerate(doc))
    return [(t, v, "drainer") for t, v in found]


def parse_domain_map(data: bytes, *, where: str) -> list[tuple[str, str, str]]:
    doc = _decode(data, where)
    if not isinstance(doc, dict):
        msg = f"{where}: expected a JSON object {{domain: [address, ...]}}, got {type(doc).__name__}"
        raise ContractError(msg)
    out: dict[tuple[str, str], str] = {}
    for domain, addresses in doc.items():
        # The upstream file has an "" key: drainer addresses seen without a known domain.  ("."
        # is one too, once the root's dot goes: an indicator of nothing the contract refuses.)
        stripped = domain.strip()
        if stripped.rstrip("."):
            # In the ASCII form clicks carry: a Unicode spelling (a homograph's) matched none.
            name = domain_to_ascii(stripped)
            if name is None:
                msg = f"{where}: {domain[:60]!r} is not a domain name (no browser could open it)"
                raise ContractError(msg)
            out[("domain", name)] = "phishing"
        # The list's own text, quoted: a newline or an ESC sequence in a key forged log lines.
        here = f"{where}[{domain[:60]!r}]"
        if not isinstance(addresses, list):
            msg = f"{here}: expected an array of addresses, got {type(addresses).__name__}"
            raise ContractError(msg)
        for i, value in enumerate(addresses):
            out.setdefault(_address(value, f"{here}[{i}]"), "drainer")
    return [(t, v, c) for (t, v), c in out.items()]
