"""Ethereum connector: confirmed blocks with full transactions, and their ERC-20 logs.

For each height up to ``head - confirmations`` it publishes two raw records to
``raw.ethereum``, both keyed by the decimal block number (so every version of a height,
reorg replacements included, lands in one partition, in order):

- kind ``eth_block``: the ``result`` of ``eth_getBlockByNumber(n, true)`` as the node sent it;
- kind ``eth_logs``: the ``result`` of ``eth_getLogs`` for that block's hash, filtered to
  ERC-20 ``Transfer`` and ``Approval``.

Logs are fetched by ``blockHash`` rather than over a height range: a range query may
answer from a different fork than the block fetched a moment before, while a hash names
exactly one block, so a block and its logs always agree.  Log entries carry no block time,
so ``meta`` carries ``block_timestamp`` (with ``number`` and ``hash``) for the normaliser.

A block does not say which of its transactions failed (a reverted transaction keeps its
``value`` but moves no ether).  The connector reads the block's receipts
(``eth_getBlockReceipts`` by hash) and lists the failed transaction hashes in the
``eth_block`` record's ``meta["failed_txs"]``; failed transactions emit no logs, so the
``eth_logs`` record needs no such list.  A node without ``eth_getBlockReceipts`` (it is
in geth, erigon, nethermind, reth and anvil) is detected once and the list is left out.

Options for ``vigil source ethereum`` (:meth:`EthereumSource.from_settings`): ``url``
(by default the setting ``ethereum_rpc_url``, from ``VIGIL_ETHEREUM_RPC_URL`` or vigil.toml,
else ``http://127.0.0.1:8545``; hosted nodes put an API key in it, so the setting is the place
for it rather than a command line; it is never printed), ``confirmations``
(default 12), ``start_block`` (default: the current confirmed head), ``poll_interval``
seconds (default 2), ``source_id``.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vigil.config import Settings
from vigil.errors import ConfigError, Retry, SourceError
from vigil.hub.raw import RawRecord
from vigil.sources.base import check_options
from vigil.sources.chain import Block, ChainFollower, NodeLagging, number_option
from vigil.sources.jsonrpc import JsonRpcClient, JsonRpcError

log = logging.getLogger(__name__)

#: keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
#: keccak256("Approval(address,address,uint256)")
APPROVAL_TOPIC = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
#: keccak256("ApprovalForAll(address,address,bool)"): an NFT (ERC-721/1155) owner lets an operator
#: move every token of the collection, what most NFT drainers ask a victim to sign.
APPROVAL_FOR_ALL_TOPIC = "0x17307eab39ab6107e8899845ad3d59bd9653f200f220920489ca2b5937696c31"
#: The events the connector asks the node for (any of them as topic 0).
LOG_TOPICS = (TRANSFER_TOPIC, APPROVAL_TOPIC, APPROVAL_FOR_ALL_TOPIC)


class _Header(msgspec.Struct):
    """The few block fields the follower itself needs (the record keeps everything)."""

    number: str
    hash: str
    parentHash: str
    timestamp: str


_header = msgspec.json.Decoder(_Header | None)


class _Receipt(msgspec.Struct):
    transactionHash: str
    #: "0x1" success, "0x0" failure; absent before Byzantium (receipts had a state root).
    status: str | None = None


_receipts = msgspec.json.Decoder(list[_Receipt])
_METHOD_NOT_FOUND = -32601
#: How nodes say they do not know a block hash: geth, anvil and reth "unknown block", erigon
#: "block not found", nethermind "... could not be found".  (A pruned node's "history has been
#: pruned" is not among them: that node will never have the block, and stops the connector.)
_UNKNOWN_BLOCK = re.compile(r"unknown block|not found|could not be found", re.IGNORECASE)
#: How nodes say they lack a method, whatever the code: JSON-RPC's is -32601, but some providers
#: answer -32000 "method not found" (read as an unknown block: a node waited out as lagging) or
#: geth's "the method ... does not exist/is not available".
_NO_METHOD = re.compile(
    r"\bmethod\b.*\b(?:not found|does not exist|not available|not supported|unsupported)", re.IGNORECASE
)


def _no_method(exc: JsonRpcError) -> bool:
    """Whether ``exc`` says the node lacks the method called (not the block asked for)."""
    return exc.code == _METHOD_NOT_FOUND or _NO_METHOD.search(exc.detail) is not None


class _BlockUnknown(JsonRpcError):
    """``eth_getBlockReceipts`` answered null: the node does not know the block hash."""


class EthereumSource(ChainFollower):
    name = "ethereum"
    cursor_field = "next_block"
    start_option = "start_block"

    def __init__(
        self,
        url: str,
        *,
        source_id: str | None = None,
        confirmations: int = 12,
        start_block: int | None = None,
        poll_interval: timedelta = timedelta(seconds=2),
        window: int = 64,
        batch_blocks: int = 20,
        receipts: bool = True,
        rpc: JsonRpcClient | None = None,
    ) -> None:
        super().__init__(
            source_id=source_id,
            confirmations=confirmations,
            start=start_block,
            poll_interval=poll_interval,
            window=window,
            batch_blocks=batch_blocks,
        )
        self.rpc = rpc or JsonRpcClient(
            url, setting="ethereum source: option url (or the setting ethereum_rpc_url)"
        )
        #: Read receipts to list failed transactions; switched off if the node lacks the method.
        self.receipts = receipts

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> EthereumSource:
        """Build from CLI options (all strings); see the module docstring for the list."""
        known = {"url", "confirmations", "start_block", "poll_interval", "source_id"}
        check_options("ethereum source", options, known, ConfigError)
        configured = settings.ethereum_rpc_url
        return cls(
            options.get("url")
            or (configured.get_secret_value() if configured is not None else None)
            or "http://127.0.0.1:8545",
            source_id=options.get("source_id"),
            confirmations=number_option("ethereum", options, "confirmations", "12", int),
            start_block=number_option("ethereum", options, "start_block", None, int),
            poll_interval=timedelta(seconds=number_option("ethereum", options, "poll_interval", "2", float)),
        )

    def close(self) -> None:
        self.rpc.close()

    def head(self) -> int:
        value = self.rpc.call("eth_blockNumber")
        return _quantity(value, "eth_blockNumber result", self.rpc.endpoint)

    def hash_at(self, height: int) -> str | None:
        raw = self.rpc.call_raw("eth_getBlockByNumber", [hex(height), False], about=f"block {height}")
        header = self._header(raw, height)
        return None if header is None else header.hash.lower()

    def fetch(self, height: int, *, reorg: bool) -> Block | None:
        raw_block = self.rpc.call_raw("eth_getBlockByNumber", [hex(height), True], about=f"block {height}")
        received_at = datetime.now(UTC)
        header = self._header(raw_block, height)
        if header is None:
            return None
        block_hash = header.hash.lower()
        about = f"block {height} ({block_hash})"
        try:
            raw_logs = self.rpc.call_raw(
                "eth_getLogs",
                [
                    {
                        "blockHash": block_hash,
                        "topics": [list(LOG_TOPICS)],
                    }
                ],
                about=about,
            )
            failed = self._failed_transactions(block_hash, about)
        except JsonRpcError as exc:
            # A node forgets a block's hash when a reorg replaces it between our calls: that
            # is the chain moving (fetch again next poll), not a broken node.
            if self.hash_at(height) != block_hash:
                reason = f"block {height} ({block_hash}) was replaced while being fetched"
                raise Retry(self.poll_interval, reason) from None
            if isinstance(exc, _BlockUnknown) or (not _no_method(exc) and _UNKNOWN_BLOCK.search(exc.detail)):
                # Still canonical, yet unknown to the node that answered: behind a load balancer,
                # a node lagging the one that named the block.  Re-raised, it stopped the connector.
                answer = "null" if isinstance(exc, _BlockUnknown) else f"error {exc.code}: {exc.detail}"
                raise NodeLagging(
                    self.poll_interval,
                    height=height,
                    block_hash=block_hash,
                    where=f"{exc.method} at {self.rpc.endpoint}",
                    answer=answer,
                ) from None
            raise
        key = str(height).encode()
        meta: dict[str, Any] = {"number": height, "hash": block_hash}
        if reorg:
            meta["reorg"] = True
        logs_meta = {**meta, "block_timestamp": _quantity(header.timestamp, "timestamp", self.rpc.endpoint)}
        block_meta = meta if failed is None else {**meta, "failed_txs": failed}
        records = [
            RawRecord(self.name, "eth_block", raw_block, received_at, key=key, meta=block_meta),
            RawRecord(self.name, "eth_logs", raw_logs, datetime.now(UTC), key=key, meta=logs_meta),
        ]
        return Block(height=height, hash=block_hash, parent_hash=header.parentHash.lower(), records=records)

    def _failed_transactions(self, block_hash: str, about: str) -> list[str] | None:
        """Hashes of the block's failed transactions, or None when the node cannot say."""
        if not self.receipts:
            return None
        try:
            raw = self.rpc.call_raw("eth_getBlockReceipts", [block_hash], about=about)
        except JsonRpcError as exc:
            if not _no_method(exc):
                raise
            log.warning(
                "%s: %s has no eth_getBlockReceipts; failed transactions are not marked",
                self.source_id,
                self.rpc.endpoint,
            )
            self.receipts = False
            return None
        if raw == b"null":
            msg = f"eth_getBlockReceipts for {about} at {self.rpc.endpoint}: the node does not know the block"
            raise _BlockUnknown(msg, method="eth_getBlockReceipts")
        try:
            receipts = _receipts.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"eth_getBlockReceipts for {about} at {self.rpc.endpoint}: unexpected shape: {exc}"
            raise SourceError(msg) from None
        return [r.transactionHash.lower() for r in receipts if r.status == "0x0"]

    def _header(self, raw: bytes, height: int) -> _Header | None:
        try:
            header = _header.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"eth_getBlockByNumber({height}) at {self.rpc.endpoint}: unexpected block shape: {exc}"
            raise SourceError(msg) from None
        if header is not None and _quantity(header.number, "number", self.rpc.endpoint) != height:
            msg = f"eth_getBlockByNumber({height}) at {self.rpc.endpoint} returned block {header.number}"
            raise SourceError(msg)
        return header


def _quantity(value: Any, what: str, where: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    msg = f"{what} from {where}: expected a 0x-prefixed hex quantity, got {json.dumps(value)[:80]}"
    raise SourceError(msg)
