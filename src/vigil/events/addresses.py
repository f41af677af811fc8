"""One spelling per crypto address, so a listed address matches however a source spells it.

- EVM addresses (``0x`` and 40 hex digits): lower-case.  The mixed case is only the EIP-55
  checksum; nodes and lists spell the same address both ways.
- Bech32 and bech32m segwit addresses (BIP-173, BIP-350; ``bc1``, ``tb1``, ``bcrt1``):
  lower-case.  Upper case is as valid (QR codes use it, so a customer's withdrawal address may
  arrive so) while nodes print lower case.  Mixed case is invalid, but taken as a typo of the
  same address rather than a different one.
- Bitcoin Cash CashAddr addresses (``bitcoincash:qpf2...``; testnet ``bchtest:``, regtest
  ``bchreg:``): lower-case, without the prefix, as OFAC lists them.  Wallets show the prefix or
  leave it out, and upper case is as valid (QR codes).  Mixed case is invalid CashAddr and is
  kept as written.  Only the usual P2PKH/P2SH shape is taken (``q`` or ``p``, or ``z`` or ``r``
  with token support, then 41 characters of the CashAddr alphabet: 42 in all) and the checksum
  is not verified (without the prefix, which it covers, the network is unknown).  A legacy
  (base58) Bitcoin Cash address is not converted to its CashAddr spelling, nor back: the
  spellings of one address stay several values in events (a legacy ``1...`` spelling is a
  Bitcoin address's too, and an analyst sees what the customer typed), and
  :func:`other_spellings` names an address's other spellings, for lists to match them all (the
  OFAC Bitcoin Cash list spells most addresses as CashAddr and one as legacy).
- Everything else as written: base58 (legacy Bitcoin ``1...``/``3...``, Tron, Solana) is
  case-sensitive, so lower-casing it would name another address, or none.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, TypeVar

import msgspec

_EVM = re.compile(r"^0x[0-9a-f]{40}$", re.IGNORECASE)
#: Human-readable part, separator, then at least the 6-character checksum (BIP-173: at most 90
#: characters in all) from the bech32 alphabet.
_BECH32 = re.compile(r"^(?:bc|tb|bcrt)1[02-9ac-hj-np-z]{6,87}$", re.IGNORECASE)
_BECH32_HEADS = frozenset({"bc", "BC", "bC", "Bc", "tb", "TB", "tB", "Tb"})
#: A CashAddr P2PKH (``q``) or P2SH (``p``) address, or either with token support (``z``,
#: ``r``), its prefix optional, in one case (the alphabet is bech32's, in CashAddr's order).
_CASHADDR = re.compile(r"(?:(?:bitcoincash|bchtest|bchreg):)?[qpzr][qpzry9x8gf2tvdw0s3jn54khce6mua7l]{41}")
_CASHADDR_UPPER = re.compile(_CASHADDR.pattern.upper())
#: Their lengths: without a prefix, with ``bchreg:``, ``bchtest:``, ``bitcoincash:``.
_CASHADDR_LENGTHS = frozenset({42, 49, 50, 54})
_CASHADDR_HEADS = frozenset("qpzrbQPZRB")


def is_evm(value: str) -> bool:
    """An EVM address (``0x`` and 40 hex digits), in any case."""
    return len(value) == 42 and _EVM.match(value) is not None


def is_bech32(value: str) -> bool:
    """A Bitcoin segwit address (main, test or regtest network), in any case."""
    return _BECH32.match(value) is not None


def is_cashaddr(value: str) -> bool:
    """A Bitcoin Cash CashAddr P2PKH/P2SH address (or either with token support), with or without
    its prefix, all lower or all upper case (see the module)."""
    return len(value) in _CASHADDR_LENGTHS and (
        _CASHADDR.fullmatch(value) is not None or _CASHADDR_UPPER.fullmatch(value) is not None
    )


def canonical_address(value: str) -> str:
    """The spelling addresses are compared in (see the module): surrounding blanks dropped,
    EVM and bech32 addresses lower-cased, CashAddr ones lower-cased without their prefix,
    others kept as written.  A value of blanks alone is kept as written: the contract took it
    (an address is never empty), and dropping them made an event it refuses after it had been
    accepted."""
    value = value.strip() or value
    # The prefixes and lengths first: this runs on every intel lookup and exposure check.
    head = value[:2]
    if (head in ("0x", "0X") and len(value) == 42 and _EVM.match(value)) or (
        head in _BECH32_HEADS and _BECH32.match(value)
    ):
        return value.lower()
    if len(value) in _CASHADDR_LENGTHS and head[:1] in _CASHADDR_HEADS and is_cashaddr(value):
        return value.lower().rpartition(":")[2]
    return value


#: Payload fields that hold an address, besides those whose name ends in ``address``.
_ADDRESS_FIELDS = frozenset({"owner", "spender", "token_contract"})
E = TypeVar("E", bound=msgspec.Struct)


def canonical_addresses(event: E) -> E:
    """``event`` with its addresses as :func:`canonical_address` spells them: the ``wallet`` and
    ``counterparty`` entities and the payload's address fields.  For events from a service that
    may spell an EVM address in its checksum case: one wallet was two keys, on two partitions,
    with two detection states.  The event itself when nothing changes."""
    entities: Any = getattr(event, "entities", None)
    changes: dict[str, Any] = {}
    if entities is not None:
        fixed = {
            name: canonical_address(value)
            for name in ("wallet", "counterparty")
            if isinstance(value := getattr(entities, name, None), str) and canonical_address(value) != value
        }
        if fixed:
            changes["entities"] = msgspec.structs.replace(entities, **fixed)
    payload: Any = getattr(event, "payload", None)
    if isinstance(payload, msgspec.Struct):
        fixed = {
            name: canonical_address(value)
            for name in payload.__struct_fields__
            if (name.endswith("address") or name in _ADDRESS_FIELDS)
            and isinstance(value := getattr(payload, name), str)
            and canonical_address(value) != value
        }
        if fixed:
            changes["payload"] = msgspec.structs.replace(payload, **fixed)
    return msgspec.structs.replace(event, **changes) if changes else event


# --------------------------------------------------------------------------- Bitcoin Cash spellings

#: Base58 (Bitcoin's alphabet: no 0, O, I, l).
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_DIGIT = {c: i for i, c in enumerate(_BASE58)}
#: CashAddr's base32 alphabet, in its order.
_CASHADDR_ALPHABET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CASHADDR_DIGIT = {c: i for i, c in enumerate(_CASHADDR_ALPHABET)}
#: A CashAddr network's prefix -> the legacy version bytes of its P2PKH and P2SH addresses.
_NETWORKS = {"bitcoincash": (0x00, 0x05), "bchtest": (0x6F, 0xC4), "bchreg": (0x6F, 0xC4)}
#: A legacy version byte -> (the CashAddr networks it is spelled on, 0 P2PKH or 1 P2SH): a
#: legacy testnet address is regtest's too.
_LEGACY_NETWORKS = {
    0x00: (("bitcoincash",), 0),
    0x05: (("bitcoincash",), 1),
    0x6F: (("bchtest", "bchreg"), 0),
    0xC4: (("bchtest", "bchreg"), 1),
}


def other_spellings(key: str) -> tuple[str, ...]:
    """The other spellings of a Bitcoin Cash address spelled as :func:`canonical_address` spells
    it: a CashAddr address's legacy (base58) spelling and its CashAddr spelling with or without
    token support (CashTokens: ``z`` and ``r`` for the ``q`` and ``p`` forms' script); a legacy
    P2PKH/P2SH address's two CashAddr spellings (lower-case, without the prefix; a testnet one's
    on testnet and regtest).  Empty for anything else, a CashAddr spelling whose checksum fits
    no network, or a legacy one whose checksum is wrong.

    Every spelling names one script, so one key pair: a list that names an address one way
    names it the others too.  A legacy ``1...``/``3...`` spelling is a Bitcoin address's as
    well (the same key pair's on both chains), so a listed Bitcoin address also matches its
    CashAddr spellings.  Pure Python, about 30 µs: for lists as they load, not for each event."""
    if len(key) == 42 and key[0] in "qpzr" and key.islower() and is_cashaddr(key):
        decoded = _cashaddr_decode(key)
        if decoded is None:
            return ()
        network, kind, digest = decoded
        legacy = _base58check(bytes([_NETWORKS[network][kind & 1]]) + digest)
        return legacy, _cashaddr_encode(network, kind ^ 2, digest)
    if 26 <= len(key) <= 35 and key[0] in "13mn2":
        payload = _base58check_decode(key)
        if payload is None or len(payload) != 21 or payload[0] not in _LEGACY_NETWORKS:
            return ()
        networks, kind = _LEGACY_NETWORKS[payload[0]]
        return tuple(
            _cashaddr_encode(network, kind | tokens, payload[1:]) for network in networks for tokens in (0, 2)
        )
    return ()


def _polymod(values: list[int]) -> int:
    """CashAddr's BCH checksum over 5-bit ``values`` (its specification's generator)."""
    c = 1
    for d in values:
        c0 = c >> 35
        c = ((c & 0x07FFFFFFFF) << 5) ^ d
        if c0 & 1:
            c ^= 0x98F2BC8E61
        if c0 & 2:
            c ^= 0x79B76D99E2
        if c0 & 4:
            c ^= 0xF33E5FB3C4
        if c0 & 8:
            c ^= 0xAE2EABE2A8
        if c0 & 16:
            c ^= 0x1E4F43E470
    return c ^ 1


def _prefix_values(network: str) -> list[int]:
    """The checksum's input for a prefix: each character's low five bits, then a zero."""
    return [ord(c) & 31 for c in network] + [0]


def _cashaddr_decode(body: str) -> tuple[str, int, bytes] | None:
    """(network, type, the 20-byte hash) of a lower-case CashAddr spelling without its prefix;
    the network is the one whose prefix its checksum fits (none: None).  Type 0 P2PKH, 1 P2SH,
    2 and 3 the same with token support."""
    values = [_CASHADDR_DIGIT[c] for c in body]
    network = next((n for n in _NETWORKS if _polymod(_prefix_values(n) + values) == 0), None)
    if network is None:
        return None
    acc = 0
    for v in values[:-8]:
        acc = (acc << 5) | v
    # 34 five-bit groups: 21 bytes and two bits of padding, which must be zero.
    if acc & 0b11:
        return None
    payload = (acc >> 2).to_bytes(21, "big")
    version = payload[0]
    if version & 0x87:  # (the reserved bit, and hash size code 0: 160 bits)
        return None
    return network, version >> 3, payload[1:]


def _cashaddr_encode(network: str, kind: int, digest: bytes) -> str:
    """The CashAddr spelling, without its prefix, of a 20-byte ``digest`` of type ``kind`` (see
    _cashaddr_decode) on ``network``."""
    acc = int.from_bytes(bytes([kind << 3]) + digest, "big") << 2
    values = [(acc >> (5 * i)) & 31 for i in range(33, -1, -1)]
    checksum = _polymod(_prefix_values(network) + values + [0] * 8)
    values += [(checksum >> (5 * i)) & 31 for i in range(7, -1, -1)]
    return "".join(_CASHADDR_ALPHABET[v] for v in values)


def _base58check(payload: bytes) -> str:
    """``payload`` with its 4-byte double-SHA-256 checksum, in base58 (a zero byte leading it is
    a ``1``)."""
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_BASE58[digit])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _base58check_decode(value: str) -> bytes | None:
    """The payload of a base58check spelling; None when it is not base58 or its checksum is wrong."""
    number = 0
    for c in value:
        digit = _BASE58_DIGIT.get(c)
        if digit is None:
            return None
        number = number * 58 + digit
    zeros = len(value) - len(value.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    data = b"\0" * zeros + body
    if len(data) < 5:
        return None
    payload, checksum = data[:-4], data[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        return None
    return payload
