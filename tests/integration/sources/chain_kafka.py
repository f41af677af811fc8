"""Helpers for the chain connectors' integration tests: a raw topic per test, read back.

Topics are unique per test (other suites share the broker); they are created through
the project's own admin code and read back under ``read_committed``, as the normaliser
application reads them, so aborted transactions of a killed connector are invisible.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from vigil.config import Settings
from vigil.hub.admin import ensure_topics
from vigil.hub.client import make_consumer
from vigil.hub.raw import RawRecord
from vigil.hub.topics import TopicSpec
from vigil.sources.sink import KafkaRawSink


def make_raw_topic(settings: Settings, name: str) -> str:
    topic = f"test.raw.{name}.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(name=topic, key="height", value="raw", description="test raw topic", partitions=3)
    ensure_topics(settings, [spec])
    return topic


def read_raw(settings: Settings, topic: str, source: str, timeout_s: float = 20.0) -> list[RawRecord]:
    """Every committed record of ``topic``, partition by partition, up to the end now."""
    consumer = make_consumer(settings, group_id=f"test.reader.{uuid.uuid4().hex[:8]}")
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions)
        out: list[RawRecord] = []
        for p in partitions:
            tp = TopicPartition(topic, p)
            low, high = _watermarks(consumer, tp)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + timeout_s
            # Transaction markers take offsets and are never delivered: judge progress by position.
            while consumer.position([tp])[0].offset < high:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}[{p}] did not reach offset {high} in {timeout_s}s")
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                out.append(RawRecord.from_headers(source, msg.value(), msg.key(), msg.headers()))
        return out
    finally:
        consumer.close()


def _watermarks(consumer: Any, tp: TopicPartition) -> tuple[int, int]:
    # A topic created a moment ago may not have its partition leaders elected yet.
    deadline = time.monotonic() + 10
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stored_cursor(settings: Settings, source_id: str, expected_next: int, field: str) -> dict[str, Any]:
    """The connector's stored cursor once it names ``expected_next``.

    Polled: the transaction markers that make a just-committed cursor visible to a
    ``read_committed`` reader are written an instant after the commit returns.
    """
    found: dict[str, Any] = {}

    def arrived() -> bool:
        found.clear()
        found.update(KafkaRawSink(settings, source_id=source_id).last_cursor(source_id) or {})
        return found.get(field) == expected_next

    wait_for(arrived, 20, f"the cursor of {source_id} to reach {field}={expected_next} (last: {found})")
    return dict(found)


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    """Poll ``predicate()`` until true or fail saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
