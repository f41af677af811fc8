"""Ethereum raw records -> ``chain_transfer`` and ``token_approval`` events.

- ``eth_block`` (``eth_getBlockByNumber(n, true)``): one ``chain_transfer`` per transaction
  that moves ether (``value > 0``) to an address, except the failed ones the connector
  listed in ``meta["failed_txs"]`` (from the receipts).  A record without that list (read
  without receipts, or by an older connector after one "no such method" answer) cannot say
  which transactions failed: its transfers are kept, marked ``success_unknown`` (read as
  successful, a reverted send of 5 ETH was a transfer of 5 ETH; dropped, every real one of
  the block would be lost).  Not covered, because the block does not say: ether moved by
  contracts (internal transfers, needs traces) and value sent with a contract creation
  (``to`` is null; the new address is in the receipt).
- ``eth_logs`` (``eth_getLogs``): ERC-20 ``Transfer`` -> ``chain_transfer`` with its
  ``log_index``; ``Approval`` -> ``token_approval``, ``unlimited`` when the amount is at
  least 2**255 (wallets approve ``2**256 - 1``; some tokens store the allowance minus a
  little, hence the half-range threshold).  A log counts as ERC-20 when its topic 0 is the
  event's signature and its indexed topics plus 32-byte data words make exactly three
  parameters (ethereum-etl's rule, which also admits early tokens that index nothing).
  ERC-721 ``Transfer`` (four topics: the token id is indexed) is skipped, where
  ethereum-etl counts it as a token transfer: its "amount" is a token id.  ERC-721
  ``Approval`` (``approve(spender, token_id)``: one NFT, which drainers ask for too) ->
  ``token_approval`` of kind ``approve_nft`` with the ``token_id`` and ``amount_raw`` 1; a
  cleared one (spender the zero address, which older collections emit on every transfer) is
  skipped.  The layout is an ERC-20 Approval that indexes its amount too: from a token the
  normaliser knows (:data:`KNOWN_TOKENS`, or passed), it is read as an amount.  The log alone
  cannot tell the two apart, so pass such tokens (rare) to the normaliser: otherwise a revocation
  by one reads as an NFT approval.  ``ApprovalForAll``
  (ERC-721/1155: an operator may move every token of the collection, what NFT drainers ask
  for) -> ``token_approval`` of kind ``set_approval_for_all``, ``amount_raw`` 1 and
  ``unlimited`` when granted, 0 when revoked.  Other layouts are skipped too, not rejected.

Amounts: ``value_raw`` is the exact integer; ``amount`` divides by the token's decimals,
known for the tokens in :data:`KNOWN_TOKENS` or passed to the normaliser, else as the contract's
``decimals()`` answered the connector (``meta["token_decimals"]``), else **assumed 18**, and then
the event says so (``decimals_assumed``): mainnet WBTC (8 decimals) read 3.88e-10 for 3.88.
Tokens not in :data:`KNOWN_TOKENS` are named by their contract address in ``asset``.
``amount_usd`` is left unset: the normaliser has no price feed.  (Stablecoins at their peg
would be easy, but the chain rules on ``amount_usd``, hot-wallet outflow and dust,
are not yet scoped to the exchange's and its customers' wallets: on mainnet traffic they would
fire for every market maker and every poisoning campaign.)

Event ids derive from ``ethereum`` + transaction hash + ``native`` for ether, or for a log its
position among the record's logs of the same transaction (in ``logIndex`` order, so among the
logs the connector asks for: ``Transfer``, ``Approval``, ``ApprovalForAll``).  Not the
``logIndex`` itself (``payload.log_index`` keeps it): that counts logs across the whole block,
so a reorg that kept a transaction but moved it within the block gave its token transfers new
ids, and they were counted twice.  A re-published block (a restart, or a reorg that kept the
transaction, wherever in the block) yields the same ids, as long as the transaction emits the
same logs; re-executed differently in its new place, its logs are other events.  A transaction
that a reorg dropped is not retracted: its events stay published, and each event names its
block (``block_hash``: the log's ``blockHash``, else the record's ``meta["hash"]``), by which a
consumer tells the events of a replaced block.

Bad input (not JSON, a missing field, malformed hex, hashes-only transactions) raises
:class:`~vigil.errors.ContractError` naming the record and the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, TypeVar

import msgspec

from vigil.errors import ContractError, DecodeError
from vigil.events.base import Entities, Event
from vigil.events.types import TokenApproval, TokenApprovalPayload
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer
from vigil.sources.chain_normalize import ZERO_ADDRESS, block_time, chain_transfer, decode_record, event_id
from vigil.sources.ethereum import APPROVAL_FOR_ALL_TOPIC, APPROVAL_TOPIC, LOG_TOPICS, TRANSFER_TOPIC

T = TypeVar("T")

UNLIMITED = 2**255
NATIVE_DECIMALS = 18
DEFAULT_TOKEN_DECIMALS = 18


@dataclass(frozen=True)
class Token:
    symbol: str
    decimals: int


#: Mainnet ERC-20s whose decimals are not 18 or that detection names; addresses lower-case.
#: Only tokens whose address and decimals are certain: any other is asked (the connector's
#: ``decimals()`` call) or assumed, and then marked so.
KNOWN_TOKENS: dict[str, Token] = {
    "0xdac17f958d2ee523a2206206994597c13d831ec7": Token("USDT", 6),
    "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": Token("USDC", 6),
    "0x6b175474e89094c44da98b954eedeac495271d0f": Token("DAI", 18),
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2": Token("WETH", 18),
    "0x2260fac5e5542a773aa44fbcfedf7c193bc2c599": Token("WBTC", 8),
    "0x6c3ea9036406852006290770bedfcaba0e23a0e8": Token("PYUSD", 6),
    "0x1abaea1f7c830bd89acc67ec4af516284b1bc33c": Token("EURC", 6),
    "0x056fd409e1d7a124bd7017459dfea2f387b6d5cd": Token("GUSD", 2),
}
#: The most decimals a token may state (``decimals()`` returns a uint8).
MAX_TOKEN_DECIMALS = 255

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


class _Tx(msgspec.Struct, gc=False):
    hash: str
    sender: str = msgspec.field(name="from")
    value: str
    to: str | None = None


class _Block(msgspec.Struct, gc=False):
    number: str
    hash: str
    timestamp: str
    transactions: list[_Tx | str]


class _Log(msgspec.Struct, gc=False):
    address: str
    topics: list[str]
    data: str
    transactionHash: str
    logIndex: str
    blockNumber: str
    #: (null from some providers: taken as false, the log stands.)
    removed: bool | None = False
    blockTimestamp: str | None = None
    blockHash: str | None = None


_block_decoder = msgspec.json.Decoder(_Block)
_logs_decoder = msgspec.json.Decoder(list[_Log])


def _where(record: RawRecord) -> str:
    """The record as error messages name it (built only for an error)."""
    return f"raw.ethereum {record.kind} (key {record.key!r})"


def _decode(decoder: msgspec.json.Decoder[T], record: RawRecord) -> T:
    try:
        return decoder.decode(record.value)
    except msgspec.DecodeError:  # ValidationError included: decode again for the error message
        return decode_record(decoder, record.value, _where(record))


def _check(pattern: re.Pattern[str], value: str, what: str, record: RawRecord, path: str) -> str:
    if not pattern.fullmatch(value):
        msg = f"{what} must be {_EXPECTED[pattern]}; got {value[:80]!r}"
        raise DecodeError(msg, where=_where(record), path=path)
    return value.lower()


_EXPECTED = {
    _ADDRESS: "a 0x-prefixed 20-byte hex address",
    _HASH: "a 0x-prefixed 32-byte hex hash",
    _QUANTITY: "a 0x-prefixed hex quantity of at most 256 bits",
    _DATA: "0x-prefixed hex bytes",
}


def _quantity(value: str, what: str, record: RawRecord, path: str) -> int:
    return int(_check(_QUANTITY, value, what, record, path), 16)


# The hot loops below test values with these bound methods and build a JSON path only for a
# value that fails (then ``_check`` raises with the message).  Values that repeat within a
# record (topics, transaction hashes, contracts, block numbers) are checked once per record.
_is_quantity = _QUANTITY.fullmatch
_is_data = _DATA.fullmatch
# Several fields of a block or transaction in one match, joined by newlines: no hex value holds
# one, so this matches exactly when each field matches its own pattern.  When it does not,
# the fields are checked one by one, in order, for the message.
_is_block_head = re.compile(rf"{_QUANTITY.pattern}\n{_QUANTITY.pattern}\n{_HASH.pattern}").fullmatch
_is_tx = re.compile(rf"{_QUANTITY.pattern}\n{_HASH.pattern}\n{_ADDRESS.pattern}").fullmatch

#: ``meta`` without ``failed_txs``: every transaction succeeded.
_ABSENT = object()
_NONE_FAILED: frozenset[str] = frozenset()

#: The signatures the log filter compares with, checked already: seeds each record's hash cache.
_SIGNATURES = {t: t for t in LOG_TOPICS}


def _token_decimals(record: RawRecord) -> dict[str, int]:
    """``meta["token_decimals"]`` (contract -> what its ``decimals()`` answered the connector),
    keys lower-cased; ContractError naming it when it is not such a mapping."""
    given = record.meta.get("token_decimals")
    if given is None:
        return {}
    if isinstance(given, dict) and all(
        isinstance(k, str)
        and _ADDRESS.fullmatch(k)
        and isinstance(v, int)
        and not isinstance(v, bool)
        and 0 <= v <= MAX_TOKEN_DECIMALS
        for k, v in given.items()
    ):
        return {k.lower(): v for k, v in given.items()}
    msg = (
        f"{_where(record)}: meta.token_decimals must map token contract addresses to decimals "
        f"from 0 to {MAX_TOKEN_DECIMALS}; got {str(given)[:80]!r}"
    )
    raise ContractError(msg)


def _topics(raw: list[str], hashes: dict[str, str], record: RawRecord, i: int) -> list[str]:
    """``raw`` checked in order and lower-cased, each new one added to ``hashes``."""
    topics = []
    for j, topic in enumerate(raw):
        lowered = hashes.get(topic)
        if lowered is None:
            lowered = hashes[topic] = _check(_HASH, topic, "topic", record, f"$[{i}].topics[{j}]")
        topics.append(lowered)
    return topics


def _log_positions(logs: list[_Log], record: RawRecord) -> tuple[list[int], list[int]]:
    """Each log's ``logIndex``, and its position among the record's logs of its transaction in
    ``logIndex`` order (removed logs left out): what a log's event id is keyed on."""
    indexes = []
    for i, log in enumerate(logs):
        index_hex = log.logIndex
        if _is_quantity(index_hex) is None:
            _check(_QUANTITY, index_hex, "logIndex", record, f"$[{i}].logIndex")
        indexes.append(int(index_hex, 16))
    order: Iterable[int] = range(len(logs))
    if any(a >= b for a, b in pairwise(indexes)):  # nodes list them in order: not relied on
        order = sorted(order, key=indexes.__getitem__)
    positions = [0] * len(logs)
    seen: dict[str, int] = {}
    for i in order:
        log = logs[i]
        if log.removed:
            continue
        tx = log.transactionHash.lower()  # (checked where the log is used)
        positions[i] = position = seen.get(tx, 0)
        seen[tx] = position + 1
    return indexes, positions


class EthereumNormalizer(Normalizer):
    """``raw.ethereum`` records (kinds ``eth_block``, ``eth_logs``) -> chain events."""

    source = "ethereum"

    def __init__(self, tokens: Mapping[str, Token] | None = None) -> None:
        self.tokens = {**KNOWN_TOKENS, **{addr.lower(): t for addr, t in (tokens or {}).items()}}

    def normalize(self, record: RawRecord) -> list[Event]:
        if record.kind == "eth_block":
            return self._block(record)
        if record.kind == "eth_logs":
            return self._logs(record)
        msg = f"{_where(record)}: unknown record kind {record.kind!r}; expected 'eth_block' or 'eth_logs'"
        raise ContractError(msg)

    # ------------------------------------------------------------------ native transfers

    def _block(self, record: RawRecord) -> list[Event]:
        block = _decode(_block_decoder, record)
        valid = _is_block_head(f"{block.number}\n{block.timestamp}\n{block.hash}") is not None
        number = int(block.number, 16) if valid else _quantity(block.number, "number", record, "$.number")
        occurred_at = block_time(
            int(block.timestamp, 16)
            if valid
            else _quantity(block.timestamp, "timestamp", record, "$.timestamp"),
            _where(record),
            "$.timestamp",
        )
        if not valid:
            _check(_HASH, block.hash, "hash", record, "$.hash")
        block_hash = block.hash.lower()
        failed_txs = record.meta.get("failed_txs", _ABSENT)
        unknown = failed_txs is _ABSENT
        if unknown:
            failed: Collection[str] = _NONE_FAILED
        elif not isinstance(failed_txs, list) or not all(isinstance(h, str) for h in failed_txs):
            msg = (
                f"{_where(record)}: meta.failed_txs must be a list of transaction hashes; "
                f"got {str(failed_txs)[:80]!r}"
            )
            raise ContractError(msg)
        else:
            failed = {h.lower() for h in failed_txs}
        events: list[Event] = []
        for i, tx in enumerate(block.transactions):
            if isinstance(tx, str):
                msg = "expected full transaction objects (eth_getBlockByNumber(n, true)); got a hash"
                raise DecodeError(msg, where=_where(record), path=f"$.transactions[{i}]")
            value_hex, tx_hash, sender, to = tx.value, tx.hash, tx.sender, tx.to
            if _is_tx(f"{value_hex}\n{tx_hash}\n{sender}") is None:
                _check(_QUANTITY, value_hex, "value", record, f"$.transactions[{i}].value")
                _check(_HASH, tx_hash, "hash", record, f"$.transactions[{i}].hash")
                _check(_ADDRESS, sender, "from", record, f"$.transactions[{i}].from")
            value = int(value_hex, 16)
            if value == 0 or to is None:
                continue
            tx_hash = tx_hash.lower()
            if tx_hash in failed:
                continue
            sender = sender.lower()
            events.append(
                chain_transfer(
                    record,
                    chain="ethereum",
                    tx_hash=tx_hash,
                    part="native",
                    occurred_at=occurred_at,
                    block_number=number,
                    from_address=sender,
                    wallet=sender,
                    to_address=_check(_ADDRESS, to, "to", record, f"$.transactions[{i}].to"),
                    asset="ETH",
                    value_raw=value,
                    decimals=NATIVE_DECIMALS,
                    block_hash=block_hash,
                    success_unknown=unknown,
                )
            )
        return events

    # ------------------------------------------------------------------ ERC-20 logs

    def _logs(self, record: RawRecord) -> list[Event]:
        logs = _decode(_logs_decoder, record)
        fallback_ts: Any = record.meta.get("block_timestamp")
        fallback_hash: Any = record.meta.get("hash")
        if not (isinstance(fallback_hash, str) and _HASH.fullmatch(fallback_hash)):
            fallback_hash = None
        else:
            fallback_hash = fallback_hash.lower()
        tokens = self.tokens
        asked = _token_decimals(record)
        # Checked values of this record, as given -> as used (lower-case hex, or the quantity).
        hashes = dict(_SIGNATURES)
        addresses: dict[str, str] = {}
        quantities: dict[str, int] = {}
        times: dict[int, datetime] = {}
        events: list[Event] = []
        indexes, positions = _log_positions(logs, record)
        for i, log in enumerate(logs):
            if log.removed:
                continue
            topics = [hashes.get(t, "") for t in log.topics]
            if "" in topics:
                topics = _topics(log.topics, hashes, record, i)
            if not topics:
                continue
            signature = topics[0]
            if signature not in _SIGNATURES:
                continue
            data = log.data
            if _is_data(data) is None:
                _check(_DATA, data, "data", record, f"$[{i}].data")
            n_topics = len(topics)
            data = data[2:].lower()
            nft = n_topics == 4
            if nft:
                # ERC-721: the third indexed topic is a token id, not an amount.  Only a
                # single-token approval is kept, and only in its standard layout (no data).
                if signature != APPROVAL_TOPIC or data:
                    continue
            # Three parameters: the indexed topics after the signature, then the data's 32-byte
            # words (the last one possibly short).  Only the amount can be a short word.
            elif n_topics + (len(data) + 63) // 64 != 4:
                continue
            if nft:
                first, second, word = topics[1], topics[2], topics[3]
            elif n_topics == 3:
                first, second, word = topics[1], topics[2], data
            elif n_topics == 2:
                first, second, word = topics[1], data[:64], data[64:]
            else:
                first, second, word = data[:64], data[64:128], data[128:]
            address = log.address
            contract = addresses.get(address)
            if contract is None:
                contract = addresses[address] = _check(
                    _ADDRESS, address, "address", record, f"$[{i}].address"
                )
            tx_hash = hashes.get(log.transactionHash)
            if tx_hash is None:
                tx_hash = hashes[log.transactionHash] = _check(
                    _HASH, log.transactionHash, "transactionHash", record, f"$[{i}].transactionHash"
                )
            log_index = indexes[i]
            number = quantities.get(log.blockNumber)
            if number is None:
                number = quantities[log.blockNumber] = _quantity(
                    log.blockNumber, "blockNumber", record, f"$[{i}].blockNumber"
                )
            if log.blockTimestamp is not None:
                ts = quantities.get(log.blockTimestamp)
                if ts is None:
                    ts = quantities[log.blockTimestamp] = _quantity(
                        log.blockTimestamp, "blockTimestamp", record, f"$[{i}].blockTimestamp"
                    )
            elif isinstance(fallback_ts, int) and not isinstance(fallback_ts, bool):
                ts = fallback_ts
            else:
                msg = "no block time: the log has no blockTimestamp and meta has no integer block_timestamp"
                raise DecodeError(msg, where=_where(record), path=f"$[{i}].blockTimestamp")
            occurred_at = times.get(ts)
            if occurred_at is None:
                occurred_at = times[ts] = block_time(ts, _where(record), f"$[{i}].blockTimestamp")
            block_hash = fallback_hash
            if log.blockHash is not None:
                block_hash = hashes.get(log.blockHash)
                if block_hash is None:
                    block_hash = hashes[log.blockHash] = _check(
                        _HASH, log.blockHash, "blockHash", record, f"$[{i}].blockHash"
                    )
            first, second = "0x" + first[-40:], "0x" + second[-40:]
            amount = int(word, 16)
            token = tokens.get(contract)
            if nft:
                if token is not None:
                    # A known ERC-20 whose Approval indexes its amount too (the same layout):
                    # an amount, or its revocation of a drainer would read as an NFT handed over.
                    nft = False
                elif second == ZERO_ADDRESS:
                    # Cleared (older ERC-721s clear on every transfer): nothing at risk, and
                    # an event per NFT transfer that no rule reads.
                    continue
            asset = token.symbol if token else contract
            if signature == TRANSFER_TOPIC:
                decimals = token.decimals if token else asked.get(contract)
                events.append(
                    chain_transfer(
                        record,
                        chain="ethereum",
                        tx_hash=tx_hash,
                        part=positions[i],
                        occurred_at=occurred_at,
                        block_number=number,
                        from_address=first,
                        wallet=first,
                        to_address=second,
                        asset=asset,
                        value_raw=amount,
                        decimals=DEFAULT_TOKEN_DECIMALS if decimals is None else decimals,
                        log_index=log_index,
                        token_contract=contract,
                        block_hash=block_hash,
                        decimals_assumed=decimals is None,
                    )
                )
            else:
                for_all = signature == APPROVAL_FOR_ALL_TOPIC
                if for_all and amount > 1:
                    continue  # not a bool: some other contract's event of that name
                token_id = None
                if nft:
                    token_id, amount = amount, 1  # one token
                events.append(
                    TokenApproval(
                        event_id=event_id("token_approval", "ethereum", tx_hash, positions[i]),
                        source="ethereum",
                        occurred_at=occurred_at,
                        ingested_at=record.received_at,
                        # (The zero address as spender is no one.)
                        entities=Entities(
                            wallet=first, counterparty=None if second == ZERO_ADDRESS else second
                        ),
                        payload=TokenApprovalPayload(
                            chain="ethereum",
                            tx_hash=tx_hash,
                            log_index=log_index,
                            block_number=number,
                            owner=first,
                            spender=second,
                            token_contract=contract,
                            asset=asset,
                            amount_raw=amount,
                            unlimited=amount == 1 if for_all else (not nft and amount >= UNLIMITED),
                            kind="set_approval_for_all" if for_all else ("approve_nft" if nft else "approve"),
                            token_id=token_id,
                            block_hash=block_hash,
                        ),
                    )
                )
        return events
