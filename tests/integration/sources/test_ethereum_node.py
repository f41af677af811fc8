"""The Ethereum connector against what a real node (anvil), or a proxy in front of it, answers:
receipts a backend lacks, a capped ``eth_getLogs``, a node of another chain, tokens' decimals.

The sink is the in-memory one: Kafka is not the point (tests/integration/sources/test_ethereum.py
runs the connector into a broker).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.integration.sources.anvil import ANVIL_CHAIN_ID, DEV_ACCOUNTS, Anvil, RpcProxy

from vigil.errors import ConfigError
from vigil.events.base import Event
from vigil.events.types import ChainTransfer
from vigil.hub.raw import RawRecord
from vigil.sources import ethereum
from vigil.sources.ethereum import DECIMALS_GAS, TRANSFER_TOPIC, EthereumSource
from vigil.sources.ethereum_normalize import EthereumNormalizer
from vigil.sources.jsonrpc import JsonRpcError
from vigil.sources.sink import MemorySink

REPO = Path(__file__).resolve().parents[3]
ARTIFACT = json.loads((REPO / "tests" / "fixtures" / "erc20" / "VigilTestToken.json").read_text())
ALICE, BOB, CAROL = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]
FAST = timedelta(milliseconds=50)
#: A contract that reverts whatever it is sent: PUSH1 0 PUSH1 0 REVERT.
REVERTER = "0x000000000000000000000000000000000000dead"
NO_SUCH_METHOD = (-32601, "the method eth_getBlockReceipts does not exist/is not available")
CAPPED = (-32005, "query returned more than 10000 results")


def _word(value: int | str) -> str:
    return format(int(value, 16) if isinstance(value, str) else value, "064x")


def _deploy_token(node: Anvil) -> str:
    """The test ERC-20 (6 decimals), ALICE holding its supply."""
    tx = node.send(ALICE, None, data=ARTIFACT["bytecode"] + _word(10**12))
    address: str = node.receipt(tx)["contractAddress"]
    return address.lower()


def _transfer(node: Anvil, token: str, to: str, value: int) -> str:
    data = ARTIFACT["selectors"]["transfer(address,uint256)"] + _word(to) + _word(value)
    tx = node.send(ALICE, token, data=data)
    assert node.receipt(tx)["status"] == "0x1"
    return tx


def _source(url: str, **kw: Any) -> EthereumSource:
    options: dict[str, Any] = {"chain_id": ANVIL_CHAIN_ID, "confirmations": 0, "start_block": 1, **kw}
    return EthereumSource(url, poll_interval=FAST, **options)


def _poll(source: EthereumSource) -> MemorySink:
    sink = MemorySink()
    try:
        assert source.poll(sink) is True
    finally:
        source.close()
    return sink


def _events(records: list[RawRecord]) -> list[Event]:
    normalizer = EthereumNormalizer()
    return [e for r in records for e in normalizer.normalize(r)]


def _native(records: list[RawRecord]) -> dict[str, ChainTransfer]:
    return {
        e.payload.tx_hash: e
        for e in _events(records)
        if isinstance(e, ChainTransfer) and e.payload.asset == "ETH"
    }


@pytest.fixture
def node() -> Iterator[Anvil]:
    with Anvil() as anvil:
        anvil.rpc("anvil_setCode", REVERTER, "0x60006000fd")
        yield anvil


# ---------------------------------------------------------------------------- failed transactions


def _reverted_send(node: Anvil) -> str:
    """5 ETH sent to a contract that reverts: mined, its value in the block, nothing moved."""
    tx = node.send(ALICE, REVERTER, value=5 * 10**18, gas=60_000)
    assert node.receipt(tx)["status"] == "0x0"
    return tx


def test_one_backend_without_block_receipts_does_not_switch_failure_marking_off(node: Anvil) -> None:
    # Behind a load balancer one old backend answered "no such method" once: receipts were
    # switched off for the process's life, and the normaliser took the reverted 5 ETH send of a
    # later block for a transfer of 5 ETH.
    node.mine(2)
    answered = []

    def once(request: dict[str, Any]) -> tuple[int, str] | None:
        if request["method"] != "eth_getBlockReceipts" or answered:
            return None
        answered.append(request)
        return NO_SUCH_METHOD

    with RpcProxy(node.url, refuse=once) as proxy:
        source = _source(proxy.url)
        sink = _poll(source)
        reverted = _reverted_send(node)
        sent = node.send(ALICE, BOB, value=10**18)
        source = _source(proxy.url, start_block=3)
        sink.records += _poll(source).records
    assert proxy.refused == ["eth_getBlockReceipts"]
    assert proxy.calls.count("eth_getBlockReceipts") == 4  # one a block: asked again after the refusal
    blocks = [r for r in sink.records if r.kind == "eth_block"]
    assert [r.meta["number"] for r in blocks] == [1, 2, 3, 4]
    assert [r.meta["failed_txs"] for r in blocks] == [[], [], [reverted], []]
    native = _native(sink.records)
    assert reverted not in native
    assert native[sent].payload.amount == 1.0
    assert native[sent].payload.success_unknown is False


def test_a_node_without_block_receipts_reads_failures_from_each_transactions_receipt(node: Anvil) -> None:
    reverted = _reverted_send(node)  # block 1
    sent = node.send(ALICE, BOB, value=2 * 10**18)  # block 2
    node.send(ALICE, REVERTER, value=0, gas=60_000)  # block 3: carries no ether, no receipt asked
    node.mine(3)  # blocks 4..6
    with RpcProxy(node.url, {"eth_getBlockReceipts": NO_SUCH_METHOD}) as proxy:
        source = _source(proxy.url)
        source.receipts_misses, source.receipts_retry_blocks = 2, 3
        sink = _poll(source)
    blocks = [r for r in sink.records if r.kind == "eth_block"]
    assert [r.meta["failed_txs"] for r in blocks] == [[reverted], [], [], [], [], []]
    # One receipt per transaction carrying ether; the block's receipts asked at blocks 1 and 2
    # (two answers in a row: not asked at 3 and 4), asked again at 5 (one answer: not at 6).
    assert proxy.calls.count("eth_getTransactionReceipt") == 2
    assert proxy.calls.count("eth_getBlockReceipts") == 3
    native = _native(sink.records)
    assert sorted(native) == [sent]
    assert native[sent].payload.success_unknown is False


def test_built_without_receipts_the_native_transfers_are_marked_success_unknown(node: Anvil) -> None:
    reverted = _reverted_send(node)
    sink = _poll(_source(node.url, receipts=False))
    assert all("failed_txs" not in r.meta for r in sink.records)
    native = _native(sink.records)
    assert native[reverted].payload.success_unknown is True  # not stated as certain


# ---------------------------------------------------------------------------- the chain served


def test_a_node_of_another_chain_is_refused_at_the_first_poll(node: Anvil) -> None:
    # anvil's chain 31337 was published as chain=ethereum, its test ether as mainnet's.
    node.mine(2)
    source = EthereumSource(node.url, confirmations=0, start_block=1)  # mainnet, by default
    sink = MemorySink()
    try:
        with pytest.raises(ConfigError, match=r"serves chain_id 31337, expected 1 \(option chain_id\)"):
            source.poll(sink)
    finally:
        source.close()
    assert sink.records == []
    assert len(_poll(_source(node.url)).records) == 4  # built for anvil's chain, it follows


def test_a_cursor_kept_for_another_chain_is_refused() -> None:
    source = EthereumSource("http://127.0.0.1:1", chain_id=ANVIL_CHAIN_ID, source_id="eth-x")
    try:
        cursor = {"next_block": 5, "hash": "0xab", "recent": [[4, "0xab"]], "chain_id": 1}
        with pytest.raises(
            ConfigError, match="stored cursor is for chain_id 1, but the source is configured"
        ):
            source.restore(cursor)
        state = source.restore({k: v for k, v in cursor.items() if k != "chain_id"})  # saved before
        assert source.cursor(state)["chain_id"] == ANVIL_CHAIN_ID
    finally:
        source.close()


# ---------------------------------------------------------------------------- capped eth_getLogs


def test_a_capped_eth_getlogs_is_asked_for_one_event_at_a_time(node: Anvil) -> None:
    # Infura answers -32005 "query returned more than 10000 results" for a block with many logs:
    # retried as "node busy", every 30 s, for ever.
    token = _deploy_token(node)
    _transfer(node, token, BOB, 2_500_000)
    approve = ARTIFACT["selectors"]["approve(address,uint256)"] + _word(CAROL) + _word(7)
    node.receipt(node.send(ALICE, token, data=approve))

    def capped(request: dict[str, Any]) -> tuple[int, str] | None:
        all_events = request["method"] == "eth_getLogs" and len(request["params"][0]["topics"][0]) > 1
        return CAPPED if all_events else None

    with RpcProxy(node.url, refuse=capped) as proxy:
        split = _poll(_source(proxy.url))
    direct = _poll(_source(node.url))
    split_logs = [r for r in split.records if r.kind == "eth_logs"]
    assert [r.meta.get("logs_by_event") for r in split_logs] == [True] * 3
    assert proxy.calls.count("eth_getLogs") == 3 * 4  # each block: all at once, then each event
    events = _events(split.records)
    assert sorted(e.event_id for e in events) == sorted(e.event_id for e in _events(direct.records))
    assert {type(e).__name__ for e in events} == {"ChainTransfer", "TokenApproval"}


def test_an_eth_getlogs_capped_for_one_event_too_stops_naming_the_block(node: Anvil) -> None:
    node.mine(1)
    block = node.rpc("eth_getBlockByNumber", "0x1", False)
    with RpcProxy(node.url, {"eth_getLogs": CAPPED}) as proxy:
        source = _source(proxy.url)
        try:
            with pytest.raises(JsonRpcError) as info:
                source.poll(MemorySink())
        finally:
            source.close()
    message = str(info.value)
    assert f"eth_getLogs for block 1 ({block['hash']}), Transfer logs only at {proxy.url}:" in message
    assert "more than 10000 results; expected the block's Transfer logs" in message


# ---------------------------------------------------------------------------- token decimals


def _transfer_log_emitter(node: Anvil, address: str) -> None:
    """Code at ``address`` that logs ERC-20 Transfer(ALICE, BOB, 7) whatever it is called with
    and answers nothing (no decimals())."""
    code = (
        "0x6007600052"  # MSTORE(0, 7): the data word
        + "73" + BOB[2:] + "73" + ALICE[2:] + "7f" + TRANSFER_TOPIC[2:]  # topics, last pushed first
        + "60206000a300"  # LOG3(offset 0, size 32, ...), STOP
    )  # fmt: skip
    node.rpc("anvil_setCode", address, code)


def test_token_decimals_are_asked_of_the_contract_once(node: Anvil) -> None:
    # A token missing from KNOWN_TOKENS was read as having 18 decimals, stated as fact: WBTC's
    # 3.88 read 3.88e-10.
    token = _deploy_token(node)  # block 1 (the mint)
    _transfer(node, token, BOB, 2_500_000)  # block 2
    _transfer(node, token, CAROL, 1_000_000)  # block 3
    emitter = "0x000000000000000000000000000000000000beef"
    _transfer_log_emitter(node, emitter)
    assert node.receipt(node.send(ALICE, emitter, gas=100_000))["logs"]  # block 4
    with RpcProxy(node.url) as proxy:
        sink = _poll(_source(proxy.url))
    assert proxy.calls.count("eth_call") == 2  # each contract once
    logs = {r.meta["number"]: r for r in sink.records if r.kind == "eth_logs"}
    assert [logs[n].meta.get("token_decimals") for n in (1, 2, 3, 4)] == [{token: 6}] * 3 + [None]
    transfers = [e.payload for e in _events(sink.records) if isinstance(e, ChainTransfer)]
    vtt = sorted(
        (p.to_address, p.amount, p.decimals, p.decimals_assumed) for p in transfers if p.asset == token
    )
    assert vtt == sorted([(ALICE, 1_000_000.0, 6, False), (BOB, 2.5, 6, False), (CAROL, 1.0, 6, False)])
    (unknown,) = [p for p in transfers if p.asset == emitter]
    assert (unknown.value_raw, unknown.decimals, unknown.decimals_assumed) == (7, 18, True)


def test_a_node_error_on_decimals_is_not_remembered_and_the_call_is_capped(node: Anvil) -> None:
    # Any error was remembered as "no decimals" (a load balancer's "header not found" once, and a
    # 6-decimal token read at 18 for the process's life); the call had no gas limit (found in review).
    token = _deploy_token(node)  # block 1
    _transfer(node, token, BOB, 2_500_000)  # block 2
    _transfer(node, token, CAROL, 1_000_000)  # block 3
    asked: list[dict[str, Any]] = []

    def lagging_once(request: dict[str, Any]) -> tuple[int, str] | None:
        if request["method"] != "eth_call":
            return None
        asked.append(request["params"][0])
        return (-32000, "header not found") if len(asked) == 1 else None

    with RpcProxy(node.url, refuse=lagging_once) as proxy:
        sink = _poll(_source(proxy.url))
    assert len(asked) == 2  # (asked again at its next block; then remembered)
    assert all(call["gas"] == hex(DECIMALS_GAS) for call in asked)
    logs = {r.meta["number"]: r for r in sink.records if r.kind == "eth_logs"}
    assert [logs[n].meta.get("token_decimals") for n in (1, 2, 3)] == [None, {token: 6}, {token: 6}]


def test_contracts_asked_for_decimals_in_one_block_are_capped(
    node: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anyone can deploy contracts that emit Transfer events: each new one was a call to the node,
    # however many a block brought (found in review).
    monkeypatch.setattr(ethereum, "DECIMALS_ASKS_PER_BLOCK", 1)
    emitters = ["0x000000000000000000000000000000000000beef", "0x000000000000000000000000000000000000bee0"]
    for emitter in emitters:
        _transfer_log_emitter(node, emitter)
    node.rpc("evm_setAutomine", False)
    try:
        sent = [node.send(ALICE, emitter, gas=100_000) for emitter in emitters]
        node.rpc("evm_mine")  # block 1: both
    finally:
        node.rpc("evm_setAutomine", True)
    assert {node.receipt(tx)["blockNumber"] for tx in sent} == {"0x1"}
    for emitter in emitters:
        node.send(ALICE, emitter, gas=100_000)  # blocks 2 and 3
    with RpcProxy(node.url) as proxy:
        sink = _poll(_source(proxy.url))
    logs = {r.meta["number"]: r for r in sink.records if r.kind == "eth_logs"}
    assert sorted(logs) == [1, 2, 3]
    # One asked in block 1, the other at its next block (3), then each remembered (no decimals).
    per_block: list[list[str]] = []
    for method in proxy.calls:
        if method == "eth_getBlockByNumber":
            per_block.append([])
        elif per_block:
            per_block[-1].append(method)
    assert [calls.count("eth_call") for calls in per_block] == [1, 0, 1]
    assert all(logs[n].meta.get("token_decimals") is None for n in (1, 2, 3))


# ---------------------------------------------------------------------------- block hashes


def test_events_name_the_block_they_were_read_from(node: Anvil) -> None:
    token = _deploy_token(node)
    _transfer(node, token, BOB, 5)
    node.send(ALICE, BOB, value=10**18)
    sink = _poll(_source(node.url))
    hashes = {r.meta["number"]: r.meta["hash"] for r in sink.records}
    events = [e for e in _events(sink.records) if isinstance(e, ChainTransfer)]
    assert len(events) == 3
    assert all(e.payload.block_hash == hashes[e.payload.block_number] for e in events)
