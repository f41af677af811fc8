"""What the Bitcoin and Ethereum normalisers share: decoding a raw block or log record
with the JSON path of the first bad field, and building a ``chain_transfer`` event.

Event ids are ``stable_id("chain_transfer", chain, tx_hash, part)``, where ``part`` tells
transfers of one transaction apart (a Bitcoin output index, an ERC-20 log's position among
its transaction's logs, or ``"native"`` for the ether a transaction carries), so a
re-published block yields the same ids.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from vigil.errors import DecodeError
from vigil.events.base import Entities
from vigil.events.types import Chain, ChainTransfer, ChainTransferPayload
from vigil.hub.raw import RawRecord

T = TypeVar("T")


def decode_record(decoder: msgspec.json.Decoder[T], value: bytes, where: str) -> T:
    """``value`` decoded, or a :class:`~vigil.errors.DecodeError` naming ``where`` and, for a
    value of the wrong shape, the JSON path msgspec reports."""
    try:
        return decoder.decode(value)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit(" - at `", 1)[1][:-1] if " - at `" in text else None
        raise DecodeError(text, where=where, path=path) from None
    except msgspec.DecodeError as exc:
        msg = f"not valid JSON: {exc}"
        raise DecodeError(msg, where=where) from None


#: 9999-12-31T23:59:59Z: the last second a datetime holds.
_LAST_SECOND = 253_402_300_799


#: The EVM zero address: the sender of a mint, the receiver of a burn.
ZERO_ADDRESS = "0x" + "0" * 40


def block_time(seconds: int, where: str, path: str) -> datetime:
    """A block's Unix time as a UTC datetime; DecodeError naming the field past year 9999 or
    before 1970 (``fromtimestamp`` raised OverflowError, which took the whole block with it as
    an "unexpected" error rather than a clear one)."""
    if not 0 <= seconds <= _LAST_SECOND:
        msg = f"block time {seconds} is not a Unix time in seconds between 1970 and 9999"
        raise DecodeError(msg, where=where, path=path)
    return datetime.fromtimestamp(seconds, UTC)


@functools.cache
def _id_hasher(*parts: str) -> hashlib.blake2b:
    """A blake2b fed with the leading ``parts`` as :func:`~vigil.events.ids.stable_id` feeds them."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h


def event_id(event_type: str, chain: str, tx_hash: str, part: str | int) -> str:
    """``stable_id(event_type, chain, tx_hash, part)``, without re-hashing the constant leading parts."""
    h = _id_hasher(event_type, chain).copy()
    tx = tx_hash.encode()
    tail = str(part).encode()
    h.update(b"".join((len(tx).to_bytes(4, "big"), tx, len(tail).to_bytes(4, "big"), tail)))
    return h.hexdigest()


@functools.cache
def scale(decimals: int) -> int:
    """``10**decimals``, computed once per number of decimals."""
    factor: int = 10**decimals
    return factor


def chain_transfer(
    record: RawRecord,
    *,
    chain: Chain,
    tx_hash: str,
    part: str | int,
    occurred_at: datetime,
    block_number: int,
    from_address: str,
    wallet: str | None,
    to_address: str,
    asset: str,
    value_raw: int,
    decimals: int,
    log_index: int | None = None,
    token_contract: str | None = None,
    block_hash: str | None = None,
    decimals_assumed: bool = False,
    success_unknown: bool = False,
) -> ChainTransfer:
    """A transfer seen in ``record``.  ``wallet`` is the sender as an entity: ``None`` where
    ``from_address`` is a placeholder (a coinbase or an unresolved sender), not a wallet."""
    return ChainTransfer(
        event_id=event_id("chain_transfer", chain, tx_hash, part),
        source=chain,
        occurred_at=occurred_at,
        ingested_at=record.received_at,
        # The zero address (a mint's sender, a burn's receiver) is no one's wallet: as an entity
        # it would be one key for every mint and burn of every token, one partition's hot spot.
        entities=Entities(
            wallet=None if wallet == ZERO_ADDRESS else wallet,
            counterparty=None if to_address == ZERO_ADDRESS else to_address,
        ),
        payload=ChainTransferPayload(
            chain=chain,
            tx_hash=tx_hash,
            log_index=log_index,
            block_number=block_number,
            from_address=from_address,
            to_address=to_address,
            asset=asset,
            token_contract=token_contract,
            value_raw=value_raw,
            decimals=decimals,
            amount=value_raw / scale(decimals),
            block_hash=block_hash,
            decimals_assumed=decimals_assumed,
            success_unknown=success_unknown,
        ),
    )
