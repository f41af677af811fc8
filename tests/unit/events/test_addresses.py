"""Addresses have one spelling, whichever way a source or a list writes them."""

from __future__ import annotations

import pytest

from vigil.config import shared_data_dir
from vigil.events.addresses import canonical_address, is_bech32, is_cashaddr, other_spellings
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


CASHADDR = "qpf2cphc5dkuclkqur7lhj2yuqq9pk3hmukle77vhq"  # as OFAC lists it
P2SH_CASHADDR = "pqq3728yw0y47sqn6l2na30mcw6zm78dzq5ucqzc37"


@pytest.mark.parametrize(
    "given",
    [
        CASHADDR,
        f"bitcoincash:{CASHADDR}",
        f"BITCOINCASH:{CASHADDR.upper()}",  # all upper case, as QR codes carry it
        CASHADDR.upper(),
        f" bitcoincash:{CASHADDR}\n",
        f"bchtest:{CASHADDR}",
        f"bchreg:{CASHADDR}",
    ],
)
def test_a_cashaddr_address_is_spelt_as_ofac_lists_it(given: str) -> None:
    # A withdrawal to the prefixed or upper-case spelling of a sanctioned address was not held.
    assert canonical_address(given) == CASHADDR
    assert is_cashaddr(given.strip())


@pytest.mark.parametrize(
    "given",
    [
        f"bitcoincash:{CASHADDR.upper()}",  # mixed case: invalid CashAddr
        CASHADDR[:20] + CASHADDR[20:].upper(),
        CASHADDR[:-1],  # too short
        CASHADDR + "q",  # too long
        CASHADDR[:-1] + "b",  # "b" is not in the CashAddr alphabet
        "x" + CASHADDR[1:],  # neither P2PKH (q) nor P2SH (p), nor either with tokens (z, r)
        f"bitcoin:{CASHADDR}",  # another prefix
        f"BitcoinCash:{CASHADDR}",
    ],
)
def test_other_values_are_kept_as_written(given: str) -> None:
    assert canonical_address(given) == given
    assert not is_cashaddr(given)


def test_a_p2sh_cashaddr_is_canonical_too() -> None:
    assert canonical_address(f"BITCOINCASH:{P2SH_CASHADDR.upper()}") == P2SH_CASHADDR
    assert classify_address(f"bitcoincash:{P2SH_CASHADDR}") == ("crypto_address", P2SH_CASHADDR)


#: The CashAddr specification's examples: one hash (76a04053...) as P2PKH and P2SH, and two more.
SPEC_PAIRS = [
    ("1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggu", "bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"),
    ("1KXrWXciRDZUpQwQmuM1DbwsKDLYAYsVLR", "bitcoincash:qr95sy3j9xwd2ap32xkykttr4cvcu7as4y0qverfuy"),
    ("3CWFddi6m4ndiGyKqzYvsFYagqDLPVMTzC", "bitcoincash:ppm2qsznhks23z7629mms6s4cwef74vcwvn0h829pq"),
    ("31nwvkZwyPdgzjBJZXfDmSWsC4ZLKpYyUw", "bitcoincash:pqq3728yw0y47sqn6l2na30mcw6zm78dzq5ucqzc37"),
]


@pytest.mark.parametrize(("legacy", "cashaddr"), SPEC_PAIRS)
def test_a_bitcoin_cash_address_has_its_other_spellings(legacy: str, cashaddr: str) -> None:
    body = canonical_address(cashaddr)
    legacy_has = other_spellings(legacy)
    assert len(legacy_has) == 2
    assert legacy_has[0] == body
    # With token support (CashTokens): the same script, a z or r where the q or p was.
    tokens = legacy_has[1]
    assert tokens[0] == {"q": "z", "p": "r"}[body[0]]
    assert tokens[1:34] == body[1:34]  # (the hash; the checksum differs)
    assert is_cashaddr(tokens)
    assert canonical_address(f"BITCOINCASH:{tokens.upper()}") == tokens
    assert other_spellings(body) == (legacy, tokens)
    assert other_spellings(tokens) == (legacy, body)
    assert other_spellings(canonical_address(cashaddr.upper())) == (legacy, tokens)  # (a QR code's)


def test_a_testnet_address_is_spelled_on_testnet_and_regtest() -> None:
    # 0x6f is testnet's P2PKH version, regtest's too; the CashAddr checksum covers the prefix.
    testnet = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
    spelled = other_spellings(testnet)
    assert len(set(spelled)) == 4
    assert not set(spelled) & set(other_spellings(SPEC_PAIRS[0][0]))
    for body in spelled:
        assert other_spellings(body)[0] == testnet


def test_a_hash_with_leading_zero_bytes_keeps_its_leading_ones() -> None:
    # A base58check payload's leading zero bytes are its leading "1"s (the version byte is one).
    body = other_spellings("1111111111111111111114oLvT2")  # the all-zero P2PKH hash
    assert body
    assert other_spellings(body[0])[0] == "1111111111111111111114oLvT2"


@pytest.mark.parametrize(
    "value",
    [
        "1BpEi6DfDAUFd7GtittLSdBeYJvcoaVggv",  # one character off: the checksum is wrong
        "qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6q",  # likewise
        "LUWPbpM43E2p7ZSh8cyTBEkvpHmr3cB8Ez",  # Litecoin: another version byte
        "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf",  # Tron
        "1BpEi6DfDAUFd7GtittLSdBeYJvcoaVgg0",  # not base58
        SEGWIT,
        EVM.lower(),
        "1",
        "",
    ],
)
def test_other_values_have_no_other_spelling(value: str) -> None:
    assert other_spellings(value) == ()


def test_every_address_of_the_ofac_bitcoin_cash_list_has_its_other_spellings() -> None:
    # The real list: six CashAddr spellings and one legacy; each checksum fits, each way back.
    path = shared_data_dir() / "intel" / "ofac" / "sanctioned_addresses_BCH.txt"
    listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    assert len(listed) >= 7
    for value in listed:
        key = canonical_address(value)
        others = other_spellings(key)
        assert len(others) == 2, value
        for other in others:
            assert key in other_spellings(other)
