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
  kept as written.  Only the usual P2PKH/P2SH shape is taken (``q`` or ``p``, then 41 characters
  of the CashAddr alphabet: 42 in all) and the checksum is not verified (without the prefix, which
  it covers, the network is unknown).  A legacy (base58) Bitcoin Cash address is not converted to
  its CashAddr spelling: the two spellings of one address stay two values.
- Everything else as written: base58 (legacy Bitcoin ``1...``/``3...``, Tron, Solana) is
  case-sensitive, so lower-casing it would name another address, or none.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

_EVM = re.compile(r"^0x[0-9a-f]{40}$", re.IGNORECASE)
#: Human-readable part, separator, then at least the 6-character checksum (BIP-173: at most 90
#: characters in all) from the bech32 alphabet.
_BECH32 = re.compile(r"^(?:bc|tb|bcrt)1[02-9ac-hj-np-z]{6,87}$", re.IGNORECASE)
_BECH32_HEADS = frozenset({"bc", "BC", "bC", "Bc", "tb", "TB", "tB", "Tb"})
#: A CashAddr P2PKH (``q``) or P2SH (``p``) address, its prefix optional, in one case (the
#: alphabet is bech32's, in CashAddr's order).
_CASHADDR = re.compile(r"(?:(?:bitcoincash|bchtest|bchreg):)?[qp][qpzry9x8gf2tvdw0s3jn54khce6mua7l]{41}")
_CASHADDR_UPPER = re.compile(_CASHADDR.pattern.upper())
#: Their lengths: without a prefix, with ``bchreg:``, ``bchtest:``, ``bitcoincash:``.
_CASHADDR_LENGTHS = frozenset({42, 49, 50, 54})
_CASHADDR_HEADS = frozenset("qpbQPB")


def is_evm(value: str) -> bool:
    """An EVM address (``0x`` and 40 hex digits), in any case."""
    return len(value) == 42 and _EVM.match(value) is not None


def is_bech32(value: str) -> bool:
    """A Bitcoin segwit address (main, test or regtest network), in any case."""
    return _BECH32.match(value) is not None


def is_cashaddr(value: str) -> bool:
    """A Bitcoin Cash CashAddr P2PKH/P2SH address, with or without its prefix, all lower or all
    upper case (see the module)."""
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
