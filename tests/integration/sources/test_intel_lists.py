"""Intelligence lists (real OFAC and ScamSniffer files) -> real Kafka: refreshed without
restart, the diff survives a restart through the cursor, and removed entries are revoked in
a compacted indicators topic."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from tests.integration.kafka_read import read_raw, wait_for, watermarks

from vigil.config import Settings, shared_data_dir
from vigil.events.codec import EventCodec
from vigil.events.types import IntelIndicator
from vigil.hub.admin import ensure_topics
from vigil.hub.client import EventProducer
from vigil.hub.topics import TopicSpec
from vigil.sources.intel import ofac, scamlists
from vigil.sources.intel.lists import IntelListSource, ListSpec, content_version
from vigil.sources.intel.normalize import IntelNormalizer
from vigil.sources.sink import KafkaRawSink

DATA = shared_data_dir() / "intel"


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` atomically (a new file renamed over it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read(settings: Settings, topic: str, source: str = "intel") -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        settings.kafka_client_config()
        | {
            "group.id": f"g-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    tp = TopicPartition(topic, 0)
    low, high = watermarks(consumer, tp)
    out: list[tuple[bytes | None, bytes]] = []
    if high > low:
        consumer.assign([TopicPartition(topic, 0, low)])
        deadline = time.monotonic() + 30
        while consumer.position([tp])[0].offset < high:
            assert time.monotonic() < deadline
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append((msg.key(), msg.value()))
    consumer.close()
    return out


def test_lists_refresh_without_restart_and_revoke_after_restart(settings: Settings, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    raw_topic, indicators = f"test.intel.raw.{suffix}", f"test.intel.indicators.{suffix}"
    ensure_topics(
        settings,
        [
            TopicSpec(name=raw_topic, key="list", value="raw", description="t", partitions=1),
            TopicSpec(
                name=indicators,
                key="<type>:<value>@<feed>",
                value=(IntelIndicator,),
                description="t",
                partitions=1,
                cleanup="compact",
                retention=None,
            ),
        ],
    )
    eth = tmp_path / "sanctioned_addresses_ETH.txt"
    scam = tmp_path / "address.json"
    shutil.copy(DATA / "ofac" / eth.name, eth)
    shutil.copy(DATA / "scamsniffer" / "address.json", scam)
    specs = [
        ListSpec("ofac.ETH", str(eth), ofac.FORMAT, ofac.FEED),
        ListSpec("scamsniffer.address", str(scam), scamlists.ADDRESSES, scamlists.FEED),
    ]
    source_id = f"intel-lists-{suffix}"

    def new_sink() -> KafkaRawSink:
        return KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: raw_topic)

    # 1. A running source picks up a changed list at its next poll, without a restart.
    sink = new_sink()
    source = IntelListSource(specs, poll_interval=0.1, source_id=source_id)
    thread = threading.Thread(target=source.run, args=(sink,))
    thread.start()
    try:
        wait_for(lambda: len(read_raw(settings, raw_topic, "intel")) == 2, 30, "both lists")
        lines = eth.read_text().splitlines()
        added = "0x00000000000000000000000000000000DeaDBeef"
        # First address delisted, one added; replaced whole, as a download would be, so the
        # polling source never reads it half-written.
        replace_text(eth, "\n".join([*lines[1:], added]) + "\n")
        wait_for(lambda: len(read_raw(settings, raw_topic, "intel")) == 4, 30, "the refreshed list")
    finally:
        source.stop()
        thread.join(30)
        sink.close()

    # 2. Restarted (new sink, new source): the cursor has the last versions, so an unchanged
    #    list publishes nothing and a change made while it was down is diffed correctly.
    scam_doc = scam.read_text()
    first_scam = scam_doc.split('"')[1]
    replace_text(scam, scam_doc.replace(first_scam, "0x00000000000000000000000000000000000f00d1", 1))
    sink = new_sink()
    restarted = IntelListSource(specs, poll_interval=60, source_id=source_id)
    state = dict((sink.last_cursor(source_id) or {}).get("lists", {}))
    assert state["ofac.ETH"]["version"] == content_version(eth.read_bytes())
    assert restarted.poll_once(sink, state) == 1
    sink.close()

    records = read_raw(settings, raw_topic, "intel")
    assert [(r.kind, r.meta["list"]) for r in records] == [
        ("address_list", "ofac.ETH"),
        ("address_list", "scamsniffer.address"),
        ("address_list", "ofac.ETH"),
        ("address_list_removed", "ofac.ETH"),
        ("address_list", "scamsniffer.address"),
        ("address_list_removed", "scamsniffer.address"),
    ]

    # 3. Normalised into a compacted indicators topic: the latest value per key says revoked
    #    for what left the lists, and carries the version each live entry came from.
    producer = EventProducer(settings)
    for rec in records:
        for event in IntelNormalizer().normalize(rec):
            producer.produce(event, topic=indicators)
    producer.flush()
    codec = EventCodec([IntelIndicator])
    latest: dict[str, IntelIndicator] = {}
    for key, value in read(settings, indicators):
        event = codec.decode(value)
        assert isinstance(event, IntelIndicator)
        assert key == event.key().encode()
        # Keys are "<type>:<value>@<feed>"; these values are each listed by one feed only.
        latest[event.key().rpartition("@")[0]] = event
    delisted_eth = f"eth_address:{lines[0].strip().lower()}"
    delisted_scam = f"eth_address:{scam_doc.split(chr(34))[1].lower()}"
    assert latest[delisted_eth].payload.revoked is True
    assert latest[delisted_scam].payload.revoked is True
    assert latest[f"eth_address:{added.lower()}"].payload.revoked is False
    assert latest[f"eth_address:{added.lower()}"].payload.list_version == content_version(eth.read_bytes())
    live = [e for e in latest.values() if not e.payload.revoked]
    assert len(live) == len(latest) - 2
