"""The Bitcoin connector into a real broker, from a local JSON-RPC server serving the
real recorded ``getblock <hash> 2`` responses (tests/integration/sources/bitcoin_rpc.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from tests.integration.sources.bitcoin_rpc import BitcoinRpcServer
from tests.integration.sources.chain_kafka import START_S, make_raw_topic, read_raw, stored_cursor, wait_for

from vigil.config import Settings
from vigil.events.types import ChainTransfer
from vigil.sources.bitcoin import BitcoinSource
from vigil.sources.bitcoin_normalize import BitcoinNormalizer
from vigil.sources.sink import KafkaRawSink

REPO = Path(__file__).resolve().parents[3]
PASSWORD = f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def node() -> Iterator[BitcoinRpcServer]:
    with BitcoinRpcServer(password=PASSWORD) as server:
        yield server


def test_blocks_land_unchanged_in_kafka_and_normalise(node: BitcoinRpcServer, settings: Settings) -> None:
    topic = make_raw_topic(settings, "bitcoin")
    source_id = f"btc-test-{uuid.uuid4().hex[:8]}"
    sink = KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: topic)
    source = BitcoinSource(
        node.url, auth=("vigil", PASSWORD), source_id=source_id, confirmations=1, start_height=50000,
        poll_interval=timedelta(milliseconds=50),
    )  # fmt: skip
    try:
        assert source.poll(sink) is True
    finally:
        source.close()
        sink.close()

    records = read_raw(settings, topic, "bitcoin")
    # One confirmation: the head (50002) waits for the next block.
    assert sorted(int(r.key or b"-1") for r in records) == [50000, 50001]
    for r in records:
        assert r.kind == "btc_block"
        assert r.value == node.blocks[r.meta["hash"]]
    assert stored_cursor(settings, source_id, 50002, "next_height") == {
        "next_height": 50002,
        "hash": node.heights[50001],
        "recent": [[50000, node.heights[50000]], [50001, node.heights[50001]]],
        "network": "main",
    }
    events = [e for r in records for e in BitcoinNormalizer().normalize(r)]
    transfers = [e for e in events if isinstance(e, ChainTransfer)]
    assert len(transfers) == len(events) == 4  # one output in 50000, three in 50001
    assert sum(e.payload.value_raw for e in transfers) == 250 * 10**8  # 50 + (50 + 100 + 50)


@pytest.mark.slow
def test_killed_connector_resumes_without_gap_or_duplicate(
    node: BitcoinRpcServer, settings: Settings
) -> None:
    node.head = 50000
    topic = make_raw_topic(settings, "bitcoin-kill")
    source_id = f"btc-kill-{uuid.uuid4().hex[:8]}"
    bootstrap = settings.kafka_client_config()["bootstrap.servers"]
    args = [
        sys.executable,
        str(Path(__file__).with_name("run_chain_source.py")),
        "bitcoin",
        node.url,
        topic,
        source_id,
        bootstrap,
        str(settings.home),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BTC_RPC_PASSWORD": PASSWORD}

    def heights() -> Counter[int]:
        return Counter(int(r.key or b"-1") for r in read_raw(settings, topic, "bitcoin"))

    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: heights() == Counter({50000: 1}), START_S, "block 50000 from the first run")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    node.head = 50002  # two blocks arrive while the connector is down

    second = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: sum(heights().values()) >= 3, START_S, "blocks 50001-50002 after the restart")
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)
    assert heights() == Counter({50000: 1, 50001: 1, 50002: 1})
