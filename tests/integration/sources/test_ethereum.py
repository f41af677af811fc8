"""The Ethereum connector against a real node (anvil) and a real broker.

The test deploys a real ERC-20 (tests/fixtures/erc20, compiled by solc-js), sends real
transactions from anvil's unlocked dev accounts, runs the connector into Kafka through
the transactional sink, reads the raw topic back and normalises it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.integration.sources.anvil import ANVIL_CHAIN_ID, DEV_ACCOUNTS, Anvil, RpcProxy
from tests.integration.sources.chain_kafka import START_S, make_raw_topic, read_raw, stored_cursor, wait_for

from vigil.config import Settings
from vigil.errors import SourceError
from vigil.events.types import ChainTransfer, TokenApproval
from vigil.hub.raw import RawRecord
from vigil.sources.ethereum import EthereumSource
from vigil.sources.ethereum_normalize import EthereumNormalizer, Token
from vigil.sources.jsonrpc import JsonRpcError
from vigil.sources.sink import SOURCE_TXN_TIMEOUT_S, KafkaRawSink, MemorySink

REPO = Path(__file__).resolve().parents[3]
ARTIFACT = json.loads((REPO / "tests" / "fixtures" / "erc20" / "VigilTestToken.json").read_text())
ALICE, BOB, CAROL = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]
MAX_UINT = 2**256 - 1
FAST = timedelta(milliseconds=50)


def _word(value: int | str) -> str:
    return format(int(value, 16) if isinstance(value, str) else value, "064x")


def _call_data(signature: str, *args: int | str) -> str:
    selector: str = ARTIFACT["selectors"][signature]
    return selector + "".join(_word(a) for a in args)


def deploy_token(node: Anvil, supply: int) -> str:
    tx = node.send(ALICE, None, data=ARTIFACT["bytecode"] + _word(supply))
    address: str = node.receipt(tx)["contractAddress"]
    return address.lower()


@pytest.fixture
def node() -> Iterator[Anvil]:
    with Anvil() as anvil:
        yield anvil


def _sink(settings: Settings, topic: str) -> tuple[KafkaRawSink, str]:
    source_id = f"eth-test-{uuid.uuid4().hex[:8]}"
    return KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: topic), source_id


def _normalise(records: list[RawRecord], token: str) -> list[Any]:
    """Events as Any: the tests read payload fields common to transfers and approvals."""
    normalizer = EthereumNormalizer({token: Token("VTT", 6)})
    return [e for r in records for e in normalizer.normalize(r)]


def test_blocks_transfers_and_approvals_flow_through_kafka(node: Anvil, settings: Settings) -> None:
    token = deploy_token(node, 1_000_000 * 10**6)
    native_tx = node.send(ALICE, BOB, value=10**18)
    transfer_tx = node.send(ALICE, token, data=_call_data("transfer(address,uint256)", BOB, 2_500_000))
    approve_tx = node.send(ALICE, token, data=_call_data("approve(address,uint256)", BOB, MAX_UINT))
    pull_tx = node.send(
        BOB, token, data=_call_data("transferFrom(address,address,uint256)", ALICE, CAROL, 7 * 10**6)
    )
    for tx in (native_tx, transfer_tx, approve_tx, pull_tx):
        assert node.receipt(tx)["status"] == "0x1"
    # Ether sent to the token reverts (no payable function): mined, value kept in the block, nothing moved.
    failed_tx = node.send(ALICE, token, value=3 * 10**18, gas=100_000)
    assert node.receipt(failed_tx)["status"] == "0x0"
    node.mine(2)  # two confirmations on top of the last transaction
    head = node.block_number()

    topic = make_raw_topic(settings, "ethereum")
    sink, source_id = _sink(settings, topic)
    source = EthereumSource(
        node.url,
        chain_id=ANVIL_CHAIN_ID,
        source_id=source_id,
        confirmations=2,
        start_block=0,
        poll_interval=FAST,
    )
    try:
        assert source.poll(sink) is True
    finally:
        source.close()
        sink.close()

    records = read_raw(settings, topic, "ethereum")
    confirmed = head - 2
    keys = Counter((r.kind, int(r.key or b"-1")) for r in records)
    assert set(keys) == {(kind, n) for kind in ("eth_block", "eth_logs") for n in range(confirmed + 1)}
    assert set(keys.values()) == {1}
    cursor = stored_cursor(settings, source_id, confirmed + 1, "next_block")
    assert cursor == source.cursor(source.state)  # type: ignore[arg-type]
    assert (
        cursor["hash"]
        == json.loads(next(r.value for r in records if r.key == str(confirmed).encode()))["hash"]
    )

    (failed_block,) = [r for r in records if r.kind == "eth_block" and r.meta.get("failed_txs")]
    assert failed_block.meta["failed_txs"] == [failed_tx]
    assert failed_tx in {tx["hash"] for tx in json.loads(failed_block.value)["transactions"]}

    events = _normalise(records, token)
    native = [e for e in events if isinstance(e, ChainTransfer) and e.payload.asset == "ETH"]
    assert [
        (e.payload.tx_hash, e.entities.wallet, e.entities.counterparty, e.payload.amount) for e in native
    ] == [(native_tx, ALICE, BOB, 1.0)]
    tokens = sorted(
        ((e.payload.from_address, e.payload.to_address, e.payload.amount, e.payload.tx_hash)
         for e in events if isinstance(e, ChainTransfer) and e.payload.asset == "VTT"),
        key=lambda t: t[2],
    )  # fmt: skip
    assert tokens == [
        (ALICE, BOB, 2.5, transfer_tx),
        (ALICE, CAROL, 7.0, pull_tx),
        ("0x" + "00" * 20, ALICE, 1_000_000.0, tokens[2][3]),  # the mint in the constructor
    ]
    (approval,) = [e for e in events if isinstance(e, TokenApproval)]
    assert approval.payload.unlimited is True
    assert (approval.entities.wallet, approval.entities.counterparty) == (ALICE, BOB)
    assert approval.payload.token_contract == token
    assert approval.payload.tx_hash == approve_tx
    assert all(e.payload.log_index is not None for e in events if e.payload.asset == "VTT")


def test_reorg_replaces_the_published_blocks(node: Anvil, settings: Settings) -> None:
    node.mine(3)
    fork = node.block_number()
    snapshot = node.rpc("evm_snapshot")
    old_tx = node.send(ALICE, BOB, value=10**18)  # fork + 1
    node.mine(1)  # fork + 2

    topic = make_raw_topic(settings, "ethereum-reorg")
    sink, source_id = _sink(settings, topic)
    source = EthereumSource(
        node.url,
        chain_id=ANVIL_CHAIN_ID,
        source_id=source_id,
        confirmations=0,
        start_block=0,
        poll_interval=FAST,
    )
    try:
        source.poll(sink)
        old_hashes = {h: source.state.recent[h] for h in (fork + 1, fork + 2)}  # type: ignore[union-attr]

        # The chain from fork+1 is replaced: a different transaction, and one block longer.
        assert node.rpc("evm_revert", snapshot) is True
        new_tx = node.send(ALICE, CAROL, value=2 * 10**18)  # fork + 1'
        node.mine(2)  # fork + 2', fork + 3
        # Once in CI (under load) the second poll replaced nothing: this tells a node still at
        # the old height from a source that missed the fork.
        assert node.block_number() == fork + 3
        source.poll(sink)
    finally:
        source.close()
        sink.close()
    assert source.replaced == 2

    records = read_raw(settings, topic, "ethereum")
    blocks = [r for r in records if r.kind == "eth_block"]
    by_height: dict[int, list[RawRecord]] = {}
    for r in blocks:
        by_height.setdefault(int(r.key or b"-1"), []).append(r)
    assert sorted(by_height) == list(range(fork + 4))
    for height in (fork + 1, fork + 2):
        original, replacement = by_height[height]  # one partition per key: in publish order
        assert original.meta["hash"] == old_hashes[height]
        assert "reorg" not in original.meta
        assert replacement.meta["reorg"] is True
        assert replacement.meta["hash"] != old_hashes[height]
    assert all(len(by_height[h]) == 1 for h in by_height if h not in (fork + 1, fork + 2))
    # The replacement chain links up: each new block's parent is the previous canonical hash.
    canonical = {h: rs[-1].meta["hash"] for h, rs in by_height.items()}
    for h in range(1, fork + 4):
        block = json.loads(next(r for r in reversed(by_height[h])).value)
        assert block["parentHash"] == canonical[h - 1]

    replaced = [r for r in records if r.meta.get("reorg")]
    assert {r.kind for r in replaced} == {"eth_block", "eth_logs"}
    new_events = [e for r in replaced for e in _normalise([r], "0x" + "00" * 20)]
    assert [(e.payload.tx_hash, e.entities.counterparty, e.payload.amount) for e in new_events] == [
        (new_tx, CAROL, 2.0)
    ]
    old_events = _normalise([r for r in blocks if r.meta["hash"] == old_hashes[fork + 1]], "0x" + "00" * 20)
    assert [e.payload.tx_hash for e in old_events] == [old_tx]
    cursor = stored_cursor(settings, source_id, fork + 4, "next_block")
    assert [h for h, _ in cursor["recent"]] == list(range(fork + 4))


@pytest.mark.slow
def test_killed_connector_resumes_without_gap_or_duplicate(node: Anvil, settings: Settings) -> None:
    for i in range(10):
        node.send(ALICE, BOB, value=10**15 * (i + 1))  # blocks 1..10, one transfer each
    node.mine(20)
    topic = make_raw_topic(settings, "ethereum-kill")
    source_id = f"eth-kill-{uuid.uuid4().hex[:8]}"
    bootstrap = settings.kafka_client_config()["bootstrap.servers"]
    args = [
        sys.executable,
        str(Path(__file__).with_name("run_chain_source.py")),
        "ethereum",
        node.url,
        topic,
        source_id,
        bootstrap,
        str(settings.home),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def blocks_published() -> int:
        # Past the sources' transaction timeout: a run killed mid-transaction holds committed
        # readers back until the restarted one fences it, after its own start-up.
        records = read_raw(settings, topic, "ethereum", timeout_s=SOURCE_TXN_TIMEOUT_S + 20)
        return sum(1 for r in records if r.kind == "eth_block")

    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: blocks_published() >= 6, START_S, "the first run to publish some blocks")
        node.mine(15)  # the chain grows while the connector works, and after it dies
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    # No read here: the killed run may have left a transaction open, which holds committed
    # readers back until the restarted connector's producer fences it (or Kafka's timeout).
    # The blocks mined now were never seen by the first run: the restart has work left.
    node.mine(5)
    head = node.block_number()

    second = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: blocks_published() >= head + 1, START_S, f"blocks 0..{head} after the restart")
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)

    records = read_raw(settings, topic, "ethereum")
    for kind in ("eth_block", "eth_logs"):
        heights = Counter(int(r.key or b"-1") for r in records if r.kind == kind)
        assert sorted(heights) == list(range(head + 1)), f"{kind}: gap"
        assert max(heights.values()) == 1, f"{kind}: duplicate {heights.most_common(1)}"
    transfers = _normalise(records, "0x" + "00" * 20)
    assert sorted(e.payload.value_raw for e in transfers) == [10**15 * (i + 1) for i in range(10)]


def test_reorg_deeper_than_the_remembered_window_stops_the_connector(node: Anvil, settings: Settings) -> None:
    snapshot = node.rpc("evm_snapshot")
    node.send(ALICE, BOB, value=1)
    node.mine(3)  # blocks 1..4 on the old branch
    topic = make_raw_topic(settings, "ethereum-deep")
    sink, source_id = _sink(settings, topic)
    source = EthereumSource(
        node.url,
        chain_id=ANVIL_CHAIN_ID,
        source_id=source_id,
        confirmations=0,
        start_block=0,
        poll_interval=FAST,
        window=2,
    )
    try:
        source.poll(sink)
        assert node.rpc("evm_revert", snapshot) is True
        node.send(ALICE, CAROL, value=2)
        node.mine(5)  # blocks 1'..6': every remembered block (3, 4) was replaced
        with pytest.raises(SourceError, match="deeper than the 2 remembered blocks"):
            source.poll(sink)
    finally:
        source.close()
        sink.close()
    # Nothing was re-published: the connector stopped instead of guessing.
    assert not [r for r in read_raw(settings, topic, "ethereum") if r.meta.get("reorg")]


def test_a_block_the_node_cannot_serve_is_named_in_the_error(node: Anvil) -> None:
    # A node that pruned old history answered "eth_getLogs at <host>: ..." without saying which block.
    node.mine(2)
    block = node.rpc("eth_getBlockByNumber", "0x1", False)
    with RpcProxy(node.url, {"eth_getLogs": (-32000, "history has been pruned")}) as proxy:
        source = EthereumSource(proxy.url, chain_id=ANVIL_CHAIN_ID, confirmations=0, start_block=1)
        try:
            with pytest.raises(JsonRpcError, match="history has been pruned") as info:
                source.poll(MemorySink())
        finally:
            source.close()
    assert f"eth_getLogs for block 1 ({block['hash']}) at {proxy.url}:" in str(info.value)
