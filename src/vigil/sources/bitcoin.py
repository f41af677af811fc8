"""Bitcoin Core connector: confirmed blocks with full transaction detail.

For each height up to ``getblockcount - confirmations`` it calls ``getblockhash`` then
``getblock <hash> 2`` and publishes the ``result`` unchanged to ``raw.bitcoin`` as kind
``btc_block``, keyed by the decimal height (reorg replacements share the key, hence the
partition), with ``meta`` ``{"height", "hash"}`` and ``"reorg": true`` on replacements.
The cursor is ``{"next_height": n + 1, "hash": <hash of n>, "recent": [...]}``; see
:mod:`vigil.sources.chain` for resume and reorg handling.

Verbosity 2 gives inputs as ``txid:vout`` references; Bitcoin Core adds the spent output
(``prevout``, with its address and value) only from version 25 at verbosity 3.  Pass
``verbosity=3`` to a node that supports it and the normaliser resolves input addresses.

The node must serve the network ``network`` (``getblockchaininfo``'s ``chain``: ``main``,
``test``, ``testnet4``, ``signet`` or ``regtest``; checked at the first poll and kept in the
cursor): a testnet node's blocks were published as ``bitcoin``, testnet addresses and all.

Options for ``vigil source bitcoin`` (:meth:`BitcoinSource.from_settings`): ``url``
(default ``http://127.0.0.1:8332``), ``rpc_user`` and ``rpc_password`` (HTTP basic auth; by
default the settings ``bitcoin_rpc_user`` and ``bitcoin_rpc_password``, from
``VIGIL_BITCOIN_RPC_USER`` and ``VIGIL_BITCOIN_RPC_PASSWORD`` or vigil.toml: a password on a
command line shows in the process list and the shell's history), ``confirmations`` (default
6), ``start_height`` (default: the confirmed head), ``verbosity`` (2 or 3, default 2),
``poll_interval`` seconds (default 10, at most 3600), ``network`` (default ``main``),
``source_id``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vigil.config import Settings
from vigil.errors import ConfigError, Retry, SourceError
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
from vigil.sources.jsonrpc import JsonRpcClient, JsonRpcError

#: Bitcoin Core's RPC_INVALID_PARAMETER: "Block height out of range".
_OUT_OF_RANGE = -8
#: Bitcoin Core's RPC_INVALID_ADDRESS_OR_KEY, which ``getblock`` answers as "Block not found".
_NOT_FOUND = -5
_BLOCK_HASH = re.compile(r"[0-9a-f]{64}")
#: The networks Bitcoin Core names in ``getblockchaininfo``'s ``chain``.
NETWORKS = ("main", "test", "testnet4", "signet", "regtest")


class _Header(msgspec.Struct):
    hash: str
    height: int
    previousblockhash: str | None = None  # absent on the genesis block only


_header = msgspec.json.Decoder(_Header)


class _ChainInfo(msgspec.Struct):
    chain: str


_chain_info = msgspec.json.Decoder(_ChainInfo)


class BitcoinSource(ChainFollower):
    name = "bitcoin"
    cursor_field = "next_height"
    start_option = "start_height"
    network_option = "network"

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        source_id: str | None = None,
        confirmations: int = 6,
        start_height: int | None = None,
        verbosity: int = 2,
        poll_interval: timedelta = timedelta(seconds=10),
        window: int = 64,
        batch_blocks: int = 20,
        network: str = "main",
    ) -> None:
        super().__init__(
            source_id=source_id,
            confirmations=confirmations,
            start=start_height,
            poll_interval=poll_interval,
            window=window,
            batch_blocks=batch_blocks,
        )
        if verbosity not in (2, 3):
            msg = f"bitcoin source: verbosity must be 2 or 3 (transactions with details); got {verbosity}"
            raise ValueError(msg)
        if network not in NETWORKS:
            msg = f"bitcoin source: option network must be one of {', '.join(NETWORKS)}; got {network[:40]!r}"
            raise ConfigError(msg)
        self.verbosity = verbosity
        self.expected_network = network
        self.rpc = JsonRpcClient(url, auth=auth, setting="bitcoin source: option url")

    @classmethod
    def from_settings(cls, settings: Settings, **options: str) -> BitcoinSource:
        """Build from CLI options (all strings); see the module docstring for the list."""
        known = {
            "url",
            "rpc_user",
            "rpc_password",
            "confirmations",
            "start_height",
            "verbosity",
            "poll_interval",
            "network",
            "source_id",
        }
        check_options("bitcoin source", options, known, ConfigError)
        configured = settings.bitcoin_rpc_password
        user = options.get("rpc_user") or settings.bitcoin_rpc_user or None
        password = (
            options.get("rpc_password")
            or (configured.get_secret_value() if configured is not None else None)
            or None
        )
        if (user is None) != (password is None):
            msg = (
                "bitcoin source: rpc_user and rpc_password go together (options, or the settings "
                "VIGIL_BITCOIN_RPC_USER and VIGIL_BITCOIN_RPC_PASSWORD); got only one of them"
            )
            raise ConfigError(msg)
        seconds = number_option("bitcoin", options, "poll_interval", "10", float, high=MAX_POLL_INTERVAL_S)
        return cls(
            options.get("url", "http://127.0.0.1:8332"),
            auth=(user, password) if user is not None and password is not None else None,
            source_id=options.get("source_id"),
            confirmations=number_option(
                "bitcoin", options, "confirmations", "6", int, high=MAX_CONFIRMATIONS
            ),
            start_height=number_option("bitcoin", options, "start_height", None, int, high=MAX_HEIGHT),
            verbosity=number_option("bitcoin", options, "verbosity", "2", int, low=2, high=3),
            poll_interval=timedelta(seconds=seconds),
            network=options.get("network", "main"),
        )

    def close(self) -> None:
        self.rpc.close()

    def where(self) -> str:
        return self.rpc.endpoint

    def network(self) -> str:
        raw = self.rpc.call_raw("getblockchaininfo")
        try:
            return _chain_info.decode(raw).chain
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"getblockchaininfo at {self.rpc.endpoint}: expected an object with a `chain` string: {exc}"
            raise SourceError(msg) from None

    def head(self) -> int:
        count = self.rpc.call("getblockcount")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            msg = f"getblockcount at {self.rpc.endpoint}: expected a non-negative integer, got {count!r}"
            raise SourceError(msg)
        return count

    def hash_at(self, height: int) -> str | None:
        try:
            value: Any = self.rpc.call("getblockhash", [height], about=f"block {height}")
        except JsonRpcError as exc:
            if exc.code == _OUT_OF_RANGE:
                return None
            raise
        if not isinstance(value, str) or not _BLOCK_HASH.fullmatch(value):
            msg = (
                f"getblockhash({height}) at {self.rpc.endpoint}: expected a 64-hex block hash, got {value!r}"
            )
            raise SourceError(msg)
        return value

    def fetch(self, height: int, *, reorg: bool) -> Block | None:
        block_hash = self.hash_at(height)
        if block_hash is None:
            return None
        try:
            raw = self.rpc.call_raw(
                "getblock", [block_hash, self.verbosity], about=f"block {height} ({block_hash})"
            )
        except JsonRpcError as exc:
            if exc.code != _NOT_FOUND:
                raise
            if self.hash_at(height) != block_hash:
                reason = f"block {height} ({block_hash}) was replaced while being fetched"
                raise Retry(self.poll_interval, reason) from None
            # Still canonical, yet unknown to the node that answered: behind a load balancer, a
            # node lagging the one that answered getblockhash.  Re-raised, it stopped the connector.
            raise NodeLagging(
                self.poll_interval,
                height=height,
                block_hash=block_hash,
                where=f"getblock at {self.rpc.endpoint}",
                answer=f"error {exc.code}: {exc.detail}",
            ) from None
        received_at = datetime.now(UTC)
        try:
            header = _header.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            msg = f"getblock({block_hash}) at {self.rpc.endpoint}: unexpected block shape: {exc}"
            raise SourceError(msg) from None
        if header.hash != block_hash or header.height != height:
            msg = (
                f"getblock({block_hash}) at {self.rpc.endpoint}: expected height {height} and that hash, "
                f"got height {header.height} hash {header.hash}"
            )
            raise SourceError(msg)
        parent = header.previousblockhash
        if height > 0 and (parent is None or not _BLOCK_HASH.fullmatch(parent)):
            # Taken as "", it disagreed with the block below: a fork, then "nodes out of step",
            # retried for ever.
            got = parent if parent is None else parent[:80]  # (the node's, of any length)
            msg = (
                f"getblock({block_hash}) at {self.rpc.endpoint}: block {height} must name its parent "
                f"in previousblockhash (a 64-hex hash; only the genesis block has none); got {got!r}"
            )
            raise SourceError(msg)
        meta: dict[str, Any] = {"height": height, "hash": block_hash}
        if reorg:
            meta["reorg"] = True
        record = RawRecord(self.name, "btc_block", raw, received_at, key=str(height).encode(), meta=meta)
        return Block(height=height, hash=block_hash, parent_hash=parent or "", records=[record])
