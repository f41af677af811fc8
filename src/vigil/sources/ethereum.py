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
A node that caps the answer (Infura's -32005 "query returned more than 10000 results") is asked
again for one event at a time, and the answers joined into the one array, each entry as the
node sent it (``meta["logs_by_event"]``); capped even so, the connector stops naming the block.

A block does not say which of its transactions failed (a reverted transaction keeps its
``value`` but moves no ether).  The connector reads the block's receipts
(``eth_getBlockReceipts`` by hash) and lists the failed transaction hashes in the
``eth_block`` record's ``meta["failed_txs"]``; failed transactions emit no logs, so the
``eth_logs`` record needs no such list.  When the node answers that it has no
``eth_getBlockReceipts`` (it is in geth, erigon, nethermind, reth and anvil, but behind a load
balancer one old backend may answer), the list is made from ``eth_getTransactionReceipt`` of
each transaction that carries ether to an address (the only ones the list changes: the
normaliser's native transfers), one call each; after :data:`RECEIPTS_MISSES` such answers in a
row the connector asks that way only, trying ``eth_getBlockReceipts`` again every
:data:`RECEIPTS_RETRY_BLOCKS` blocks.  (One answer switched receipts off for the process's life,
and the normaliser took every transaction of every later block as successful: a reverted 5 ETH
send became a transfer.)  Built with ``receipts=False``, the connector reads no receipts and
the list is left out: the normaliser then marks the native transfers ``success_unknown``.

The ``eth_logs`` record's ``meta["token_decimals"]`` maps the contracts of its ERC-20
``Transfer`` logs to what their ``decimals()`` answers (an ``eth_call`` at the latest block,
remembered for :data:`DECIMALS_CACHE` contracts); a contract that does not answer with a
uint8 is left out, and the normaliser then assumes 18 and says so.

The node must serve the chain ``chain_id`` (``eth_chainId``, checked at the first poll, and kept
in the cursor): anvil's 31337 was published as mainnet ether.

Options for ``vigil source ethereum`` (:meth:`EthereumSource.from_settings`): ``url``
(by default the setting ``ethereum_rpc_url``, from ``VIGIL_ETHEREUM_RPC_URL`` or vigil.toml,
else ``http://127.0.0.1:8545``; hosted nodes put an API key in it, so the setting is the place
for it rather than a command line; it is never printed), ``chain_id`` (default 1, mainnet),
``confirmations`` (default 12), ``start_block`` (default: the current confirmed head),
``poll_interval`` seconds (default 2, at most 3600), ``source_id``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vigil.config import Settings
from vigil.errors import ConfigError, Retry, SourceError
from vigil.events.codec import inert
from vigil.hub.raw import RawRecord
from vigil.sources.base import check_options
from vigil.sources.chain import (
    MAX_CONFIRMATIONS,
    MAX_HEIGHT,
    MAX_POLL_INTERVAL_S,
    Block,
    ChainFollower,
    NodeLagging,
    number_option,
)
from vigil.sources.jsonrpc import JsonRpcClient, JsonRpcError, answer_too_large

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
_EVENT_NAMES = {
    TRANSFER_TOPIC: "Transfer",
    APPROVAL_TOPIC: "Approval",
    APPROVAL_FOR_ALL_TOPIC: "ApprovalForAll",
}

#: Ethereum mainnet's chain id (EIP-155), the ``chain_id`` option's default.
MAINNET_CHAIN_ID = 1
#: "No eth_getBlockReceipts" answers in a row before the connector stops asking for it a while:
#: one answer may be one old backend behind a load balancer, not the node.
RECEIPTS_MISSES = 3
#: Blocks after which a connector that stopped asking for ``eth_getBlockReceipts`` asks again
#: (the backends behind a load balancer change).
RECEIPTS_RETRY_BLOCKS = 100
#: ``decimals()``: the ERC-20 function whose answer scales a token's amounts.
DECIMALS_SELECTOR = "0x313ce567"
#: Token contracts whose ``decimals()`` answer the connector remembers (the least recently seen
#: forgotten first): mainnet blocks bring some dozens each, mostly the same ones.
DECIMALS_CACHE = 4096
#: Contracts whose ``decimals()`` is asked in one block at most (the others' amounts are read
#: with 18 assumed and said so, and asked in a later block): anyone can deploy contracts that
#: emit Transfer events, and each question is a call to the node (found in review, 2026-12-06).
DECIMALS_ASKS_PER_BLOCK = 32
#: The gas one ``decimals()`` call may use: a token's returns a constant (a few hundred gas);
#: a contract made to run until the node's call timeout is cut short.
DECIMALS_GAS = 100_000
#: How a node says the call itself failed, for good (reverted, out of gas, no such function):
#: remembered as no decimals.  Any other error (the node lagging, a proxy's refusal, a rate
#: limit) is not remembered: the contract is asked again at its next block.
_CALL_FAILED = re.compile(
    r"revert|out of gas|gas required exceeds|invalid opcode|invalid jump", re.IGNORECASE
)


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
    blockHash: str | None = None


_receipts = msgspec.json.Decoder(list[_Receipt])
_receipt = msgspec.json.Decoder(_Receipt | None)


class _Tx(msgspec.Struct):
    """What the per-transaction receipts fallback needs of a transaction."""

    hash: str
    value: str = "0x0"
    to: str | None = None


class _Txs(msgspec.Struct):
    transactions: list[_Tx]


_txs = msgspec.json.Decoder(_Txs)


class _LogHead(msgspec.Struct):
    """What the decimals lookup needs of a log."""

    address: str
    topics: list[str]


_log_heads = msgspec.json.Decoder(list[_LogHead])
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_WORD = re.compile(r'"0x[0-9a-fA-F]{64}"')
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
    """``eth_getBlockReceipts`` (or ``eth_getTransactionReceipt``) answered null: the node does not
    know the block hash (or the block's transaction)."""


class EthereumSource(ChainFollower):
    name = "ethereum"
    cursor_field = "next_block"
    start_option = "start_block"
    network_option = "chain_id"
    #: See RECEIPTS_MISSES and RECEIPTS_RETRY_BLOCKS (tests lower them).
    receipts_misses: int = RECEIPTS_MISSES
    receipts_retry_blocks: int = RECEIPTS_RETRY_BLOCKS

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
        chain_id: int = MAINNET_CHAIN_ID,
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
        #: Read receipts to list failed transactions (``meta["failed_txs"]``).
        self.receipts = receipts
        #: "No eth_getBlockReceipts" answers in a row, and the height from which it is asked for.
        self._receipts_misses = 0
        self._block_receipts_from = 0
        self.expected_network = chain_id
        #: Token contract -> its ``decimals()``, or None when it has none (see DECIMALS_CACHE).
        self._decimals: OrderedDict[str, int | None] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> EthereumSource:
        """Build from CLI options (all strings); see the module docstring for the list."""
        known = {"url", "chain_id", "confirmations", "start_block", "poll_interval", "source_id"}
        check_options("ethereum source", options, known, ConfigError)
        configured = settings.ethereum_rpc_url
        seconds = number_option("ethereum", options, "poll_interval", "2", float, high=MAX_POLL_INTERVAL_S)
        return cls(
            options.get("url")
            or (configured.get_secret_value() if configured is not None else None)
            or "http://127.0.0.1:8545",
            source_id=options.get("source_id"),
            chain_id=number_option("ethereum", options, "chain_id", "1", int, low=1, high=2**63 - 1),
            confirmations=number_option(
                "ethereum", options, "confirmations", "12", int, high=MAX_CONFIRMATIONS
            ),
            start_block=number_option("ethereum", options, "start_block", None, int, high=MAX_HEIGHT),
            poll_interval=timedelta(seconds=seconds),
        )

    def close(self) -> None:
        self.rpc.close()

    def where(self) -> str:
        return self.rpc.endpoint

    def network(self) -> int:
        return _quantity(self.rpc.call("eth_chainId"), "eth_chainId result", self.rpc.endpoint)

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
            raw_logs, by_event = self._logs(block_hash, about)
            failed = self._failed_transactions(height, raw_block, block_hash, about)
        except JsonRpcError as exc:
            # A node forgets a block's hash when a reorg replaces it between our calls: that
            # is the chain moving (fetch again next poll), not a broken node.
            if self.hash_at(height) != block_hash:
                reason = f"block {height} ({block_hash}) was replaced while being fetched"
                raise Retry(self.poll_interval, reason) from None
            if isinstance(exc, _BlockUnknown) or (not _no_method(exc) and _UNKNOWN_BLOCK.search(exc.detail)):
                # Still canonical, yet unknown to the node that answered: behind a load balancer,
                # a node lagging the one that named the block.  Re-raised, it stopped the connector.
                answer = (
                    (exc.detail or "null")
                    if isinstance(exc, _BlockUnknown)
                    else f"error {exc.code}: {exc.detail}"
                )
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
        if by_event:
            logs_meta["logs_by_event"] = True
        decimals = self._token_decimals(raw_logs)
        if decimals:
            logs_meta["token_decimals"] = decimals
        block_meta = meta if failed is None else {**meta, "failed_txs": failed}
        records = [
            RawRecord(self.name, "eth_block", raw_block, received_at, key=key, meta=block_meta),
            RawRecord(self.name, "eth_logs", raw_logs, datetime.now(UTC), key=key, meta=logs_meta),
        ]
        return Block(height=height, hash=block_hash, parent_hash=header.parentHash.lower(), records=records)

    def _logs(self, block_hash: str, about: str) -> tuple[bytes, bool]:
        """The block's logs of the events in LOG_TOPICS, and whether they were asked for one event
        at a time (the node capped the answer to all of them at once)."""
        try:
            return self._get_logs(block_hash, list(LOG_TOPICS), about), False
        except JsonRpcError as exc:
            if not answer_too_large(exc):
                raise
        log.warning(
            "%s: %s: eth_getLogs answer capped; asking for one event at a time", self.source_id, about
        )
        parts = []
        for topic in LOG_TOPICS:
            event = _EVENT_NAMES[topic]
            try:
                parts.append(self._get_logs(block_hash, [topic], f"{about}, {event} logs only"))
            except JsonRpcError as exc:
                if not answer_too_large(exc):
                    raise
                msg = (
                    f"{exc}; expected the block's {event} logs, asked for alone after the node capped "
                    "the answer for all the events: this node's eth_getLogs cap is below the block's "
                    "logs (use a node without such a cap)"
                )
                raise JsonRpcError(msg, method=exc.method, code=exc.code, detail=exc.detail) from None
        return _joined_arrays(parts, f"eth_getLogs for {about} at {self.rpc.endpoint}"), True

    def _get_logs(self, block_hash: str, topics: list[str], about: str) -> bytes:
        return self.rpc.call_raw("eth_getLogs", [{"blockHash": block_hash, "topics": [topics]}], about=about)

    def _failed_transactions(
        self, height: int, raw_block: bytes, block_hash: str, about: str
    ) -> list[str] | None:
        """Hashes of the block's failed transactions, or None when built not to read receipts."""
        if not self.receipts:
            return None
        if height < self._block_receipts_from:
            return self._failed_one_by_one(raw_block, block_hash, about)
        try:
            raw = self.rpc.call_raw("eth_getBlockReceipts", [block_hash], about=about)
        except JsonRpcError as exc:
            if not _no_method(exc):
                raise
            self._receipts_misses += 1
            if self._receipts_misses >= self.receipts_misses:
                # (Asked again later: one answer was one backend, and a whole node may be replaced.)
                self._block_receipts_from = height + self.receipts_retry_blocks
                log.warning(
                    "%s: %s answered %d times in a row that it has no eth_getBlockReceipts; failed "
                    "transactions are read from each transaction's receipt, asking for the block's "
                    "again from block %d",
                    self.source_id,
                    self.rpc.endpoint,
                    self._receipts_misses,
                    self._block_receipts_from,
                )
            return self._failed_one_by_one(raw_block, block_hash, about)
        self._receipts_misses = 0
        if raw == b"null":
            msg = f"eth_getBlockReceipts for {about} at {self.rpc.endpoint}: the node does not know the block"
            raise _BlockUnknown(msg, method="eth_getBlockReceipts")
        try:
            receipts = _receipts.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"eth_getBlockReceipts for {about} at {self.rpc.endpoint}: unexpected shape: {exc}"
            raise SourceError(msg) from None
        return [r.transactionHash.lower() for r in receipts if r.status == "0x0"]

    def _failed_one_by_one(self, raw_block: bytes, block_hash: str, about: str) -> list[str]:
        """The failed ones among the block's transactions that carry ether to an address, from
        their receipts one by one (``eth_getTransactionReceipt``, which every node has): the
        others make no native transfer, so whether they failed changes nothing the list is read
        for.  One call per such transaction, at most a block's transactions."""
        try:
            txs = _txs.decode(raw_block).transactions
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"eth_getBlockByNumber for {about} at {self.rpc.endpoint}: unexpected transactions: {exc}"
            raise SourceError(msg) from None
        failed = []
        for tx in txs:
            if tx.to is None or _zero(tx.value):
                continue
            tx_about = f"transaction {tx.hash} of {about}"
            raw = self.rpc.call_raw("eth_getTransactionReceipt", [tx.hash], about=tx_about)
            try:
                receipt = _receipt.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                where = f"eth_getTransactionReceipt for {tx_about} at {self.rpc.endpoint}"
                msg = f"{where}: unexpected shape: {exc}"
                raise SourceError(msg) from None
            if receipt is None or (receipt.blockHash or block_hash).lower() != block_hash:
                # Not (or no longer) in this block for the node that answered: a node lagging the
                # one that named the block, or the block replaced meanwhile (fetch tells which).
                # (The node's text, of any length: shown inert and cut, as the client shows a
                # node's error messages.)
                answer = (
                    "null" if receipt is None else f"a receipt in block {inert(receipt.blockHash or '')[:80]}"
                )
                msg = f"eth_getTransactionReceipt for {tx_about} at {self.rpc.endpoint}: {answer}"
                raise _BlockUnknown(msg, method="eth_getTransactionReceipt", detail=answer)
            if receipt.status == "0x0":
                failed.append(tx.hash.lower())
        return failed

    def _token_decimals(self, raw_logs: bytes) -> dict[str, int]:
        """``decimals()`` of the contracts of the ERC-20 ``Transfer`` logs in ``raw_logs`` that have
        one, asked once per contract (remembered for DECIMALS_CACHE contracts).  Logs the
        connector cannot read are left to the normaliser to refuse."""
        try:
            heads = _log_heads.decode(raw_logs)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return {}
        found: dict[str, int] = {}
        asked = 0
        for head in heads:
            # Three topics or fewer: an ERC-20 Transfer (ERC-721 indexes its token id, a fourth).
            if not head.topics or head.topics[0].lower() != TRANSFER_TOPIC or len(head.topics) > 3:
                continue
            if not _ADDRESS.fullmatch(head.address):
                continue
            contract = head.address.lower()
            if contract in found:
                continue
            if contract in self._decimals:
                self._decimals.move_to_end(contract)
                decimals = self._decimals[contract]
            elif asked >= DECIMALS_ASKS_PER_BLOCK:
                continue  # (asked at a later block of the contract's)
            else:
                asked += 1
                decimals, settled = self._ask_decimals(contract)
                if settled:
                    self._decimals[contract] = decimals
                    if len(self._decimals) > DECIMALS_CACHE:
                        self._decimals.popitem(last=False)
            if decimals is not None:
                found[contract] = decimals
        return found

    def _ask_decimals(self, contract: str) -> tuple[int | None, bool]:
        """The contract's ``decimals()`` at the latest block (not at the block of the log: a node
        that is not an archive has no old state, and a token's decimals do not change), or None
        when it has no such function or answers anything but a uint8; and whether that answer
        is the contract's own, to remember (not an error of the node's or on the way: a
        6-decimal token taken once for one without decimals was read at 18 for the process's
        life, found in review)."""
        call = {"to": contract, "data": DECIMALS_SELECTOR, "gas": hex(DECIMALS_GAS)}
        try:
            raw = self.rpc.call_raw("eth_call", [call, "latest"], about=f"decimals() of {contract}")
        except JsonRpcError as exc:
            settled = exc.code == 3 or _CALL_FAILED.search(exc.detail) is not None
            log.debug("%s: decimals() of %s: %s", self.source_id, contract, exc)
            return None, settled
        if _WORD.fullmatch(raw.decode("ascii", "replace")) is None:
            return None, True
        value = int(raw[3:-1], 16)
        return (value if value <= 255 else None), True

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


def _zero(value: str) -> bool:
    """Whether a transaction's ``value`` is zero (one that is not hex is asked about: the
    normaliser refuses it, naming it)."""
    try:
        return int(value, 16) == 0
    except ValueError:
        return False


def _joined_arrays(parts: list[bytes], where: str) -> bytes:
    """The JSON arrays ``parts`` as one, each entry's bytes as they were."""
    entries = []
    for part in parts:
        text = part.strip()
        if not (text.startswith(b"[") and text.endswith(b"]")):
            msg = f"{where}: expected an array of logs; got {text[:80]!r}"
            raise SourceError(msg)
        inner = text[1:-1].strip()
        if inner:
            entries.append(inner)
    return b"[" + b",".join(entries) + b"]"


def _quantity(value: Any, what: str, where: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    msg = f"{what} from {where}: expected a 0x-prefixed hex quantity, got {json.dumps(value)[:80]}"
    raise SourceError(msg)
