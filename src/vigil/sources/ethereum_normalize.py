"""Ethereum raw records -> ``chain_transfer`` and ``token_approval`` events.

- ``eth_block`` (``eth_getBlockByNumber(n, true)``): one ``chain_transfer`` per transaction
  that moves ether (``value > 0``) to an address, except the failed ones the connector
  listed in ``meta["failed_txs"]`` (from the receipts).  A record without that list (a node
  without ``eth_getBlockReceipts``) is read as if every transaction succeeded.  Not
  covered, because the block does not say: ether moved by contracts (internal transfers,
  needs traces) and value sent with a contract creation (``to`` is null; the new address
  is in the receipt).
- ``eth_logs`` (``eth_getLogs``): ERC-20 ``Transfer`` -> ``chain_transfer`` with its
  ``log_index``; ``Approval`` -> ``token_approval``, ``unlimited`` when the amount is at
  least 2**255 (wallets approve ``2**256 - 1``; some tokens store the allowance minus a
  little, hence the half-range threshold).  A log counts as ERC-20 when its topic 0 is the
  event's signature and its indexed topics plus 32-byte data words make exactly three
  parameters (ethereum-etl's rule, which also admits early tokens that index nothing).
  ERC-721 ``Transfer``/``Approval`` (four topics: the token id is indexed) are skipped,
  where ethereum-etl counts them as token transfers: their "amount" is a token id.
  Other layouts are skipped too, not rejected.

Amounts: ``value_raw`` is the exact integer; ``amount`` divides by the token's decimals,
known for the tokens in :data:`KNOWN_TOKENS` (mainnet USDT, USDC, DAI, WETH) or passed to
the normaliser, and **assumed 18 otherwise** (a token's ``decimals()`` is a contract call
the raw record does not carry).  Unknown tokens are named by their contract address in
``asset``.

Event ids derive from ``ethereum`` + transaction hash + log index (``native`` for ether),
so a re-published block (a restart, or a reorg that kept the transaction) yields the same
ids.  A transaction that a reorg dropped is not retracted: its events stay published.

Bad input (not JSON, a missing field, malformed hex, hashes-only transactions) raises
:class:`~vigil.errors.ContractError` naming the record and the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from vigil.errors import ContractError, DecodeError
from vigil.events.base import Entities, Event
from vigil.events.ids import stable_id
from vigil.events.types import TokenApproval, TokenApprovalPayload
from vigil.hub.raw import RawRecord
from vigil.sources.base import Normalizer
from vigil.sources.chain_normalize import chain_transfer, decode_record
from vigil.sources.ethereum import APPROVAL_TOPIC, TRANSFER_TOPIC

UNLIMITED = 2**255
NATIVE_DECIMALS = 18
DEFAULT_TOKEN_DECIMALS = 18


@dataclass(frozen=True)
class Token:
    symbol: str
    decimals: int


#: Mainnet ERC-20s whose decimals are not 18 or that detection names; addresses lower-case.
KNOWN_TOKENS: dict[str, Token] = {
    "0xdac17f958d2ee523a2206206994597c13d831ec7": Token("USDT", 6),
    "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48": Token("USDC", 6),
    "0x6b175474e89094c44da98b954eedeac495271d0f": Token("DAI", 18),
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2": Token("WETH", 18),
}

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


class _Tx(msgspec.Struct):
    hash: str
    sender: str = msgspec.field(name="from")
    value: str
    to: str | None = None


class _Block(msgspec.Struct):
    number: str
    hash: str
    timestamp: str
    transactions: list[_Tx | str]


class _Log(msgspec.Struct):
    address: str
    topics: list[str]
    data: str
    transactionHash: str
    logIndex: str
    blockNumber: str
    removed: bool = False
    blockTimestamp: str | None = None


_block_decoder = msgspec.json.Decoder(_Block)
_logs_decoder = msgspec.json.Decoder(list[_Log])


def _check(pattern: re.Pattern[str], value: str, what: str, where: str, path: str) -> str:
    if not pattern.fullmatch(value):
        msg = f"{what} must be {_EXPECTED[pattern]}; got {value[:80]!r}"
        raise DecodeError(msg, where=where, path=path)
    return value.lower()


_EXPECTED = {
    _ADDRESS: "a 0x-prefixed 20-byte hex address",
    _HASH: "a 0x-prefixed 32-byte hex hash",
    _QUANTITY: "a 0x-prefixed hex quantity of at most 256 bits",
    _DATA: "0x-prefixed hex bytes",
}


def _quantity(value: str, what: str, where: str, path: str) -> int:
    return int(_check(_QUANTITY, value, what, where, path), 16)


class EthereumNormalizer(Normalizer):
    """``raw.ethereum`` records (kinds ``eth_block``, ``eth_logs``) -> chain events."""

    source = "ethereum"

    def __init__(self, tokens: Mapping[str, Token] | None = None) -> None:
        self.tokens = {**KNOWN_TOKENS, **{addr.lower(): t for addr, t in (tokens or {}).items()}}

    def normalize(self, record: RawRecord) -> list[Event]:
        where = f"raw.ethereum {record.kind} (key {record.key!r})"
        if record.kind == "eth_block":
            return self._block(record, where)
        if record.kind == "eth_logs":
            return self._logs(record, where)
        msg = f"{where}: unknown record kind {record.kind!r}; expected 'eth_block' or 'eth_logs'"
        raise ContractError(msg)

    # ------------------------------------------------------------------ native transfers

    def _block(self, record: RawRecord, where: str) -> list[Event]:
        block = decode_record(_block_decoder, record.value, where)
        number = _quantity(block.number, "number", where, "$.number")
        occurred_at = datetime.fromtimestamp(
            _quantity(block.timestamp, "timestamp", where, "$.timestamp"), UTC
        )
        _check(_HASH, block.hash, "hash", where, "$.hash")
        failed_txs = record.meta.get("failed_txs", [])
        if not isinstance(failed_txs, list) or not all(isinstance(h, str) for h in failed_txs):
            msg = (
                f"{where}: meta.failed_txs must be a list of transaction hashes; got {str(failed_txs)[:80]!r}"
            )
            raise ContractError(msg)
        failed = {h.lower() for h in failed_txs}
        events: list[Event] = []
        for i, tx in enumerate(block.transactions):
            path = f"$.transactions[{i}]"
            if isinstance(tx, str):
                msg = "expected full transaction objects (eth_getBlockByNumber(n, true)); got a hash"
                raise DecodeError(msg, where=where, path=path)
            value = _quantity(tx.value, "value", where, f"{path}.value")
            tx_hash = _check(_HASH, tx.hash, "hash", where, f"{path}.hash")
            sender = _check(_ADDRESS, tx.sender, "from", where, f"{path}.from")
            if value == 0 or tx.to is None or tx_hash in failed:
                continue
            to = _check(_ADDRESS, tx.to, "to", where, f"{path}.to")
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
                    to_address=to,
                    asset="ETH",
                    value_raw=value,
                    decimals=NATIVE_DECIMALS,
                )
            )
        return events

    # ------------------------------------------------------------------ ERC-20 logs

    def _logs(self, record: RawRecord, where: str) -> list[Event]:
        logs = decode_record(_logs_decoder, record.value, where)
        fallback_ts: Any = record.meta.get("block_timestamp")
        events: list[Event] = []
        for i, log in enumerate(logs):
            path = f"$[{i}]"
            if log.removed:
                continue
            topics = [
                _check(_HASH, t, "topic", where, f"{path}.topics[{j}]") for j, t in enumerate(log.topics)
            ]
            if not topics or topics[0] not in (TRANSFER_TOPIC, APPROVAL_TOPIC):
                continue
            data = _check(_DATA, log.data, "data", where, f"{path}.data")[2:]
            if len(topics) == 4:
                continue  # ERC-721: the third indexed topic is a token id, not an amount
            words = topics[1:] + [data[k : k + 64] for k in range(0, len(data), 64)]
            if len(words) != 3 or len(words[0]) < 40 or len(words[1]) < 40:
                continue
            contract = _check(_ADDRESS, log.address, "address", where, f"{path}.address")
            tx_hash = _check(_HASH, log.transactionHash, "transactionHash", where, f"{path}.transactionHash")
            log_index = _quantity(log.logIndex, "logIndex", where, f"{path}.logIndex")
            number = _quantity(log.blockNumber, "blockNumber", where, f"{path}.blockNumber")
            if log.blockTimestamp is not None:
                ts = _quantity(log.blockTimestamp, "blockTimestamp", where, f"{path}.blockTimestamp")
            elif isinstance(fallback_ts, int) and not isinstance(fallback_ts, bool):
                ts = fallback_ts
            else:
                msg = "no block time: the log has no blockTimestamp and meta has no integer block_timestamp"
                raise DecodeError(msg, where=where, path=f"{path}.blockTimestamp")
            occurred_at = datetime.fromtimestamp(ts, UTC)
            first, second = ("0x" + words[0][-40:]), ("0x" + words[1][-40:])
            amount = int(words[2], 16) if words[2] else 0
            token = self.tokens.get(contract)
            asset = token.symbol if token else contract
            if topics[0] == TRANSFER_TOPIC:
                decimals = token.decimals if token else DEFAULT_TOKEN_DECIMALS
                events.append(
                    chain_transfer(
                        record,
                        chain="ethereum",
                        tx_hash=tx_hash,
                        part=log_index,
                        occurred_at=occurred_at,
                        block_number=number,
                        from_address=first,
                        wallet=first,
                        to_address=second,
                        asset=asset,
                        value_raw=amount,
                        decimals=decimals,
                        log_index=log_index,
                        token_contract=contract,
                    )
                )
            else:
                events.append(
                    TokenApproval(
                        event_id=stable_id("token_approval", "ethereum", tx_hash, log_index),
                        source="ethereum",
                        occurred_at=occurred_at,
                        ingested_at=record.received_at,
                        entities=Entities(wallet=first, counterparty=second),
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
                            unlimited=amount >= UNLIMITED,
                        ),
                    )
                )
        return events
