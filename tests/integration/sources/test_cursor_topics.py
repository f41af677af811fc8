"""Each connector's cursors in a topic of its own, and the shared topic read once on upgrade.

One compacted ``vigil.cursors`` for every connector let any connector's principal rewrite
another's cursor (Kafka ACLs cannot scope a write by key): a topic per source can be granted
to that source alone."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import msgspec
from confluent_kafka import Producer

from vigil.config import Settings
from vigil.hub.admin import ensure_topics
from vigil.hub.client import producer_config, read_committed
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.sink import LEGACY_CURSOR_TOPIC, KafkaRawSink, cursor_spec, cursor_topic


def _sink(settings: Settings, source_id: str, topic: str) -> KafkaRawSink:
    return KafkaRawSink(settings, source_id=source_id, topic_for=lambda _r: topic)


def _record() -> RawRecord:
    return RawRecord(source="test", kind="item", value=b"v", received_at=datetime.now(UTC), key=b"k")


def _cursors_in(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(m.key(), m.value()) for m in read_committed(settings, topic)]


def test_each_source_writes_its_cursor_to_its_own_topic(settings: Settings, unique_topic: str) -> None:
    ensure_topics(
        settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1)]
    )
    first, second = (f"cursor-{n}-{uuid.uuid4().hex[:8]}" for n in ("a", "b"))
    a, b = _sink(settings, first, unique_topic), _sink(settings, second, unique_topic)
    try:
        a.publish([_record()], {"next": 1})
        b.publish([_record()], {"next": 7})
        assert _cursors_in(settings, cursor_topic(first)) == [(first.encode(), b'{"next":1}')]
        assert _cursors_in(settings, cursor_topic(second)) == [(second.encode(), b'{"next":7}')]
        assert (a.last_cursor(first), b.last_cursor(second)) == ({"next": 1}, {"next": 7})
    finally:
        a.close()
        b.close()


def test_a_cursor_in_the_shared_topic_is_taken_once_then_the_sources_own(
    settings: Settings, unique_topic: str
) -> None:
    ensure_topics(
        settings,
        [
            TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1),
            replace(cursor_spec("x"), name=LEGACY_CURSOR_TOPIC),
        ],
    )
    source_id = f"cursor-upgrade-{uuid.uuid4().hex[:8]}"
    # Written by the version before: one shared topic, keyed by source id.
    old = Producer(producer_config(settings))
    old.produce(LEGACY_CURSOR_TOPIC, msgspec.json.encode({"next": 41}), source_id.encode())
    old.produce(LEGACY_CURSOR_TOPIC, msgspec.json.encode({"next": 42}), source_id.encode())
    assert old.flush(30) == 0
    sink = _sink(settings, source_id, unique_topic)
    try:
        assert sink.last_cursor(source_id) == {"next": 42}  # resumed, not started over
        sink.publish([_record()], {"next": 43})
        assert _cursors_in(settings, cursor_topic(source_id)) == [(source_id.encode(), b'{"next":43}')]
        assert sink.last_cursor(source_id) == {"next": 43}
        # A deletion in the source's own topic (a reset) is the cursor: the old one stays gone.
        reset = Producer(producer_config(settings))
        reset.produce(cursor_topic(source_id), None, source_id.encode())
        assert reset.flush(30) == 0
        assert sink.last_cursor(source_id) is None
    finally:
        sink.close()
