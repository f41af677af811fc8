"""The Ethereum connector behind a load balancer whose nodes do not all have the newest blocks.

Two real anvil nodes hold one chain (same genesis, blocks mined alike, hence the same hashes);
the second stops early: a node lagging the first.  A real HTTP load balancer in front of them
(tests/integration/sources/split_rpc.py) sends the calls *by hash* (``eth_getLogs`` with a
``blockHash``, ``eth_getBlockReceipts``) to the lagging node and the rest to the first, so the
connector learns of a block from one node and asks another for its logs or receipts, which
answers "unknown block" (-32000) or null.  The sink is the in-memory one: Kafka is not the point.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from tests.integration.sources.anvil import ANVIL_CHAIN_ID, Anvil
from tests.integration.sources.split_rpc import SplitRpc
from tests.loopback import ErrorNode
from tests.paced import PacedRun

from vigil.errors import Retry, SourceError
from vigil.sources.ethereum import EthereumSource
from vigil.sources.sink import MemorySink

GENESIS_TS = 1_700_000_000
FAST = timedelta(milliseconds=50)
BY_HASH = ["eth_getLogs", "eth_getBlockReceipts"]


@pytest.fixture
def nodes() -> Iterator[tuple[Anvil, Anvil]]:
    """Two nodes of one chain: the first at block 5, the second lagging at block 3."""
    with Anvil(genesis_timestamp=GENESIS_TS) as first, Anvil(genesis_timestamp=GENESIS_TS) as second:
        for node in (first, second):
            node.mine_spaced(3)
        first.mine_spaced(2)
        assert (first.block_number(), second.block_number()) == (5, 3)
        assert _hash(first, 3) == _hash(second, 3)  # one chain
        yield first, second


def _hash(node: Anvil, height: int) -> str:
    block_hash: str = node.rpc("eth_getBlockByNumber", hex(height), False)["hash"]
    return block_hash


def _heights(sink: MemorySink) -> list[tuple[str, int]]:
    return [(r.kind, r.meta["number"]) for r in sink.records]


class _Paced(PacedRun, EthereumSource):
    pass


@pytest.mark.parametrize("method", BY_HASH)
def test_a_node_lagging_for_a_block_by_hash_is_waited_for_not_fatal(
    nodes: tuple[Anvil, Anvil], method: str
) -> None:
    # The follower waited out a node with no block *by number*, but re-raised the by-hash call's
    # "unknown block" (or null receipts) since the block was still canonical: run() died.
    first, second = nodes
    sink = MemorySink()
    with SplitRpc(first.url, second.url, {method}) as balancer:
        source = EthereumSource(
            balancer.url, chain_id=ANVIL_CHAIN_ID, confirmations=0, start_block=1, poll_interval=FAST
        )
        try:
            with pytest.raises(
                Retry, match=f"node lagging: {method} at {balancer.url} has no block 4 "
            ) as info:
                source.poll(sink)
            assert info.value.after == FAST
            assert _hash(first, 4) in str(info.value)
            # What was fetched before the block is published (with its cursor), as for a block
            # missing by number: not fetched again and again while the node lags.
            assert _heights(sink) == [(kind, n) for n in (1, 2, 3) for kind in ("eth_block", "eth_logs")]
            assert sink.cursors[source.source_id]["next_block"] == 4

            second.mine_spaced(2)  # it catches up
            assert source.poll(sink) is True
        finally:
            source.close()
    assert _heights(sink) == [(kind, n) for n in (1, 2, 3, 4, 5) for kind in ("eth_block", "eth_logs")]
    assert [r.meta["hash"] for r in sink.records if r.kind == "eth_block"] == [
        _hash(first, n) for n in (1, 2, 3, 4, 5)
    ]
    assert ("eth_getBlockByNumber", "second") not in balancer.served
    assert (method, "second") in balancer.served


@pytest.mark.parametrize("method", BY_HASH)
def test_a_node_lagging_for_ever_stops_the_connector_naming_the_block_and_the_node(
    nodes: tuple[Anvil, Anvil], method: str
) -> None:
    first, second = nodes
    sink = MemorySink()
    with SplitRpc(first.url, second.url, {method}) as balancer:
        # A hosted node's key sits in the path: never shown.
        source = _Paced(
            balancer.url + "/v3/key-SECRET-42",
            chain_id=ANVIL_CHAIN_ID,
            polls=10,
            confirmations=0,
            start_block=1,
            poll_interval=FAST,
        )
        source.max_lag_attempts = 3
        with pytest.raises(SourceError) as info:
            source.run(sink)
    message = str(info.value)
    assert (
        f"{method} at {balancer.url} still has no block 4 ({_hash(first, 4)}) after 3 polls in a row"
        in message
    )
    assert "SECRET" not in message
    assert source.waits == [1.0, 2.0]  # waited out twice (from the floor, doubling), then stopped
    assert _heights(sink) == [(kind, n) for n in (1, 2, 3) for kind in ("eth_block", "eth_logs")]


@pytest.mark.parametrize(
    "said", ["method not found", "the method eth_getBlockReceipts does not exist/is not available"]
)
def test_a_node_without_block_receipts_is_told_by_its_words_whatever_the_code(
    nodes: tuple[Anvil, Anvil], said: str
) -> None:
    # Some providers answer a method they lack with -32000, not JSON-RPC's -32601: "method not
    # found" read as a node lagging ("not found"), waited out for 12 polls and then the node
    # blamed; other words stopped the connector at once.  Either way: the block's receipts are
    # not to be had, failures are read from each transaction's receipt, and on it goes.
    first, _ = nodes
    sink = MemorySink()
    with (
        ErrorNode({"code": -32000, "message": said}) as lacking,
        SplitRpc(first.url, lacking.url, {"eth_getBlockReceipts"}) as balancer,
    ):
        source = EthereumSource(
            balancer.url, chain_id=ANVIL_CHAIN_ID, confirmations=0, start_block=1, poll_interval=FAST
        )
        try:
            assert source.poll(sink) is True
        finally:
            source.close()
    assert _heights(sink)[:2] == [("eth_block", 1), ("eth_logs", 1)]
    assert all(r.meta["failed_txs"] == [] for r in sink.records if r.kind == "eth_block")
    # Asked until RECEIPTS_MISSES answers in a row said so, then not (for RECEIPTS_RETRY_BLOCKS).
    assert [m for m, _ in balancer.served].count("eth_getBlockReceipts") == source.receipts_misses
