"""Each connector's cursors in a topic of its own, and the shared topic read once on upgrade
(only while the source's own topic has never been written).

One compacted ``vigil.cursors`` for every connector let any connector's principal rewrite
another's cursor (Kafka ACLs cannot scope a write by key): a topic per source can be granted
to that source alone."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import msgspec
from confluent_kafka import Producer

from vigil.config import Settings
from vigil.hub.admin import describe_live, ensure_topics
from vigil.hub.client import make_admin, producer_config, read_committed
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
        # The one taken (recorded at once), then the next.
        key = source_id.encode()
        assert _cursors_in(settings, cursor_topic(source_id)) == [
            (key, b'{"next":42}'),
            (key, b'{"next":43}'),
        ]
        assert sink.last_cursor(source_id) == {"next": 43}
        # A deletion in the source's own topic (a reset) is the cursor: the old one stays gone.
        reset = Producer(producer_config(settings))
        reset.produce(cursor_topic(source_id), None, source_id.encode())
        assert reset.flush(30) == 0
        assert sink.last_cursor(source_id) is None
    finally:
        sink.close()


def _legacy_holds(settings: Settings, source_id: str, cursor: dict[str, int]) -> None:
    """``vigil.cursors`` (as the version before wrote it) holding ``cursor`` for ``source_id``."""
    ensure_topics(settings, [replace(cursor_spec("x"), name=LEGACY_CURSOR_TOPIC)])
    old = Producer(producer_config(settings))
    old.produce(LEGACY_CURSOR_TOPIC, msgspec.json.encode(cursor), source_id.encode())
    assert old.flush(30) == 0


def _delete_topic(settings: Settings, topic: str) -> None:
    admin = make_admin(settings)
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:  # deletion is asynchronous in Kafka
        assert time.monotonic() < deadline, f"{topic} still listed 30s after its deletion"
        time.sleep(0.1)


def test_the_cursor_taken_from_the_shared_topic_is_recorded_in_the_sources_own_at_once(
    settings: Settings, unique_topic: str
) -> None:
    # Recorded only by the next publish, a connector stopped before it found its own topic
    # empty again, and took the cursor of before the upgrade however old it had become.
    source_id = f"cursor-record-{uuid.uuid4().hex[:8]}"
    _legacy_holds(settings, source_id, {"next": 42})
    sink = _sink(settings, source_id, unique_topic)
    try:
        assert sink.last_cursor(source_id) == {"next": 42}
        assert _cursors_in(settings, cursor_topic(source_id)) == [(source_id.encode(), b'{"next":42}')]
    finally:
        sink.close()


def test_a_transaction_that_aborted_in_the_own_topic_leaves_the_shared_one_to_read(
    settings: Settings, unique_topic: str
) -> None:
    # Judged by offsets ("never written"), an aborted first write (or a process that died in it)
    # made the own topic look written: the cursor of before the upgrade was lost, and the
    # connector started over from its default.  What counts is a committed record.
    source_id = f"cursor-abort-{uuid.uuid4().hex[:8]}"
    _legacy_holds(settings, source_id, {"next": 42})
    ensure_topics(settings, [cursor_spec(source_id)])
    aborted = Producer(producer_config(settings, **{"transactional.id": f"t-{source_id}"}))
    aborted.init_transactions(30)
    aborted.begin_transaction()
    aborted.produce(cursor_topic(source_id), b'{"next":1}', source_id.encode())
    aborted.flush(30)
    aborted.abort_transaction(30)
    sink = _sink(settings, source_id, unique_topic)
    try:
        assert sink.last_cursor(source_id) == {"next": 42}
    finally:
        sink.close()


def test_a_cursor_topic_keeps_its_deletions_for_good(settings: Settings) -> None:
    # A reset is a deletion: dropped by compaction after a day (the broker's default), the next
    # start found nothing of its own and took the cursor of before the upgrade again.
    source_id = f"cursor-keep-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [cursor_spec(source_id)])
    live = describe_live(make_admin(settings), [cursor_topic(source_id)])[cursor_topic(source_id)]
    assert int(live.config["delete.retention.ms"]) >= 100 * 365 * 86_400_000
    assert live.config["cleanup.policy"] == "compact"


def test_with_nothing_in_the_shared_topic_a_deletion_is_recorded_and_a_reset_stays_a_reset(
    settings: Settings, unique_topic: str
) -> None:
    source_id = f"cursor-none-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [replace(cursor_spec("x"), name=LEGACY_CURSOR_TOPIC)])
    sink = _sink(settings, source_id, unique_topic)
    try:
        assert sink.last_cursor(source_id) is None
        assert _cursors_in(settings, cursor_topic(source_id)) == [(source_id.encode(), None)]
        # The cursor of before written to the shared topic later (an old connector still running)
        # is not taken: the source's own topic was written.
        _legacy_holds(settings, source_id, {"next": 42})
        assert sink.last_cursor(source_id) is None
    finally:
        sink.close()


def test_a_cursor_topic_deleted_and_made_again_is_a_first_start(
    settings: Settings, unique_topic: str
) -> None:
    # What the README says of a reset by deleting the topic: with the shared topic still holding
    # the source's cursor of before the upgrade, that one is taken again (nothing tells the new
    # topic from the first start after the upgrade); a deletion produced to the own topic resets.
    source_id = f"cursor-delete-{uuid.uuid4().hex[:8]}"
    _legacy_holds(settings, source_id, {"next": 42})
    sink = _sink(settings, source_id, unique_topic)
    try:
        assert sink.last_cursor(source_id) == {"next": 42}
        sink.publish([], {"next": 500})
        reset = Producer(producer_config(settings))
        reset.produce(cursor_topic(source_id), None, source_id.encode())
        assert reset.flush(30) == 0
        assert sink.last_cursor(source_id) is None
    finally:
        sink.close()
    _delete_topic(settings, cursor_topic(source_id))
    again = _sink(settings, source_id, unique_topic)
    try:
        assert again.last_cursor(source_id) == {"next": 42}
    finally:
        again.close()


def test_source_ids_that_are_no_topic_names_keep_cursors(settings: Settings, unique_topic: str) -> None:
    # The id named the topic as it was: a space, a colon or 236 characters, and the connector
    # failed at start with Kafka's refusal of the name.
    ensure_topics(
        settings, [TopicSpec(name=unique_topic, key="k", value="raw", description="t", partitions=1)]
    )
    tag = uuid.uuid4().hex[:8]
    for source_id in (f"eth node/{tag}", f"cursor-{tag}:x", f"cursor-{tag}" + "a" * 240, f"caf\u00e9-{tag}"):
        sink = _sink(settings, source_id, unique_topic)
        try:
            assert sink.last_cursor(source_id) is None
            sink.publish([_record()], {"next": 3})
            assert sink.last_cursor(source_id) == {"next": 3}
            # (After the deletion recorded when vigil.cursors exists: nothing taken from there.)
            assert _cursors_in(settings, cursor_topic(source_id))[-1] == (source_id.encode(), b'{"next":3}')
        finally:
            sink.close()
