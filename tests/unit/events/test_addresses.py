"""Addresses have one spelling, whichever way a source or a list writes them."""

from __future__ import annotations

import pytest

from vigil.events.addresses import canonical_address, is_bech32
from vigil.sources.intel import ofac
from vigil.sources.intel.stix import classify_address

SEGWIT = "bc1qa5wkgaew2dkv56kfvj49j0av5nml45x9ek9hz6"
TAPROOT = "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297"
LEGACY = "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
EVM = "0x8589427373D6D84E98730D7795D8f6f8731FDA16"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (EVM, EVM.lower()),
        (f"  {EVM.upper().replace('0X', '0x')}\n", EVM.lower()),
        (SEGWIT.upper(), SEGWIT),  # valid upper case (QR codes)
        (TAPROOT.upper(), TAPROOT),
        ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx".upper(), "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"),
        (LEGACY, LEGACY),  # base58 is case-sensitive: lower-cased it is another address
        ("TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf", "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf"),  # Tron
        ("bc1-not-an-address", "bc1-not-an-address"),
        ("  ", "  "),  # blanks alone stay as written: the contract took them, "" it refuses
    ],
)
def test_canonical_spelling(given: str, expected: str) -> None:
    assert canonical_address(given) == expected


def test_bech32_is_told_from_base58() -> None:
    assert is_bech32(SEGWIT)
    assert is_bech32(SEGWIT.upper())
    assert not is_bech32(LEGACY)
    assert not is_bech32("bc1qb")  # shorter than its checksum


def test_lists_classify_upper_case_segwit_as_the_address_nodes_print() -> None:
    assert classify_address(SEGWIT.upper()) == ("btc_address", SEGWIT)
    assert classify_address(LEGACY) == ("btc_address", LEGACY)
    data = f"{SEGWIT.upper()}\n{LEGACY}\n".encode()
    assert sorted(ofac.parse(data, where="t")) == sorted(
        [("btc_address", SEGWIT, "sanctioned"), ("btc_address", LEGACY, "sanctioned")]
    )
