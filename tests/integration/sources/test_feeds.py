"""Exchange feed connectors against a local websocket server replaying the recorded sessions,
publishing through the transactional sink to the real broker."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration.kafka_read import read_raw
from tests.integration.sources.replay_ws import FEEDS, Recording, ReplayServer, load_recording

from vigil.config import Settings, load_settings
from vigil.errors import BrokerError
from vigil.events.types import Trade
from vigil.hub.admin import ensure_topics
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.binance import BinanceNormalizer, BinanceSource
from vigil.sources.coinbase import CoinbaseNormalizer, CoinbaseSource
from vigil.sources.sink import KafkaRawSink
from vigil.sources.websocket import CONTROL_KEY, WS_GAP, WS_MESSAGE, WebsocketFeed

PARTITIONS = 3


@pytest.fixture(scope="module")
def coinbase() -> Recording:
    return load_recording(FEEDS / "COINBASE.ws.28.0")


@pytest.fixture(scope="module")
def binance() -> Recording:
    return load_recording(FEEDS / "BINANCE.ws.1.0")


@pytest.fixture
def topic(settings: Settings, unique_topic: str) -> str:
    spec = TopicSpec(name=unique_topic, key="product", value="raw", description="t", partitions=PARTITIONS)
    ensure_topics(settings, [spec])
    return unique_topic


@dataclass
class Running:
    source: WebsocketFeed
    thread: threading.Thread
    errors: list[BaseException]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.errors:
                raise self.errors[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; stats: {self.source.stats}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.source.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the connector did not stop within 15s"
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def run_feed(settings: Settings, topic: str) -> Iterator[Callable[[WebsocketFeed], Running]]:
    started: list[Running] = []

    def start(source: WebsocketFeed) -> Running:
        sink = KafkaRawSink(
            settings, source_id=f"test-{source.name}-{uuid.uuid4().hex[:8]}", topic_for=lambda _r: topic
        )
        errors: list[BaseException] = []

        def target() -> None:
            try:
                source.run(sink)
            except BaseException as exc:
                errors.append(exc)
            finally:
                sink.close()

        thread = threading.Thread(target=target, daemon=True)
        running = Running(source, thread, errors)
        started.append(running)
        thread.start()
        return running

    yield start
    for running in started:
        running.source.stop()
        running.thread.join(15)


def by_key(records: list[RawRecord]) -> dict[bytes | None, list[bytes]]:
    grouped: dict[bytes | None, list[bytes]] = {}
    for rec in records:
        grouped.setdefault(rec.key, []).append(rec.value)
    return grouped


def expected_by_key(
    recording: Recording, key: Callable[[dict[str, object]], str | None]
) -> dict[bytes | None, list[bytes]]:
    grouped: dict[bytes | None, list[bytes]] = {}
    for _, frame in recording.messages:
        k = key(json.loads(frame))
        grouped.setdefault(k.encode() if k else CONTROL_KEY, []).append(frame)
    return grouped


def coinbase_key(message: dict[str, object]) -> str | None:
    product = message.get("product_id")
    return product if isinstance(product, str) else None


def binance_key(message: dict[str, object]) -> str | None:
    data = message.get("data")
    return str(data["s"]) if isinstance(data, dict) and "s" in data else None


def coinbase_products(recording: Recording) -> list[str]:
    products: list[str] = json.loads(recording.sent[0])["product_ids"]
    return products


def test_coinbase_recording_at_recorded_pace_lands_unchanged_and_normalises(
    settings: Settings, topic: str, coinbase: Recording, run_feed: Callable[[WebsocketFeed], Running]
) -> None:
    # The 31 s session replayed 40x faster, with its own inter-message timing.
    with ReplayServer(coinbase, speed=40.0) as server:
        source = CoinbaseSource(
            coinbase_products(coinbase), url=server.url, channels=["level2", "ticker", "matches"]
        )
        feed = run_feed(source)
        feed.wait_for(lambda: source.stats.messages == len(coinbase.messages))
        feed.stop()
        subscribe = json.loads(server.stats.client_messages[0])
    assert subscribe == {
        "type": "subscribe",
        "product_ids": coinbase_products(coinbase),
        "channels": ["level2", "ticker", "matches"],
    }
    assert source.stats.gaps == 0
    assert source.stats.connections == 1

    records = read_raw(settings, topic, "coinbase")
    assert {r.kind for r in records} == {WS_MESSAGE}
    # Every message, byte for byte, once, in order per product.
    assert by_key(records) == expected_by_key(coinbase, coinbase_key)
    assert {r.meta["url"] for r in records} == {server.url}

    normalizer = CoinbaseNormalizer()
    trades = [event for rec in records for event in normalizer.normalize(rec) if isinstance(event, Trade)]
    matches = [json.loads(f) for _, f in coinbase.messages if b'"match"' in f or b'"last_match"' in f]
    assert sorted(t.payload.trade_id for t in trades) == sorted(str(m["trade_id"]) for m in matches)
    assert len({t.event_id for t in trades}) == len(trades)


def test_binance_as_fast_as_possible_answers_pings(
    settings: Settings, topic: str, binance: Recording, run_feed: Callable[[WebsocketFeed], Running]
) -> None:
    streams = binance.url.split("streams=")[1].split("/")
    with ReplayServer(binance, speed=None, ping_every=25) as server:
        source = BinanceSource(streams, base_url=server.url)
        feed = run_feed(source)
        feed.wait_for(lambda: source.stats.messages == len(binance.messages))
        feed.stop()
        assert server.stats.paths == ["/stream?streams=" + "/".join(streams)]
        # Every ping the server sent was answered with a pong, or the replay would have stalled.
        assert server.stats.pongs == len(binance.messages) // 25
    assert source.stats.gaps == 0
    records = read_raw(settings, topic, "binance")
    assert by_key(records) == expected_by_key(binance, binance_key)
    trades = [event for rec in records for event in BinanceNormalizer().normalize(rec)]
    assert len(trades) == sum(b'"aggTrade"' in f for _, f in binance.messages)


def test_dropped_connection_reconnects_with_backoff_and_resumes(
    settings: Settings, topic: str, coinbase: Recording, run_feed: Callable[[WebsocketFeed], Running]
) -> None:
    total = len(coinbase.messages)
    with ReplayServer(coinbase, speed=None, drop_after=[total // 3, 2 * total // 3]) as server:
        source = CoinbaseSource(
            coinbase_products(coinbase),
            url=server.url,
            channels=["level2", "ticker", "matches"],
            backoff_initial=0.05,
            backoff_max=0.2,
        )
        feed = run_feed(source)
        feed.wait_for(lambda: source.stats.messages == total)
        feed.stop()
        assert server.stats.connections == 3
        subscribes = [json.loads(m) for m in server.stats.client_messages if '"subscribe"' in m]
        assert len(subscribes) == 3  # re-subscribed on every new connection
    assert source.stats.reconnects == 2
    records = read_raw(settings, topic, "coinbase")
    assert by_key(records) == expected_by_key(coinbase, coinbase_key)
    assert sorted({r.meta["conn"] for r in records}) == [1, 2, 3]


def test_silent_feed_times_out_on_heartbeat_and_reconnects(
    settings: Settings, topic: str, binance: Recording, run_feed: Callable[[WebsocketFeed], Running]
) -> None:
    streams = binance.url.split("streams=")[1].split("/")
    with ReplayServer(binance, speed=None, stall_after=[100]) as server:
        source = BinanceSource(
            # 3 s: the replay's end is silence too, and the stats below must be read before the
            # client times out on it (a descheduled test thread had only 1 s, less a publish).
            streams,
            base_url=server.url,
            heartbeat_timeout=3.0,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        feed = run_feed(source)
        feed.wait_for(lambda: source.stats.messages == len(binance.messages))
        # Read before stopping: after the replay the server is silent too, and a slow stop()
        # would let the client time out (and reconnect) once more.
        timeouts, connections = source.stats.heartbeat_timeouts, server.stats.connections
        feed.stop()
        assert server.stats.stalled == [100]
        assert connections == 2
    assert timeouts == 1
    assert by_key(read_raw(settings, topic, "binance")) == expected_by_key(binance, binance_key)


def test_skipped_trade_is_a_gap_noted_counted_and_its_book_resubscribed(
    settings: Settings, topic: str, coinbase: Recording, run_feed: Callable[[WebsocketFeed], Running]
) -> None:
    # Drop the first match that has a later match of the same product: its trade id goes missing.
    decoded = [json.loads(f) for _, f in coinbase.messages]
    matches = [(i, m) for i, m in enumerate(decoded) if m["type"] == "match"]
    skipped, lost = next(
        (i, m) for i, m in matches if any(j > i and n["product_id"] == m["product_id"] for j, n in matches)
    )
    product = lost["product_id"]
    channels = ["level2", "ticker", "matches"]
    with ReplayServer(coinbase, speed=None, skip=[skipped]) as server:
        source = CoinbaseSource(coinbase_products(coinbase), url=server.url, channels=channels)
        feed = run_feed(source)
        feed.wait_for(lambda: source.stats.messages == len(coinbase.messages) - 1)
        feed.wait_for(lambda: any('"unsubscribe"' in m for m in server.stats.client_messages))
        feed.stop()
        resync = [json.loads(m) for m in server.stats.client_messages[1:]]
    assert source.stats.gaps == 1
    # Only the channel with a snapshot to recover from (the book): matches and ticker stay on.
    assert resync[:2] == [
        {"type": "unsubscribe", "product_ids": [product], "channels": ["level2"]},
        {"type": "subscribe", "product_ids": [product], "channels": ["level2"]},
    ]
    notes = [r for r in read_raw(settings, topic, "coinbase") if r.kind == WS_GAP]
    assert [json.loads(n.value) for n in notes] == [
        {
            "key": f"{product}:trade_id",
            "expected": lost["trade_id"],
            "received": lost["trade_id"] + 1,
            "missing": 1,
        }
    ]
    assert notes[0].key == product.encode()


def test_broker_failure_stops_the_connector_loudly(tmp_path: Path, coinbase: Recording) -> None:
    with socket.socket() as s:  # a port nothing listens on: the broker is down
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = load_settings(kafka_bootstrap=f"127.0.0.1:{dead_port}", home=tmp_path)
    sink = KafkaRawSink(dead, source_id=f"test-dead-{uuid.uuid4().hex[:8]}", timeout_s=2)
    with ReplayServer(coinbase, speed=None) as server:
        source = CoinbaseSource(coinbase_products(coinbase), url=server.url, channels=["matches"])
        # run() raises instead of dropping market data on the floor or spinning silently.
        with pytest.raises(BrokerError, match="cannot start a Kafka transaction"):
            source.run(sink)
    assert source.stats.messages == 0
