"""The real OFAC-sanctioned and scam/drainer addresses, loaded from the shared data at run time.

The lists are public data that change; they are read from disk on every simulation and
never copied into code.  EVM addresses are lower-cased (the OFAC list is mixed-case).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import ConfigError


@dataclass(frozen=True)
class IntelLists:
    ofac_eth: tuple[str, ...]
    ofac_btc: tuple[str, ...]
    drainers: tuple[str, ...]
    #: Phishing domain -> the drainer addresses it used (only domains whose drainers are listed).
    phishing_domains: dict[str, tuple[str, ...]]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_intel(intel_dir: Path) -> IntelLists:
    """Read the lists under ``intel_dir``; a missing or malformed file raises ConfigError saying which."""
    ofac = intel_dir / "ofac"
    scam = intel_dir / "scamsniffer"
    try:
        eth = sorted({a.lower() for a in _lines(ofac / "sanctioned_addresses_ETH.txt")})
        btc = sorted(set(_lines(ofac / "sanctioned_addresses_XBT.txt")))
        drainers = sorted({a.lower() for a in json.loads((scam / "address.json").read_text())})
        combined = json.loads((scam / "combined.json").read_text())
    except (OSError, ValueError) as exc:
        msg = (
            f"cannot load intel lists from {intel_dir} (expected ofac/sanctioned_addresses_ETH.txt, "
            f"ofac/sanctioned_addresses_XBT.txt, scamsniffer/address.json, scamsniffer/combined.json): {exc}"
        )
        raise ConfigError(msg) from None
    known = set(drainers)
    domains = {
        str(domain): tuple(sorted(a.lower() for a in addrs if a.lower() in known))
        for domain, addrs in sorted(combined.items())
        # (The published file lists "" as a domain: a link to it would have no host.)
        if domain and isinstance(addrs, list) and any(str(a).lower() in known for a in addrs)
    }
    bad = [a for a in eth if not (a.startswith("0x") and len(a) == 42)]
    if bad or not eth or not btc or not drainers or not domains:
        msg = f"intel lists under {intel_dir} are empty or malformed (e.g. {bad[:1]})"
        raise ConfigError(msg)
    return IntelLists(tuple(eth), tuple(btc), tuple(drainers), domains)
