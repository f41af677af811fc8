"""The Bitcoin connector against a local JSON-RPC server serving real recorded blocks.

The sink is the in-memory one (no broker); the Kafka path is in tests/integration.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from tests.integration.sources.bitcoin_rpc import BitcoinRpcServer
from tests.integration.sources.split_rpc import SplitRpc
from tests.paced import PacedRun

from vigil.config import Settings
from vigil.errors import ConfigError, Retry, SourceError
from vigil.sources.bitcoin import BitcoinSource
from vigil.sources.bitcoin_normalize import BitcoinNormalizer
from vigil.sources.chain import backoff_s
from vigil.sources.jsonrpc import JsonRpcClient, JsonRpcError
from vigil.sources.sink import MemorySink

AUTH = ("vigil", "s3cret-test-pw")


@pytest.fixture
def node() -> Iterator[BitcoinRpcServer]:
    with BitcoinRpcServer() as server:
        yield server


def _source(node: BitcoinRpcServer, **kw: Any) -> BitcoinSource:
    options: dict[str, Any] = {"confirmations": 0, "start_height": 50000, **kw}
    return BitcoinSource(node.url, auth=AUTH, **options)


class _Paced(PacedRun, BitcoinSource):
    pass


def _paced(node: BitcoinRpcServer, polls: int, **kw: Any) -> _Paced:
    options: dict[str, Any] = {"confirmations": 0, "start_height": 50000, **kw}
    return _Paced(node.url, auth=AUTH, polls=polls, **options)


def test_publishes_each_block_once_with_the_cursor_of_the_next(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    source = _source(node)
    assert source.poll(sink) is True
    assert [(r.kind, r.key) for r in sink.records] == [
        ("btc_block", b"50000"),
        ("btc_block", b"50001"),
        ("btc_block", b"50002"),
    ]
    # Bytes as the node sent them: byte-for-byte the recorded getblock result.
    assert sink.records[1].value == node.blocks[node.heights[50001]]
    assert sink.records[1].meta == {"height": 50001, "hash": node.heights[50001]}
    cursor = sink.cursors["bitcoin"]
    assert cursor["next_height"] == 50003
    assert cursor["hash"] == node.heights[50002]
    events = [e for r in sink.records for e in BitcoinNormalizer().normalize(r)]
    assert len(events) == 5


def test_confirmations_hold_back_the_newest_blocks(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    _source(node, confirmations=2).poll(sink)
    assert [r.key for r in sink.records] == [b"50000"]


def test_resumes_from_the_stored_cursor_without_gap_or_duplicate(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    node.head = 50000
    _source(node).poll(sink)
    node.head = 50002
    # A new instance (a restart) reads the cursor back from the sink and goes on from there.
    restarted = _source(node)
    restarted.state = restarted.restore(sink.last_cursor("bitcoin") or {})
    restarted.poll(sink)
    assert [r.key for r in sink.records] == [b"50000", b"50001", b"50002"]


def test_blocks_fetched_before_a_node_error_are_fetched_again_not_skipped(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    source = _source(node)
    # 1 getblockcount, 2-3 getblockhash/getblock 50000, 4 getblockhash 50001 -> 503
    node.fail_nth = 4
    with pytest.raises(Retry):
        source.poll(sink)
    assert sink.records == []
    assert source.state is not None
    assert source.state.next_height == 50000  # 50000 was fetched, not published: not skipped
    source.poll(sink)
    assert [r.key for r in sink.records] == [b"50000", b"50001", b"50002"]


def test_run_waits_out_a_restarting_node_and_stops_on_request(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    node.fail_next = 2
    source = _source(node, poll_interval=timedelta(milliseconds=20))
    source.rpc = JsonRpcClient(node.url, auth=AUTH, retry_after=timedelta(milliseconds=10))
    source.min_backoff_s = 0.01  # (the real floor is tested with the waits recorded, below)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    deadline = time.monotonic() + 10
    while len(sink.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    source.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert [r.key for r in sink.records] == [b"50000", b"50001", b"50002"]
    assert node.fail_next == 0


def test_a_confirmed_block_the_node_lacks_is_a_retry_not_a_busy_loop(node: BitcoinRpcServer) -> None:
    # Behind a load balancer, a lagging node answers "out of range" for a height under the head
    # another node reported: the poll ended "not caught up" and run() polled again at once.
    sink = MemorySink()
    source = _source(node)
    node.missing = {50001}
    with pytest.raises(Retry, match="node has no block 50001 although its head is 50002") as info:
        source.poll(sink)
    assert info.value.after == source.poll_interval
    assert [r.key for r in sink.records] == [b"50000"]  # what came before it is published
    node.missing = set()
    assert source.poll(sink) is True
    assert [r.key for r in sink.records] == [b"50000", b"50001", b"50002"]


def test_run_waits_and_logs_while_the_node_lacks_a_confirmed_block(
    node: BitcoinRpcServer, caplog: pytest.LogCaptureFixture
) -> None:
    node.missing = {50001}
    source = _paced(node, polls=3)
    with caplog.at_level(logging.WARNING, logger="vigil.sources.chain"):
        source.run(MemorySink())
    assert source.waits == [10.0, 20.0]  # the poll interval, backing off
    assert "node has no block 50001 although its head is 50002 (attempt 2, next in 20.0s)" in caplog.text


def _out_of_step(node: BitcoinRpcServer, source: BitcoinSource, sink: MemorySink) -> bytes:
    """Block 50000 polled, then the node serves a 50001 whose parent is not that 50000 (another
    node's chain); returns 50001 as it was."""
    node.head = 50000
    source.poll(sink)
    node.head = 50001
    raw_50001 = node.blocks[node.heights[50001]]
    node.blocks[node.heights[50001]] = raw_50001.replace(
        json.loads(raw_50001)["previousblockhash"].encode(), b"00" * 32
    )
    return raw_50001


def test_a_block_missing_during_reorg_repair_is_waited_for_not_a_deep_reorg(
    node: BitcoinRpcServer,
) -> None:
    # The walk-back read the lagging node's "no block" as a hash that differs: every remembered
    # block looked replaced, and the connector stopped on a reorg "deeper than the window".
    sink = MemorySink()
    source = _source(node)
    raw_50001 = _out_of_step(node, source, sink)
    node.missing = {50000}
    with pytest.raises(Retry, match="node has no block 50000 during reorg repair"):
        source.poll(sink)
    node.blocks[node.heights[50001]], node.missing = raw_50001, set()
    source.poll(sink)
    assert [r.key for r in sink.records] == [b"50000", b"50001"]
    assert source.replaced == 0


@pytest.fixture
def lagging(node: BitcoinRpcServer) -> Iterator[tuple[BitcoinRpcServer, SplitRpc]]:
    """Behind a load balancer, ``getblock`` reaches a node of the same chain lagging at 50001;
    the other calls, the node at 50002."""
    with BitcoinRpcServer(head=50001) as behind, SplitRpc(node.url, behind.url, {"getblock"}) as balancer:
        yield behind, balancer


def test_a_node_lagging_for_getblock_is_waited_for_not_fatal(
    node: BitcoinRpcServer, lagging: tuple[BitcoinRpcServer, SplitRpc]
) -> None:
    # getblockhash named 50002, getblock <hash> reached a node that does not have it yet: -5
    # "Block not found", re-raised as the block is still canonical, and run() died.
    behind, balancer = lagging
    sink = MemorySink()
    source = BitcoinSource(balancer.url, auth=AUTH, confirmations=0, start_height=50000)
    try:
        with pytest.raises(
            Retry,
            match=(
                f"node lagging: getblock at {balancer.url} has no block 50002 "
                rf"\({node.heights[50002]}\) yet: error -5: Block not found"
            ),
        ) as info:
            source.poll(sink)
        assert info.value.after == source.poll_interval
        # What was fetched before it is published, as for a block missing by number.
        assert [r.key for r in sink.records] == [b"50000", b"50001"]
        assert sink.cursors["bitcoin"]["next_height"] == 50002
        behind.head = 50002  # it catches up
        assert source.poll(sink) is True
    finally:
        source.close()
    assert [r.key for r in sink.records] == [b"50000", b"50001", b"50002"]
    assert sink.records[2].value == node.blocks[node.heights[50002]]


def test_a_node_lagging_for_ever_stops_the_connector_naming_the_block_and_the_node(
    node: BitcoinRpcServer, lagging: tuple[BitcoinRpcServer, SplitRpc]
) -> None:
    _, balancer = lagging
    sink = MemorySink()
    source = _Paced(
        balancer.url.replace("http://", "http://user:SECRET-1@") + "/wallet/SECRET-2",
        auth=AUTH, polls=10, confirmations=0, start_height=50000,
    )  # fmt: skip
    source.max_lag_attempts = 3
    with pytest.raises(SourceError) as info:
        source.run(sink)
    message = str(info.value)
    assert (
        f"getblock at {balancer.url} still has no block 50002 ({node.heights[50002]}) after 3 polls in a row"
        in message
    )
    assert "Block not found" in message
    assert "SECRET" not in message
    assert source.waits == [10.0, 20.0]  # the poll interval, backing off; then it stops
    assert [r.key for r in sink.records] == [b"50000", b"50001"]


def test_a_node_asking_for_no_wait_is_backed_off_from_a_floor(node: BitcoinRpcServer) -> None:
    # Three 503s with Retry-After: 0: doubling what the node asked kept it at 0, for ever (some
    # 6,600 requests a second against a rate-limited endpoint).
    node.fail_next = 3
    source = _paced(node, polls=4, poll_interval=timedelta(milliseconds=50))
    source.run(MemorySink())
    assert source.waits == [1.0, 2.0, 4.0]
    assert node.fail_next == 0


def test_backoff_starts_from_a_floor_whatever_the_node_asked() -> None:
    assert [backoff_s(0.0, n) for n in (1, 2, 3, 6)] == [1.0, 2.0, 4.0, 30.0]
    assert backoff_s(0.05, 1) == 1.0
    assert backoff_s(0.0, 2, floor_s=0.5) == 1.0


def test_a_negative_start_height_is_refused_by_name(tmp_path: object) -> None:
    settings = Settings(home=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match="bitcoin source: option start_height must be a height >= 0; got -1"
    ):
        BitcoinSource.from_settings(settings, start_height="-1")


@pytest.mark.parametrize("interval", ["0", "-2"])
def test_a_poll_interval_of_zero_or_less_is_refused_by_name(tmp_path: object, interval: str) -> None:
    # Accepted, it polled a caught-up node in a busy loop.
    settings = Settings(home=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=f"bitcoin source: option poll_interval must be more than 0 seconds; got {interval}"
    ):
        BitcoinSource.from_settings(settings, poll_interval=interval)


class _PrunedNode(BitcoinRpcServer):
    """Bitcoin Core pruned below the blocks asked for: it has their hashes, not their data."""

    def answer(self, method: str, params: list[Any]) -> tuple[int, Any, dict[str, Any] | None]:
        if method == "getblock":
            return 500, None, {"code": -1, "message": "Block not available (pruned data)"}
        return super().answer(method, params)


def test_a_block_the_node_cannot_serve_is_named_in_the_error() -> None:
    # "getblock at <host>: ... pruned data" said neither which block nor how far back to start.
    with _PrunedNode() as node:
        source = _source(node)
        try:
            with pytest.raises(JsonRpcError, match=r"Block not available \(pruned data\)") as info:
                source.poll(MemorySink())
        finally:
            source.close()
    assert f"getblock for block 50000 ({node.heights[50000]}) at {node.url}:" in str(info.value)


def test_malformed_cursor_stops_the_connector_by_name(node: BitcoinRpcServer) -> None:
    with pytest.raises(Exception, match="stored cursor is malformed"):
        _source(node).restore({"next_block": 3})


def test_from_settings_parses_options(tmp_path: object) -> None:
    settings = Settings(home=tmp_path)  # type: ignore[arg-type]
    source = BitcoinSource.from_settings(
        settings,
        url="http://127.0.0.1:1",
        rpc_user="u",
        rpc_password="p",  # noqa: S106 - a throwaway test value
        confirmations="3",
        start_height="7",
    )
    assert (source.confirmations, source.start, source.source_id) == (3, 7, "bitcoin")
    source.close()
    with pytest.raises(ConfigError, match="unknown option"):
        BitcoinSource.from_settings(settings, rpcuser="u")
    with pytest.raises(ConfigError, match="go together"):
        BitcoinSource.from_settings(settings, rpc_user="u")
    # A plain error naming the option, not a traceback from int().
    with pytest.raises(ConfigError, match="option confirmations must be a whole number; got 'x'"):
        BitcoinSource.from_settings(settings, confirmations="x")


def test_rpc_credentials_come_from_the_environment(
    node: BitcoinRpcServer, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # Documented, but read by nothing: a password could only be passed on the command line,
    # where the process list and the shell's history show it.
    monkeypatch.setenv("VIGIL_BITCOIN_RPC_USER", AUTH[0])
    monkeypatch.setenv("VIGIL_BITCOIN_RPC_PASSWORD", AUTH[1])
    source = BitcoinSource.from_settings(Settings(home=tmp_path), url=node.url, confirmations="0")  # type: ignore[arg-type]
    assert source.head() == node.head  # the node took the credentials
    source.close()


def test_rpc_credentials_come_from_the_settings_it_is_given(node: BitcoinRpcServer, tmp_path: object) -> None:
    # Read from os.environ by the connector: a Settings built in code, or vigil.toml, was not
    # looked at.
    configured = Settings(home=tmp_path, bitcoin_rpc_user=AUTH[0], bitcoin_rpc_password=AUTH[1])  # type: ignore[arg-type]
    source = BitcoinSource.from_settings(configured, url=node.url, confirmations="0")
    assert source.head() == node.head  # the node took the credentials
    source.close()
    wrong_password = "hunter2-wrong"  # noqa: S105 - a test value
    wrong = Settings(home=tmp_path, bitcoin_rpc_user=AUTH[0], bitcoin_rpc_password=wrong_password)  # type: ignore[arg-type]
    source = BitcoinSource.from_settings(wrong, url=node.url, confirmations="0")
    with pytest.raises(JsonRpcError, match="refused the credentials") as refused:
        source.head()
    assert "hunter2" not in str(refused.value)
    source.close()
    # The options, given, go first.
    source = BitcoinSource.from_settings(
        wrong, url=node.url, rpc_user=AUTH[0], rpc_password=AUTH[1], confirmations="0"
    )
    assert source.head() == node.head
    source.close()


# ---------------------------------------------------------------------- the JSON-RPC client


def test_wrong_credentials_are_an_error_that_does_not_show_them(node: BitcoinRpcServer) -> None:
    with (
        JsonRpcClient(node.url, auth=("vigil", "wrong-password")) as rpc,
        pytest.raises(JsonRpcError) as info,
    ):
        rpc.call("getblockcount")
    assert "refused the credentials" in str(info.value)
    assert "wrong-password" not in str(info.value)


def test_node_error_carries_method_and_code(node: BitcoinRpcServer) -> None:
    with (
        JsonRpcClient(node.url, auth=AUTH) as rpc,
        pytest.raises(JsonRpcError, match="Block not found") as info,
    ):
        rpc.call("getblock", ["00" * 32, 2])
    assert (info.value.method, info.value.code) == ("getblock", -5)


def test_unavailable_node_is_a_retry(node: BitcoinRpcServer) -> None:
    node.fail_next = 1
    with JsonRpcClient(node.url, auth=AUTH) as rpc:
        with pytest.raises(Retry, match="HTTP 503") as info:
            rpc.call("getblockcount")
        assert info.value.after.total_seconds() == 0  # the server's Retry-After: 0
        assert rpc.call("getblockcount") == 50002


@pytest.mark.parametrize("status", [500, 520])
def test_a_proxys_error_page_is_a_retry(node: BitcoinRpcServer, status: int) -> None:
    # An HTML 500 from nginx or a load balancer, Cloudflare's 520-524: a brief fault in front of
    # the node stopped the connector; not the node's JSON-RPC error, so retried.
    node.fail_next, node.fail_with = 1, (status, b"<html><body>Bad gateway</body></html>")
    with JsonRpcClient(node.url, auth=AUTH) as rpc:
        with pytest.raises(Retry, match=f"HTTP {status}: '<html>"):
            rpc.call("getblockcount")
        assert rpc.call("getblockcount") == 50002


def test_refused_connection_is_a_retry_and_hides_secrets_in_the_url() -> None:
    with JsonRpcClient("http://user:hunter2@127.0.0.1:9/v3/apikey42") as rpc, pytest.raises(Retry) as info:
        rpc.call("getblockcount")
    assert "hunter2" not in str(info.value)
    assert "apikey42" not in str(info.value)
    assert "http://127.0.0.1:9" in str(info.value)


def test_raw_result_is_sliced_not_reencoded(node: BitcoinRpcServer) -> None:
    with JsonRpcClient(node.url, auth=AUTH) as rpc:
        raw = rpc.call_raw("getblock", [node.heights[0], 2])
    assert raw == node.blocks[node.heights[0]]
    assert json.loads(raw)["height"] == 0


def test_backoff_doubles_to_its_cap_and_survives_a_night_of_outage() -> None:
    assert [backoff_s(1.0, n) for n in (1, 2, 3, 6, 7)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert backoff_s(45.0, 1) == 45.0  # never less than the node asked
    # The 1,025th failure in a row raised OverflowError (2 ** 1024 as a float): the connector
    # stopped after some eight hours of a node being down.
    assert backoff_s(1.0, 5000) == 30.0


def test_nodes_out_of_step_are_waited_for_not_spun_on(node: BitcoinRpcServer) -> None:
    # Behind a load balancer, block 50001 came from a node whose chain differs from the one that
    # answered the hash of 50000: the walk-back found no fork, replaced nothing, and the poll
    # fetched the same block again at once, for ever.
    sink = MemorySink()
    source = _source(node)
    raw_50001 = _out_of_step(node, source, sink)
    with pytest.raises(Retry, match="out of step"):
        source.poll(sink)
    assert [r.key for r in sink.records] == [b"50000"]
    node.blocks[node.heights[50001]] = raw_50001  # they agree again: it goes on
    source.poll(sink)
    assert [r.key for r in sink.records] == [b"50000", b"50001"]


# ---------------------------------------------------------------------------- the network served


def test_a_node_of_another_network_is_refused_at_the_first_poll(node: BitcoinRpcServer) -> None:
    # A testnet node's blocks were published as chain=bitcoin, testnet addresses and all.
    node.chain = "test"
    sink = MemorySink()
    with pytest.raises(ConfigError, match=r"serves network 'test', expected 'main' \(option network\)"):
        _source(node).poll(sink)
    assert sink.records == []
    assert _source(node, network="test").poll(sink) is True  # built for testnet, it follows


def test_a_cursor_kept_for_another_network_is_refused(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    _source(node, network="main").poll(sink)
    cursor = sink.cursors["bitcoin"]
    assert cursor["network"] == "main"
    with pytest.raises(
        ConfigError, match="stored cursor is for network 'main', but the source is configured"
    ):
        _source(node, network="signet").restore(cursor)


def test_an_unknown_network_option_is_refused_by_name(tmp_path: object) -> None:
    settings = Settings(home=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match="option network must be one of main, test, testnet4, signet, regtest"
    ):
        BitcoinSource.from_settings(settings, network="mainnet")


# ---------------------------------------------------------------------------- what stays wrong


def test_a_block_without_its_parents_hash_is_refused_by_name(node: BitcoinRpcServer) -> None:
    # Read as "", it disagreed with block 50000: a fork, then "nodes out of step", retried for ever.
    block = json.loads(node.blocks[node.heights[50001]])
    del block["previousblockhash"]
    node.blocks[node.heights[50001]] = json.dumps(block).encode()
    sink = MemorySink()
    with pytest.raises(
        SourceError, match=r"block 50001 must name its parent in previousblockhash .*; got None"
    ) as info:
        _source(node).poll(sink)
    assert not isinstance(info.value, Retry)  # stopped, not waited for
    # The genesis block alone has none.
    genesis = MemorySink()
    _source(node, start_height=0, confirmations=50002).poll(genesis)
    assert [r.key for r in genesis.records] == [b"0"]


def test_a_block_that_stays_missing_stops_the_connector_naming_it(node: BitcoinRpcServer) -> None:
    # Waited out every 30 s for ever, one warning a poll.
    node.missing = {50001}
    source = _paced(node, polls=10)
    source.max_lag_attempts = 3
    with pytest.raises(SourceError) as info:
        source.run(MemorySink())
    assert not isinstance(info.value, Retry)
    assert str(info.value) == (
        f"bitcoin source 'bitcoin': block 50001 is still unavailable after 3 polls in a row: {node.url} "
        "answered no block at that height, with its head at 50002; expected a block at every height "
        "up to the confirmed head 50002"
    )
    assert source.waits == [10.0, 20.0]


def test_nodes_out_of_step_for_ever_stop_the_connector_naming_the_block(node: BitcoinRpcServer) -> None:
    sink = MemorySink()
    source = _paced(node, polls=10)
    source.max_lag_attempts = 3
    _out_of_step(node, source, sink)
    with pytest.raises(SourceError, match="block 50001 is still unavailable after 3 polls in a row") as info:
        source.run(sink)
    assert f"a block 50001 whose parent is not its block 50000 ({node.heights[50000]})" in str(info.value)
    assert [r.key for r in sink.records] == [b"50000"]
