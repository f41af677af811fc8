"""OFAC SDN "Digital Currency Address" lists: one address per line, one file per asset
(``sanctioned_addresses_<ASSET>.txt``, as published by 0xB10C/ofac-sanctioned-digital-currency-addresses).

EVM addresses appear mixed-case (EIP-55 checksums); they are compared lower-cased.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from vigil.errors import ContractError
from vigil.sources.intel.stix import classify_address

FORMAT = "ofac_lines"
FEED = "ofac_sdn"
CATEGORY = "sanctioned"

_ASSET = re.compile(r"sanctioned_addresses_([A-Za-z0-9]+)\.txt$")
#: Addresses are base58, bech32, hex or similar: letters and digits only.
_ADDRESS = re.compile(r"^[A-Za-z0-9]{20,120}$")


def asset_of(location: str) -> str | None:
    """The asset ticker from the upstream file name, if it follows the convention."""
    m = _ASSET.search(PurePosixPath(location).name)
    return m.group(1).upper() if m else None


def parse(data: bytes, *, where: str) -> list[tuple[str, str, str]]:
    """(indicator type, value, category) per address; a line that is not an address raises."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{where}: OFAC list is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ContractError(msg) from None
    out: dict[tuple[str, str], str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if not _ADDRESS.match(value):
            msg = f"{where}:{n}: expected one address (letters and digits) per line, got {value[:60]!r}"
            raise ContractError(msg)
        out[classify_address(value)] = CATEGORY
    return [(t, v, c) for (t, v), c in out.items()]
